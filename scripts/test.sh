#!/usr/bin/env bash
# Sets up and builds kvcodec (scripts/setup.sh), then runs every check:
#   1. the ctest suite, with a redis-server on 127.0.0.1:$KVCODEC_TEST_REDIS_PORT (default 6390)
#      for the Redis store tests (started here unless one already answers there; stopped at exit),
#      and a 3-master + 3-replica Redis Cluster on ports $KVCODEC_TEST_CLUSTER_PORT..+5 (default
#      7000; scripts/redis-cluster.sh) for the cluster store tests (the same way);
#   2. the Python package installed by pip, offline, into a fresh venv (scripts/pip-check.sh);
#   3. under ASan+UBSan (clang, -O1, build-fuzz/, scripts/fuzz.sh build): the ctest suite again
#      (not the timing test, whose point is wall-clock agreement, nor the downstream builds),
#      then the libFuzzer targets for a bounded time each (scripts/fuzz.sh);
#   4. under TSan (build-tsan/, -O1, only these test targets): the threaded and streaming tests;
#   5. a compile-only build of the CUDA backend in build-cuda/, when nvcc is installed
#      (KVCODEC_TEST_CUDA_BUILD=0 skips it, =1 requires it).
# KVCODEC_TEST_SANITIZERS=0 skips steps 3 and 4 (a developer's quick run; not under CI=true).
# Every step line shows the CPU time (user + system, s) of the checks so far.
# Exits non-zero on the first failing step. Under CI=true nothing may be skipped for want of a
# tool: a missing redis-server, clang++ or nvcc is an error (KVCODEC_TEST_CUDA_BUILD=0 still
# skips the CUDA build on purpose; KVCODEC_TEST_SANITIZERS=0 is refused), and the tests fail on
# missing shared data (tests/test_util.hpp). ctest reports a test binary whose cases all skipped as Skipped.
#
# Environment: KVCODEC_JOBS (parallel jobs, default: all cores), KVCODEC_TEST_REDIS_PORT,
#              KVCODEC_TEST_CLUSTER_PORT,
#              KVCODEC_FUZZ_SECONDS (per fuzz target, see scripts/fuzz.sh),
#              KVCODEC_TEST_CUDA_BUILD (0 / 1; default: build when nvcc exists),
#              KVCODEC_TEST_SANITIZERS (1 default / 0).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${KVCODEC_JOBS:-$(nproc)}"

# CPU seconds (user + system) used by the finished child processes of this script: read from
# /proc for the script's own PID ($$), since `times` in a $(...) subshell sees only its own.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f", ($16 + $17) / hz }' "/proc/$$/stat"; }
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

# ---- sanitizers and fuzzing -------------------------------------------------------------------
sanitizers="${KVCODEC_TEST_SANITIZERS:-1}"
if [[ "$sanitizers" == 0 ]]; then
  if in_ci; then
    echo "test: error (CI=true): KVCODEC_TEST_SANITIZERS=0: the sanitizer runs are part of the tests" >&2
    exit 1
  fi
  echo "test: KVCODEC_TEST_SANITIZERS=0: skipping the ASan+UBSan and TSan runs and the fuzz targets"
elif ! command -v clang++ >/dev/null; then
  skip_check "clang++ not found: skipping the ASan+UBSan run and the fuzz targets"
else
  step "ASan+UBSan build (clang) in build-fuzz/"
  bash scripts/fuzz.sh build
  step "ASan+UBSan: the ctest suite in build-fuzz/"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir build-fuzz --output-on-failure -j "$jobs" -E '^(downstream|stream_timing_test)$'
  step "fuzz"
  bash scripts/fuzz.sh
fi
if [[ "$sanitizers" != 0 ]]; then
  step "TSan: threaded and streaming tests in build-tsan/"
  tsan_tests=(codec_test transport_test stream_fault_test store_test store_cluster_test controller_test
              simulator_test metrics_test)
  launcher=()
  if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" -DKVCODEC_SANITIZE_THREAD=ON "${launcher[@]}" \
    -DKVCODEC_BUILD_TESTS=ON -DKVCODEC_BUILD_BENCH=OFF -DKVCODEC_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build build-tsan -j "$jobs" --target "${tsan_tests[@]}"
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest --test-dir build-tsan --output-on-failure -j "$jobs" -R "^($(IFS='|'; echo "${tsan_tests[*]}"))\$"
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

step "all checks passed"
