#!/usr/bin/env bash
# Device check of the CUDA backend, for the lent H200 (the `device` tool) or any CUDA machine:
# configures a Release CUDA build, runs the GPU tests (frames byte-identical to the CPU encoder's,
# outputs bit-exact against the CPU decoder) and the GPU benchmarks on a 1 GiB Llama-3-8B-shaped
# cache, and writes everything under $OUT:
#   env.txt            nvidia-smi, nvcc and compiler versions, date, git revision
#   configure.log build.log
#   cuda_test.log  cuda_test.json      GoogleTest output of the decoder tests (GPU tests must
#                                      not be skipped here)
#   cuda_encode_test.log/.json         the same for the encoder tests
#   codec_test.log                     the CPU codec tests of the same build
#   example_cuda_paged.log             the GPU workflow example (encode from paged blocks, decode
#                                      chunk by chunk into paged blocks, compare with the CPU)
#   <name>_test.log                    the other core tests: frames, golden frames, XXH64, JSON, io
#   gpu_bench.log  gpu_bench.json      Google Benchmark: encode, decode, D2D copy, H2D raw/frame GB/s
#   memcheck_*.log racecheck_*.log     compute-sanitizer on small GPU tests: out-of-bounds and
#   synccheck_encode.log               misaligned device accesses, shared-memory races, barriers
#                                      not reached by a whole block
#   ncu_decode.txt ncu_encode.txt      Nsight Compute summaries of the decode kernel and of the
#                                      encoder's kernels (if ncu exists)
#   summary.txt                        one line per step: ok / FAILED (exit code)
# Usage: OUT=/some/dir scripts/gpu-check.sh     (from the repository root; ~6-10 minutes)
#   PARTS="build test bench" (then PARTS="sanitize ncu" in a second call on the same machine,
#   which reuses the build) splits the run under a per-command time limit; default: all five.
# Needs: cmake >= 3.25, ninja, a C++20 compiler, CUDA >= 12 (nvcc), GoogleTest, Google Benchmark,
# Eigen. Nothing else: the CLI and the streaming library (hiredis, zfp, zstd, nlohmann-json) are
# not configured, since no step here uses them.
set -uo pipefail

OUT=${OUT:-$PWD/gpu-check-out}
BUILD=${BUILD:-build-gpu-check}
JOBS=${JOBS:-$(nproc)}
PARTS=${PARTS:-build test bench sanitize ncu}
want() { [[ " $PARTS " == *" $1 "* ]]; }
TOKENS=${KVCODEC_BENCH_TOKENS:-8192}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
mkdir -p "$OUT"
: > "$OUT/summary.txt"

# step NAME TIMEOUT_S LOG COMMAND...: runs a step with a deadline, records its outcome, goes on.
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then
    echo "$name: ok ($((SECONDS - t0)) s)" | tee -a "$OUT/summary.txt"
  else
    echo "$name: FAILED (exit $rc after $((SECONDS - t0)) s, see $log)" | tee -a "$OUT/summary.txt"
  fi
  return $rc
}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || echo "(not a git checkout)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  "$NVCC" --version 2>&1 | tail -2
  c++ --version 2>&1 | head -1
  cmake --version | head -1
  echo "cores: $(nproc)"
} > "$OUT/env.txt"

CORE_TESTS="format_test golden_test xxh64_test checksum_test io_test"
if want build; then
step configure 120 configure.log \
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DKVCODEC_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER="$NVCC" \
    -DKVCODEC_BUILD_TOOLS=OFF -DKVCODEC_BUILD_STREAM=OFF -DKVCODEC_BUILD_EXAMPLES=ON || exit 1
step build 300 build.log ninja -C "$BUILD" -j "$JOBS" cuda_test cuda_encode_test codec_test $CORE_TESTS \
  kvcodec_cuda_bench example_cuda_paged || exit 1
fi

