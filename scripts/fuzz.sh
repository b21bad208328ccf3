#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan in build-fuzz/ and runs
# each for a bounded time, starting from the generated seed corpora plus whatever earlier runs
# found (build-fuzz/corpus/). Fails when a target crashes, leaks, hangs or exceeds its memory
# limit; the input that did it is kept in build-fuzz/crashes/ (rerun: build-fuzz/tests/fuzz/
# fuzz_<name> <file>).
#
# `scripts/fuzz.sh build` only builds, and builds everything there: build-fuzz/ is also the
# ASan+UBSan build of the library, the CLI and the test suite, which scripts/test.sh runs
# (ctest --test-dir build-fuzz). One build at -O1 -g1 serves both.
#
# serve and fetch fuzz the whole server loop and client over loopback, from captured traffic
# (tests/fuzz/corpus/, written by build-fuzz/tests/fuzz/kvcodec_fuzz_capture).
#
# Environment: KVCODEC_FUZZ_SECONDS (per target, default 12: 16 targets stay under ~4 minutes),
#              KVCODEC_FUZZ_TARGETS (space-separated names, default all), KVCODEC_JOBS (build jobs).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${KVCODEC_FUZZ_SECONDS:-12}"
jobs="${KVCODEC_JOBS:-$(nproc)}"

launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
# -O1 with line tables: half the compile time of -O2 -g; stack traces still name lines.
cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang "${launcher[@]}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DKVCODEC_FUZZ=ON -DKVCODEC_BUILD_TESTS=ON -DKVCODEC_BUILD_TOOLS=ON -DKVCODEC_BUILD_BENCH=OFF \
  -DKVCODEC_BUILD_EXAMPLES=OFF >/dev/null
if [[ "${1:-}" == build ]]; then
  cmake --build build-fuzz -j "$jobs"
  exit 0
fi
cmake --build build-fuzz -j "$jobs" --target kvcodec_fuzz

bin=build-fuzz/tests/fuzz
seeds="$bin/seeds"
mkdir -p build-fuzz/crashes
# Extra seeds where they exist: the golden frames, the committed link traces, and the shared
# models and tokenizers (not in the repository).
data="${KVCODEC_DATA_DIR:-../shared/data}"
extra_seeds() {
  case "$1" in
    frame) echo tests/golden ;;
    profile) echo tests/golden/v4 ;;
    serve | fetch) echo "tests/fuzz/corpus/$1" ;;
    trace) echo docs/results/traces ;;
    tokenizer) [[ -d "$data/models" ]] && mkdir -p build-fuzz/seeds-tok && cp -f "$data"/models/tok*.bin build-fuzz/seeds-tok/ 2>/dev/null && echo build-fuzz/seeds-tok ;;
    model) [[ -f "$data/models/stories260K.bin" ]] && mkdir -p build-fuzz/seeds-model && cp -f "$data/models/stories260K.bin" build-fuzz/seeds-model/ && echo build-fuzz/seeds-model ;;
  esac
  return 0
}
# target:seed corpus
all="frame_info:frame verify_frame:frame decode:frame decode_chunk:frame analyze_frame:frame roundtrip:none
     safetensors:safetensors npy:npy profile:profile tokenizer:tokenizer model:model wire:wire manifest:manifest link_trace:trace
     serve:serve fetch:fetch"
for spec in $all; do
  name="${spec%%:*}"
  kind="${spec##*:}"
  if [[ -n "${KVCODEC_FUZZ_TARGETS:-}" && " $KVCODEC_FUZZ_TARGETS " != *" $name "* ]]; then continue; fi
  if [[ ! -x "$bin/fuzz_$name" ]]; then
    echo "fuzz: fuzz_$name not built (its library is not): skipped"
    continue
  fi
  corpus="build-fuzz/corpus/$name"
  log="build-fuzz/fuzz_$name.log"
  mkdir -p "$corpus"
  dirs=("$corpus")
  [[ -d "$seeds/$kind" ]] && dirs+=("$seeds/$kind")
  extra="$(extra_seeds "$kind")"
  [[ -n "$extra" ]] && dirs+=("$extra")
  # fuzz_serve's server threads outlive each input, so libFuzzer's per-input leak check races
  # them (one unreproducible report in the offline run); leaks still show in the ASan ctest run.
  leaks=()
  [[ "$name" == serve ]] && leaks=(-detect_leaks=0)
  echo "fuzz: fuzz_$name for ${seconds}s"
  # The first directory collects new inputs; the seeds are read only.
  if ! "$bin/fuzz_$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 "${leaks[@]}" \
      -print_final_stats=1 -artifact_prefix="build-fuzz/crashes/$name-" \
      "${dirs[@]}" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: error: fuzz_$name failed (log: $log, input: build-fuzz/crashes/$name-*)" >&2
    exit 1
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$log" | tr '\n' ' '
  grep -E "^#[0-9]+.*(DONE|INITED)" "$log" | tail -n 1 | grep -oE "cov: [0-9]+ ft: [0-9]+ corp: [0-9]+" || true
done
echo "fuzz: all targets ran ${seconds}s without a failure"
