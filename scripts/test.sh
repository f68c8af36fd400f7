#!/usr/bin/env bash
# Runs every test: the deployment checks, Rust unit and integration tests (the API on SQLite and
# on PostgreSQL, TURN credentials against coturn, SIGTERM of the real binary), the OpenAPI
# fuzzing with schemathesis, and the browser end-to-end tests in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

# PostgreSQL for the API tests: use the one on 127.0.0.1:5432 if it answers, else start it.
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  else
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  fi
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "scripts/test.sh: PostgreSQL did not come up on 127.0.0.1:5432; the API and store tests need it" >&2
  exit 1
fi
export MCU_TEST_PG_URL="${MCU_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
# Every test that needs a service (PostgreSQL, coturn, ffmpeg, Janus, a tmpfs) fails when it is
# missing instead of skipping with a notice, as in CI. A bare `cargo test` still skips them.
export MCU_TEST_REQUIRE_SERVICES=1
for tool in turnserver turnutils_uclient ffmpeg ffprobe janus chromium; do
  command -v "$tool" >/dev/null || { echo "scripts/test.sh: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

export CARGO_TERM_COLOR=never
# A fresh clone builds once: incremental compilation would only write state nobody reads.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
cargo build --workspace --all-targets
# Deployment files: docker-compose.yml (docker-compose 1.29 `config -q`), its environment against
# the server's validation, the Dockerfile's runtime libraries against the binary.
bash scripts/check-deploy.sh
cargo test --workspace --no-fail-fast

bash tests/schemathesis.sh
# The benchmark's smoke (a few synthetic participants for seconds) so that it cannot rot; the
# figures are not asserted (see docs/benchmarks.md for a real run).
"${CARGO_TARGET_DIR:-target}/debug/mcu-loadgen" bench --smoke \
  --server "${CARGO_TARGET_DIR:-target}/debug/mcu-server" --out "$(mktemp)" > /dev/null
(cd tests/e2e && node --test --test-concurrency=1 --test-reporter=spec)