if want test; then
for t in cuda_test cuda_encode_test; do
  step $t 240 $t.log "$BUILD/tests/$t" --gtest_output="json:$OUT/$t.json"
  if grep -q "SKIPPED" "$OUT/$t.log"; then
    echo "$t: WARNING: tests were skipped (no usable device?)" | tee -a "$OUT/summary.txt"
  fi
done
step codec_test 180 codec_test.log "$BUILD/tests/codec_test"
step example_cuda_paged 60 example_cuda_paged.log "$BUILD/examples/example_cuda_paged"
for t in $CORE_TESTS; do
  step $t 120 $t.log "$BUILD/tests/$t"
done

fi

if want bench; then
KVCODEC_BENCH_TOKENS=$TOKENS step gpu_bench 240 gpu_bench.log \
  "$BUILD/bench/kvcodec_cuda_bench" --benchmark_out="$OUT/gpu_bench.json" --benchmark_out_format=json \
    --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
fi

# compute-sanitizer (CUDA toolkit) on the small GPU tests: kernels that never ran elsewhere.
SANITIZER=$(command -v compute-sanitizer || echo "$(dirname "$NVCC")/compute-sanitizer")
if want sanitize && [ -x "$SANITIZER" ]; then
  DEC_SMALL='CudaDecode.BatchesLayerRangesAndChunkOrder:CudaDecode.BadBlockTableIsAnError'
  ENC_SMALL='CudaEncode.ModelEdgeCases:CudaEncode.EncoderReuseRoundTripAndErrors'
  step memcheck_decode 150 memcheck_decode.log "$SANITIZER" --tool memcheck --error-exitcode 1 \
    "$BUILD/tests/cuda_test" --gtest_filter="$DEC_SMALL"
  step memcheck_encode 240 memcheck_encode.log "$SANITIZER" --tool memcheck --error-exitcode 1 \
    "$BUILD/tests/cuda_encode_test" --gtest_filter="$ENC_SMALL"
  step racecheck_decode 150 racecheck_decode.log "$SANITIZER" --tool racecheck --error-exitcode 1 \
    "$BUILD/tests/cuda_test" --gtest_filter="$DEC_SMALL"
  step racecheck_encode 240 racecheck_encode.log "$SANITIZER" --tool racecheck --error-exitcode 1 \
    "$BUILD/tests/cuda_encode_test" --gtest_filter="$ENC_SMALL"
  # Barriers reached by only part of a block (the table kernel's phases).
  step synccheck_encode 150 synccheck_encode.log "$SANITIZER" --tool synccheck --error-exitcode 1 \
    "$BUILD/tests/cuda_encode_test" --gtest_filter="$ENC_SMALL"
elif want sanitize; then
  echo "sanitize: skipped (compute-sanitizer not found)" | tee -a "$OUT/summary.txt"
fi

if want ncu && command -v ncu > /dev/null; then
  # One default-level decode of a 2048-token cache (checksum kernels, then the decoder):
  # speed of light, memory and occupancy.
  KVCODEC_BENCH_TOKENS=2048 step ncu 120 ncu_decode.txt \
    ncu --kernel-name regex:'decode_units|digest_chunks|check_chunks' --launch-count 3 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
      "$BUILD/bench/kvcodec_cuda_bench" --benchmark_filter='BM_Decode/4' --benchmark_min_time=0.01
  # One default-level encode: every kernel of the encoder (their names end in _kernel; the decoder's do not).
  KVCODEC_BENCH_TOKENS=2048 step ncu_encode 180 ncu_encode.txt \
    ncu --kernel-name regex:'_kernel' \
      --launch-count 16 --section SpeedOfLight --section Occupancy --section LaunchStats \
      "$BUILD/bench/kvcodec_cuda_bench" --benchmark_filter='BM_Encode/4' --benchmark_min_time=0.01
elif want ncu; then
  echo "ncu: skipped (ncu not found)" | tee -a "$OUT/summary.txt"
fi
cat "$OUT/summary.txt"
! grep -q FAILED "$OUT/summary.txt"
