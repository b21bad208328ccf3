#!/usr/bin/env bash
# Sets up and builds kvcodec (scripts/setup.sh), then runs every check:
#   1. the ctest suite, with a redis-server on 127.0.0.1:$KVCODEC_TEST_REDIS_PORT (default 6390)
#      for the Redis store tests (started here unless one already answers there; stopped at exit),
#      and a 3-master + 3-replica Redis Cluster on ports $KVCODEC_TEST_CLUSTER_PORT..+5 (default
#      7000; scripts/redis-cluster.sh) for the cluster store tests (the same way);
#   2. the Python package installed by pip, offline, into a fresh venv (scripts/pip-check.sh);
#   3. the libFuzzer targets for a bounded time each (scripts/fuzz.sh), when clang is installed;
#   4. a compile-only build of the CUDA backend in build-cuda/, when nvcc is installed
#      (KVCODEC_TEST_CUDA_BUILD=0 skips it, =1 requires it);
#   5. with KVCODEC_TEST_SANITIZERS=1: the whole ctest suite under ASan+UBSan in build-asan/, and
#      the threaded and streaming tests under TSan in build-tsan/. Only the test targets are
#      built, at -O1, through ccache when it is installed. Opt-in: with them a clean-clone run
#      does not fit CI's 25 minutes on 2 cores (figures in docs/results/reliability.md).
# Every step line shows the CPU time (user + system, s) of the checks so far.
# Exits non-zero on the first failing step. Under CI=true nothing may be skipped for want of a
# tool: a missing redis-server, clang++ or nvcc is an error (KVCODEC_TEST_CUDA_BUILD=0 still
# skips the CUDA build on purpose), and the tests fail on missing shared data
# (tests/test_util.hpp). ctest reports a test binary whose cases all skipped as Skipped.
#
# Environment: KVCODEC_JOBS (parallel jobs, default: all cores), KVCODEC_TEST_REDIS_PORT,
#              KVCODEC_TEST_CLUSTER_PORT,
#              KVCODEC_FUZZ_SECONDS (per fuzz target, see scripts/fuzz.sh),
#              KVCODEC_TEST_CUDA_BUILD (0 / 1; default: build when nvcc exists),
#              KVCODEC_TEST_SANITIZERS (0 default / 1).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${KVCODEC_JOBS:-$(nproc)}"

# CPU seconds (user + system) used by the finished child processes of this script.
cpu_s() { times | tail -n 1 | awk '{ split($1, u, /[ms]/); split($2, y, /[ms]/); printf "%.0f", u[1] * 60 + u[2] + y[1] * 60 + y[2] }'; }
step() { echo "== test: $* ($(date +%T), cpu $(cpu_s) s)"; }
in_ci() { [[ "${CI:-}" == true ]]; }
# Skipping a check is a warning on a developer's machine and an error under CI=true.
skip_check() {
  if in_ci; then
    echo "test: error (CI=true): $*" >&2
    exit 1
  fi
  echo "test: $*"
}

step "setup and build"
bash scripts/setup.sh

# ---- Redis for the store tests -------------------------------------------------------------
redis_port="${KVCODEC_TEST_REDIS_PORT:-6390}"
redis_pid=""
redis_dir=""
stop_redis() {
  if [[ -n "$redis_pid" ]]; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  if [[ -n "$redis_dir" ]]; then
    rm -rf "$redis_dir"
  fi
}
source scripts/redis-cluster.sh
cluster_dir=""
stop_services() {
  stop_redis
  if [[ -n "$cluster_dir" ]]; then
    cluster_stop "$cluster_dir"
    rm -rf "$cluster_dir"
  fi
}
trap stop_services EXIT

