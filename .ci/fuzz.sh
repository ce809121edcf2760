#!/usr/bin/env bash
# Fuzz smoke test (README "Fuzzing"): builds every cargo-fuzz target in fuzz/ in one
# `cargo +nightly fuzz build`, then runs each from its committed seeds (fuzz/seeds/<target>/)
# for a bounded number of cases. Any crash fails CI and leaves the input in
# fuzz/artifacts/<target>/.
#   APIARY_FUZZ_RUNS  cases per target (default 500000)
#   APIARY_FUZZ_SECS  wall-clock cap per target in seconds (default 30)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS="${APIARY_FUZZ_RUNS:-500000}"
SECS="${APIARY_FUZZ_SECS:-30}"

# cargo-fuzz needs a nightly toolchain (sanitizer-coverage flags) and the cargo-fuzz binary.
if command -v rustup >/dev/null 2>&1; then
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

cd "$ROOT/fuzz"
# No sanitizer: the workspace denies unsafe code, so ASan would find nothing the Rust checks
# (bounds, overflow: debug assertions are on) do not, at twice the build and run time.
FUZZ=(cargo +nightly fuzz)
time "${FUZZ[@]}" build -s none
for t in $("${FUZZ[@]}" list); do
  dirs=("corpus/$t")
  mkdir -p "corpus/$t"
  [ -d "seeds/$t" ] && dirs+=("seeds/$t")
  echo "== fuzz $t: up to $RUNS cases or ${SECS}s"
  "${FUZZ[@]}" run -s none "$t" "${dirs[@]}" -- \
    -runs="$RUNS" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
