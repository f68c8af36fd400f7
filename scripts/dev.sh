#!/usr/bin/env bash
# Runs the server for development: SQLite under ./data, a generated API key printed on start,
# the web page at http://localhost:8080 (MCU_LISTEN overrides the address).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --server
exec cargo run --release -p server --bin mcu-server -- --dev "$@"
