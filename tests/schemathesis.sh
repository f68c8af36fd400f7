#!/usr/bin/env bash
# Fuzzes the REST API against its own OpenAPI document with Schemathesis.
#
# Starts the built `target/debug/mcu-server` on a free 127.0.0.1 port with a throw-away SQLite
# database, waits for /healthz, runs schemathesis against /api/v1/openapi.json with the admin key,
# stops the server and exits non-zero if any check failed.
#
# Usage: tests/schemathesis.sh            (build first: cargo build -p server)
# Env:   MCU_SERVER_BIN       server binary        (default: target/debug/mcu-server)
#        SCHEMATHESIS_VENV    virtualenv to use/make (default: target/schemathesis-venv)
#        SCHEMATHESIS_EXAMPLES  max examples per operation (default: 300)
#        SCHEMATHESIS_SEED    fixed seed for a reproducible run
#        SCHEMATHESIS_DATABASE_URL  run against this (empty, throw-away) database instead of a
#                             temporary SQLite file, e.g. a fresh PostgreSQL database
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${MCU_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/mcu-server}"
VENV="${SCHEMATHESIS_VENV:-$ROOT/target/schemathesis-venv}"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-300}"

if [[ ! -x "$BIN" ]]; then
    echo "schemathesis.sh: $BIN not found; run: cargo build -p server" >&2
    exit 2
fi

if [[ ! -x "$VENV/bin/schemathesis" ]]; then
    echo "schemathesis.sh: installing schemathesis into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "schemathesis==4.32.5"
fi

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
BASE="http://127.0.0.1:$PORT"
API_KEY="schemathesis-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"

# The fuzzer sends thousands of requests without or with a wrong key from one address: exactly
# what the failed-auth limit (429 after 20) stops; it is tested in server/tests/api.rs.
MCU_LISTEN="127.0.0.1:$PORT" \
MCU_API_KEY="$API_KEY" \
MCU_AUTH_FAILURES_BURST=0 \
MCU_TOKEN_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')" \
DATABASE_URL="${SCHEMATHESIS_DATABASE_URL:-sqlite://$WORK/mcu.db}" \
MCU_RECORDINGS_DIR="$WORK/recordings" \
MCU_WEB_DIR="$ROOT/web" \
MCU_LOG="${MCU_LOG:-warn}" \
    "$BIN" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 100); do
    if curl -fsS "$BASE/healthz" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "schemathesis.sh: the server exited during start-up:" >&2
        cat "$WORK/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
curl -fsS "$BASE/healthz" >/dev/null || {
    echo "schemathesis.sh: server not healthy at $BASE" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

SEED_ARGS=()
if [[ -n "${SCHEMATHESIS_SEED:-}" ]]; then
    SEED_ARGS=(--seed "$SCHEMATHESIS_SEED")
fi

status=0
# Hypothesis keeps state in the working directory: keep it out of the repository.
cd "$WORK"
# One worker: generation in threads trips a CPython 3.11 ast.parse race inside Hypothesis
# ("AST constructor recursion depth mismatch"), a crash of the tool, not of the server.
"$VENV/bin/schemathesis" run "$BASE/api/v1/openapi.json" \
    --url "$BASE" \
    --header "Authorization: Bearer $API_KEY" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --max-examples "$EXAMPLES" \
    --phases examples,coverage,fuzzing,stateful \
    --workers 1 \
    --request-timeout 10 \
    --no-color \
    --generation-database none \
    --report junit --report-dir "$WORK/report" \
    "${SEED_ARGS[@]}" || status=$?

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "schemathesis.sh: the server died during the run:" >&2
    cat "$WORK/server.log" >&2
    status=1
elif grep -q "panicked" "$WORK/server.log"; then
    echo "schemathesis.sh: the server panicked:" >&2
    grep -A5 "panicked" "$WORK/server.log" >&2
    status=1
fi

if [[ $status -ne 0 ]]; then
    echo "schemathesis.sh: FAILED (exit $status)" >&2
else
    echo "schemathesis.sh: all checks passed"
fi
exit "$status"
