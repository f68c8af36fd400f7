#!/usr/bin/env bash
# Transport cost, one port against a socket per participant (docs/server.md, "One UDP port"):
# N synthetic audio participants (mcu-loadgen run) in one room of a local server for S seconds;
# prints the server's CPU-seconds per second, its threads and its UDP sockets.
#   scripts/measure-transport.sh 40000 40 30          # one shared port (the default)
#   scripts/measure-transport.sh 41000-41200 40 30    # a socket per participant
# Needs a debug build (cargo build --workspace) and port 18080 free.
set -euo pipefail
cd "$(dirname "$0")/.."
PORTS="${1:-40000}"; N="${2:-40}"; S="${3:-30}"
KEY=measure-key-0123456789abcdef
D=$(mktemp -d)
MCU_LISTEN=127.0.0.1:18080 MCU_RTC_BIND=127.0.0.1 MCU_API_KEY=$KEY \
  MCU_TOKEN_SECRET=measure-secret-0123456789abcdef0123456789 DATABASE_URL="sqlite://$D/db" \
  MCU_RECORDINGS_DIR="$D/rec" MCU_LOG=warn MCU_UDP_PORTS="$PORTS" target/debug/mcu-server \
  >"$D/server.log" 2>&1 &
SP=$!
trap 'kill $SP 2>/dev/null || true; rm -rf "$D"' EXIT
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.2; done
curl -sf -X POST -H "authorization: Bearer $KEY" -H "content-type: application/json" \
  -d '{"name":"m","max_participants":1000}' http://127.0.0.1:18080/api/v1/rooms >/dev/null
target/debug/mcu-loadgen run --url http://127.0.0.1:18080 --api-key $KEY --room m \
  --participants "$N" --video 0 --talkers 3 --seconds $((S + 15)) >"$D/loadgen.json" 2>&1 &
LP=$!
sleep 12   # joins done
cpu() { awk '{print $14 + $15}' "/proc/$SP/stat"; }
t0=$(cpu); sleep "$S"; t1=$(cpu)
threads=$(awk '/^Threads/ {print $2}' "/proc/$SP/status")
udp=0
for inode in $(ls -l "/proc/$SP/fd" | grep -o 'socket:\[[0-9]*\]' | grep -o '[0-9]*' | sort -u); do
  if grep -q " $inode " /proc/net/udp /proc/net/udp6; then udp=$((udp + 1)); fi
done
echo "udp_ports=$PORTS participants=$N server_cpu_s_per_s=$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" -v s="$S" 'BEGIN { printf "%.3f", (b - a) / hz / s }') threads=$threads udp_sockets=$udp"
wait $LP || true
