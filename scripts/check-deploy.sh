#!/usr/bin/env bash
# Checks the deployment files without a Docker engine (none runs on the CI machines):
#  1. docker-compose.yml and docker-compose.cluster.yml (two nodes, MinIO) are valid for Debian's
#     docker-compose 1.29 (`config -q`) with the values of .env.example, and refuse to render
#     without the required secrets;
#  2. the environment compose gives each `mcu*` service is one the server accepts
#     (`mcu-server --print-config` exits 0 with it);
#  3. the Dockerfile's runtime stage installs a package for every shared library the built
#     binary needs (besides libc6 and libgcc-s1, which debian:bookworm-slim has).
# Usage: scripts/check-deploy.sh   (after cargo build -p server; needs docker-compose, dpkg)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${MCU_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/mcu-server}"
fail() { echo "check-deploy: FAILED: $*" >&2; exit 1; }

command -v docker-compose >/dev/null || fail "docker-compose is not installed (scripts/setup.sh)"
[[ -x "$BIN" ]] || fail "$BIN not found; run: cargo build -p server"

# A clean environment holding only .env.example's values (no .env, no developer variables).
example_env() {
    grep -E '^[A-Z_0-9]+=' .env.example
}
compose() {
    local file="$1"; shift
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" $(example_env | tr '\n' ' ') \
        docker-compose --project-directory "$ROOT" -f "$ROOT/$file" "$@"
}

for file in docker-compose.yml docker-compose.cluster.yml; do
    # 1. Syntax and interpolation.
    compose "$file" config -q || fail "docker-compose config -q rejects $file"
    if env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
        docker-compose -f "$ROOT/$file" config -q 2>/dev/null; then
        fail "$file renders without MCU_API_KEY and the other required secrets"
    fi
    echo "check-deploy: docker-compose config -q $file: ok"

    # 2. The server accepts each node service's environment.
    services="$(compose "$file" config | python3 -c '
import sys, yaml
print(" ".join(s for s in yaml.safe_load(sys.stdin)["services"] if s.startswith("mcu")))
')"
    [[ -n "$services" ]] || fail "no mcu service in $file"
    for service in $services; do
        mapfile -t MCU_ENV < <(compose "$file" config | SERVICE="$service" python3 -c '
import os, sys, yaml
env = yaml.safe_load(sys.stdin)["services"][os.environ["SERVICE"]]["environment"]
for k, v in env.items():
    print(k + "=" + ("" if v is None else str(v)))
')
        [[ ${#MCU_ENV[@]} -gt 5 ]] || fail "no environment found for $service in $file"
        if ! out="$(env -i PATH="$PATH" "${MCU_ENV[@]}" "$BIN" --print-config 2>&1)"; then
            echo "$out" >&2
            fail "mcu-server refuses the environment $file gives $service"
        fi
        grep -q 'secret = "\*\*\*\*\*\*\*\*"' <<<"$out" || fail "TURN secret not configured/masked in $service: $out"
        echo "check-deploy: $file $service: the environment passes mcu-server's validation: ok"
    done
done

# 3. Runtime libraries: every NEEDED library of the binary comes from a package the runtime stage
# installs (or from the base image).
runtime_pkgs="$(sed -n '/^FROM debian:/,$p' Dockerfile | tr ' \\' '\n\n' | grep -E '^lib[a-z0-9.+-]+$|^ca-certificates$' || true)"
[[ -n "$runtime_pkgs" ]] || fail "no runtime packages found in Dockerfile"
base_pkgs="libc6 libgcc-s1"
missing=()
while read -r lib path; do
    [[ -n "$path" && -e "$path" ]] || fail "ldd cannot resolve $lib"
    real="$(readlink -f "$path")"
    pkg="$(dpkg -S "$path" 2>/dev/null || dpkg -S "$real" 2>/dev/null || true)"
    pkg="${pkg%%:*}"
    [[ -n "$pkg" ]] || fail "no Debian package owns $path"
    if ! grep -qx "$pkg" <<<"$runtime_pkgs" && [[ " $base_pkgs " != *" $pkg "* ]]; then
        missing+=("$lib ($pkg)")
    fi
done < <(
    for lib in $(readelf -d "$BIN" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p'); do
        echo "$lib $(ldd "$BIN" | awk -v l="$lib" '$1 == l && $3 ~ /^\// {print $3} $1 ~ "/"l"$" {print $1}' | head -n1)"
    done
)
[[ ${#missing[@]} -eq 0 ]] || fail "the runtime image lacks packages for: ${missing[*]}"
echo "check-deploy: runtime packages cover the binary's libraries ($(echo $runtime_pkgs | tr '\n' ' ')): ok"
echo "check-deploy: all checks passed"