redis_ping() { [[ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" == PONG ]]; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  skip_check "redis-server not installed: the Redis store tests will skip"
elif redis_ping; then
  echo "test: using the redis-server already answering on 127.0.0.1:$redis_port"
  export KVCODEC_REDIS_URL="redis://127.0.0.1:$redis_port"
else
  redis_dir="$(mktemp -d)"
  # No persistence: the tests' keys live only as long as this server.
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$redis_dir" --logfile "$redis_dir/redis.log" &
  redis_pid=$!
  for _ in $(seq 100); do
    if redis_ping; then break; fi
    sleep 0.1
  done
  if ! redis_ping; then
    echo "test: error: redis-server did not start on 127.0.0.1:$redis_port:" >&2
    cat "$redis_dir/redis.log" >&2 || true
    exit 1
  fi
  export KVCODEC_REDIS_URL="redis://127.0.0.1:$redis_port"
fi

# ---- Redis Cluster for the cluster store tests ------------------------------------------------
cluster_port="${KVCODEC_TEST_CLUSTER_PORT:-7000}"
cluster_ports=()
for i in 0 1 2 3 4 5; do cluster_ports+=($((cluster_port + i))); done
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  skip_check "redis-server not installed: the Redis Cluster tests will skip"
elif cluster_ok "${cluster_ports[@]}"; then
  echo "test: using the Redis Cluster already answering on 127.0.0.1:$cluster_port..$((cluster_port + 5))"
  export KVCODEC_REDIS_CLUSTER_URL="redis-cluster://127.0.0.1:$cluster_port,127.0.0.1:$((cluster_port + 1))"
else
  cluster_dir="$(mktemp -d)"
  cluster_start "$cluster_port" "$cluster_dir"
  export KVCODEC_REDIS_CLUSTER_URL="$CLUSTER_URL"
fi

# ---- unit, property, golden, CLI and downstream tests ---------------------------------------
step "ctest"
ctest --test-dir build --output-on-failure -j "$jobs"

# ---- the Python package, as users install it ------------------------------------------------
step "pip install into a fresh venv"
bash scripts/pip-check.sh build

# ---- fuzzing --------------------------------------------------------------------------------
if command -v clang++ >/dev/null; then
  step "fuzz"
  bash scripts/fuzz.sh
else
  skip_check "clang++ not found: skipping the fuzz targets"
fi

# ---- CUDA backend, compile only --------------------------------------------------------------
nvcc_path="$(command -v nvcc || true)"
if [[ -z "$nvcc_path" && -x /usr/local/cuda/bin/nvcc ]]; then
  nvcc_path=/usr/local/cuda/bin/nvcc
fi
cuda_build="${KVCODEC_TEST_CUDA_BUILD:-auto}"
if [[ "$cuda_build" == 0 ]]; then
  echo "test: KVCODEC_TEST_CUDA_BUILD=0: skipping the CUDA build"
elif [[ -z "$nvcc_path" ]]; then
  if [[ "$cuda_build" == 1 ]]; then
    echo "test: error: KVCODEC_TEST_CUDA_BUILD=1 but nvcc was not found" >&2
    exit 1
  fi
  skip_check "nvcc not found: skipping the CUDA build (it proves only that the backend compiles)"
else
  step "CUDA build (compile only; no GPU needed) in build-cuda/"
  # The library, the CLI, and the GPU tests, benchmarks and example that scripts/gpu-check.sh
  # runs on a GPU machine: their device-only code compiles nowhere else.
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVCODEC_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$nvcc_path" -DKVCODEC_BUILD_TESTS=ON -DKVCODEC_BUILD_BENCH=ON \
    -DKVCODEC_BUILD_EXAMPLES=ON
  cmake --build build-cuda -j "$jobs" --target kvcodec_cli cuda_test cuda_encode_test kvcodec_cuda_bench \
    example_cuda_paged
fi

# ---- sanitizers -------------------------------------------------------------------------------
if [[ "${KVCODEC_TEST_SANITIZERS:-0}" != 1 ]]; then
  echo "test: sanitizer builds not requested (KVCODEC_TEST_SANITIZERS=1 runs them)"
else
  launcher=()
  if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  sanitizer_build() {  # dir option targets...
    local dir="$1" option="$2"
    shift 2
    # -O1 with line tables: half the compile time of -O2 -g, stack traces still name lines.
    cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
      -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" "-D$option=ON" "${launcher[@]}" \
      -DKVCODEC_BUILD_TESTS=ON -DKVCODEC_BUILD_BENCH=OFF -DKVCODEC_BUILD_EXAMPLES=OFF >/dev/null
    cmake --build "$dir" -j "$jobs" --target "$@"
  }
  step "ASan+UBSan: the ctest suite in build-asan/"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  sanitizer_build build-asan KVCODEC_SANITIZE all
  ctest --test-dir build-asan --output-on-failure -j "$jobs" -E '^downstream'
  step "TSan: threaded and streaming tests in build-tsan/"
  tsan_tests=(codec_test transport_test stream_fault_test store_test controller_test simulator_test)
  sanitizer_build build-tsan KVCODEC_SANITIZE_THREAD "${tsan_tests[@]}"
  export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
  ctest --test-dir build-tsan --output-on-failure -j "$jobs" -R "^($(IFS='|'; echo "${tsan_tests[*]}"))\$"
fi

step "all checks passed"
