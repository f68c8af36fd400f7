#!/usr/bin/env bash
# Installs everything the server and its tests need on a fresh Debian 12 / Ubuntu machine.
# Idempotent: safe to run again; skips what is already there.
# `--server` installs only what building and running the server needs (scripts/dev.sh uses it):
# no browser, no Janus, no coturn, no test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

SERVER_PKGS=(pkg-config cmake clang libclang-dev libvpx-dev libavcodec-dev libavformat-dev
      libavutil-dev libswscale-dev libswresample-dev)
if [ "${1:-}" = "--server" ]; then
  PKGS=("${SERVER_PKGS[@]}")
else
  PKGS=("${SERVER_PKGS[@]}" ffmpeg mkvtoolnix chromium python3-venv nodejs npm curl
      janus coturn docker-compose iproute2 iptables conntrack)
fi
# iproute2, iptables, conntrack: the shaped-link and one-port tests build network namespaces
# (the one-port test moves a client's NAT mapping mid-call with `conntrack -F`).
# coturn: the TURN credential test runs turnserver/turnutils_uclient on loopback (its service
# stays disabled); docker-compose: `config -q` validates docker-compose.yml (no engine needed).
# janus: the benchmark's AudioBridge comparison starts its own `janus` with a generated
# configuration (loadgen/src/janus.rs); the package's service is neither started nor used.
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs/npm may come from elsewhere (nodesource, nvm): only install when the commands are absent.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # Packages must not start their services on install (janus's would bind 8088/8188/7088):
  # invoke-rc.d and deb-systemd-invoke obey a policy-rc.d that answers 101 ("forbidden").
  $SUDO apt-get update -qq
  policy_added=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  status=0
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" || status=$?
  [ -z "$policy_added" ] || $SUDO rm -f /usr/sbin/policy-rc.d
  [ "$status" -eq 0 ] || exit "$status"
  # Nor start at the next boot, where systemd runs.
  if printf '%s\n' "${missing[@]}" | grep -qx janus && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now janus.service >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo >/dev/null; then
  echo "setup: Rust is missing; install it with rustup (https://rustup.rs), Rust >= 1.89" >&2
  exit 1
fi

[ "${1:-}" = "--server" ] && exit 0

# A real S3 implementation for the object storage tests (server/tests/object_storage.rs, the
# cluster's network-namespace test): s3s-fs serves a directory on loopback. 0.14.1 builds with
# Rust 1.92 (later versions need newer); about two minutes the first time.
if ! command -v s3s-fs >/dev/null; then
  cargo install s3s-fs@0.14.1 --features binary --locked
fi

# Browser test driver (uses Debian's Chromium; never downloads a browser).
if [ ! -d tests/e2e/node_modules/playwright-core ]; then
  (cd tests/e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
