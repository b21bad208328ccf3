#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan in build-fuzz/ and runs
# each for a bounded time, starting from the generated seed corpora plus whatever earlier runs
# found (build-fuzz/corpus/). Fails when a target crashes, leaks, hangs or exceeds its memory
# limit; the input that did it is kept in build-fuzz/crashes/ (rerun: build-fuzz/tests/fuzz/
# fuzz_<name> <file>).
#
# Environment: KVCODEC_FUZZ_SECONDS (per target, default 20), KVCODEC_JOBS (build jobs).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${KVCODEC_FUZZ_SECONDS:-20}"
jobs="${KVCODEC_JOBS:-$(nproc)}"

cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKVCODEC_FUZZ=ON -DKVCODEC_BUILD_TOOLS=OFF -DKVCODEC_BUILD_BENCH=OFF -DKVCODEC_BUILD_EXAMPLES=OFF
cmake --build build-fuzz -j "$jobs" --target kvcodec_fuzz

bin=build-fuzz/tests/fuzz
seeds="$bin/seeds"
mkdir -p build-fuzz/crashes
# target:seed corpus
for spec in frame_info:frame verify_frame:frame decode:frame decode_chunk:frame \
            safetensors:safetensors npy:npy; do
  name="${spec%%:*}"
  corpus="build-fuzz/corpus/$name"
  log="build-fuzz/fuzz_$name.log"
  mkdir -p "$corpus"
  echo "fuzz: fuzz_$name for ${seconds}s"
  # The first directory collects new inputs; the seeds are read only.
  if ! "$bin/fuzz_$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="build-fuzz/crashes/$name-" \
      "$corpus" "$seeds/${spec##*:}" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: error: fuzz_$name failed (log: $log, input: build-fuzz/crashes/$name-*)" >&2
    exit 1
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$log" | tr '\n' ' '
  echo
done
echo "fuzz: all targets ran ${seconds}s without a failure"
