#!/usr/bin/env bash
# Runs every `cargo fuzz` target (fuzz/fuzz_targets/) for SECONDS each (default 60).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# New coverage goes to a scratch corpus (target/fuzz-corpus/<target>), seeded from the committed
# fuzz/corpus/<target>; a crash stops with its input in fuzz/artifacts/<target>/. Commit such an
# input under fuzz/regressions/<target>/ with the fix: `cargo test -p server --test
# fuzz_regressions` replays it from then on (and CI with it).
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); stable Rust is enough without a
# sanitizer (-s none): the targets are safe Rust over libopus/libavformat, a crash is a panic.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(rtp_depacketize jitter_buffer signaling_json offer_sdp webm_repair)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd fuzz
cargo fuzz build -s none
for t in "${targets[@]}"; do
  scratch="../target/fuzz-corpus/$t"
  mkdir -p "$scratch"
  echo "fuzz: $t for ${secs}s"
  rm -rf "artifacts/$t" # what an earlier run left is not this run's finding
  status=0
  cargo fuzz run -s none "$t" "$scratch" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    -print_final_stats=1 > "../target/fuzz-$t.log" 2>&1 || status=$?
  grep -E "^(Done|.*panicked|SUMMARY)" "../target/fuzz-$t.log" || true
  if [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
    echo "fuzz: $t crashed; inputs in fuzz/artifacts/$t/, log in target/fuzz-$t.log" >&2
    exit 1
  fi
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $t failed to run (exit $status); log in target/fuzz-$t.log" >&2
    exit "$status"
  fi
done
