#!/usr/bin/env bash
# The chaos run (issue 11): fetches through a fault-injecting TCP proxy, with the store's
# redis-server killed and restarted mid-run.
#
#   redis-server (own port, AOF)  <-  kvcodec serve --store redis://...  <-  chaos_proxy.py
#     (drops, resets, corrupt bytes, stalls, bandwidth collapse)  <-  kvcodec_chaos fetch (N times)
#
# kvcodec_chaos (tests/chaos/chaos_fetch.cpp) compares every fetched tensor with the exact decode
# of its level (or the original rows, for chunks recomputed from text) and fails on any wrong
# tensor or unreported failure; it samples the server's RSS. At a third of the run the
# redis-server is SIGKILLed; it is restarted (same AOF) 3 s later.
#
# usage: scripts/chaos.sh [--cli PATH] [--driver PATH] [--json OUT] [FETCHES]
#   FETCHES default $KVCODEC_CHAOS_FETCHES or 1000 (CI runs a short version: 150, ctest chaos_short)
#   --cli / --driver: the kvcodec and kvcodec_chaos binaries (default: build/, built here when absent)
# Environment: KVCODEC_CHAOS_FAULT_RATE (faulty connections, default 0.3), KVCODEC_CHAOS_SEED.
# Exit 77 (ctest: skipped) without redis-server, except under CI=true (then a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
cli="" driver="" json="" fetches="${KVCODEC_CHAOS_FETCHES:-1000}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cli) cli="$(realpath "$2")"; shift 2 ;;
    --driver) driver="$(realpath "$2")"; shift 2 ;;
    --json) json="$2"; shift 2 ;;
    *) fetches="$1"; shift ;;
  esac
done
say() { echo "chaos: $*"; }
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  if [[ "${CI:-}" == true ]]; then echo "chaos: error: redis-server is required under CI=true" >&2; exit 1; fi
  say "SKIP: redis-server / redis-cli not installed"
  exit 77
fi
if [[ -z "$cli" || -z "$driver" ]]; then
  launcher=()
  if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  [[ -f build/CMakeCache.txt ]] || cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" \
    -DKVCODEC_BUILD_TESTS=ON >/dev/null
  cmake --build build -j "${KVCODEC_JOBS:-$(nproc)}" --target kvcodec_cli kvcodec_chaos >/dev/null
  cli="${cli:-$(realpath build/tools/kvcodec/kvcodec)}"
  driver="${driver:-$(realpath build/tests/kvcodec_chaos)}"
fi
python=/usr/bin/python3
[[ -x "$python" ]] || python=python3

work="$(mktemp -d)"
redis_pid="" serve_pid="" proxy_pid="" driver_pid=""
stop_pid() { if [[ -n "$1" ]]; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi; }
cleanup() {
  stop_pid "$driver_pid"; stop_pid "$proxy_pid"; stop_pid "$serve_pid"; stop_pid "$redis_pid"
  rm -rf "$work"
}
trap cleanup EXIT

redis_port=""
start_redis() {
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly yes --appendfsync always \
    --dir "$work" --logfile "$work/redis.log" &
  redis_pid=$!
  for _ in $(seq 100); do
    [[ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" == PONG ]] && return 0
    kill -0 "$redis_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# Below the kernel's ephemeral range: while redis-server is down, no outgoing connection of a
# test running beside this one may take its port (the restart would fail to bind).
ephemeral_low="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
(( ephemeral_low > 30006 )) || ephemeral_low=50006  # an unusual range: any port will have to do
for _ in 1 2 3 4 5; do
  redis_port=$((10000 + RANDOM % (ephemeral_low - 10000)))
  if start_redis; then break; fi
  stop_pid "$redis_pid"; redis_pid=""
done
[[ -n "$redis_pid" ]] || { cat "$work/redis.log" >&2; echo "chaos: error: redis-server did not start" >&2; exit 1; }
store="redis://127.0.0.1:$redis_port"
"$driver" put "$store"

"$cli" serve --store "$store" --port 0 >"$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 100); do grep -q '^serving' "$work/serve.log" && break; sleep 0.1; done
port="$(sed -n 's/^serving .* on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$work/serve.log")"
[[ -n "$port" ]] || { cat "$work/serve.log" >&2; echo "chaos: error: serve did not start" >&2; exit 1; }

"$python" tests/chaos/chaos_proxy.py --listen 0 --target "127.0.0.1:$port" --port-file "$work/proxy.port" \
  --stats "$work/proxy.json" --fault-rate "${KVCODEC_CHAOS_FAULT_RATE:-0.3}" --seed "${KVCODEC_CHAOS_SEED:-1}" &
proxy_pid=$!
for _ in $(seq 100); do [[ -s "$work/proxy.port" ]] && break; sleep 0.1; done
[[ -s "$work/proxy.port" ]] || { echo "chaos: error: the proxy did not start" >&2; exit 1; }
proxy_port="$(cat "$work/proxy.port")"
say "redis $store (pid $redis_pid), serve :$port (pid $serve_pid), proxy :$proxy_port; $fetches fetches"

start_s=$(date +%s.%N)
"$driver" fetch "$store" "127.0.0.1:$proxy_port" "$fetches" "$serve_pid" "$work/driver.json" >"$work/driver.log" 2>&1 &
driver_pid=$!
# Kill the redis-server once a third of the fetches are done; restart it 3 s later.
killed=""
while kill -0 "$driver_pid" 2>/dev/null; do
  done_n="$(grep -c '^chaos: [0-9]* fetches' "$work/driver.log" || true)"
  if [[ -z "$killed" ]] && (( done_n * 10 * 3 >= fetches )); then
    say "SIGKILL redis-server (pid $redis_pid) after $((done_n * 10)) fetches"
    kill -9 "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
    sleep 3
    restarted=""
    for _ in 1 2 3 4 5; do  # the old socket or AOF may still be busy for a moment
      if start_redis; then restarted=1; break; fi
      stop_pid "$redis_pid"; redis_pid=""
      sleep 1
    done
    [[ -n "$restarted" ]] || { tail -n 20 "$work/redis.log" >&2; echo "chaos: error: redis-server did not restart" >&2; exit 1; }
    say "redis-server restarted (pid $redis_pid)"
    killed=1
  fi
  sleep 0.1
done
rc=0
wait "$driver_pid" || rc=$?
driver_pid=""
end_s=$(date +%s.%N)
[[ -n "$killed" ]] || say "warning: the run ended before the redis-server was killed"
stop_pid "$proxy_pid"; proxy_pid=""
stop_pid "$serve_pid"; serve_pid=""
cat "$work/driver.log"
say "proxy: $(tr -d ' \n' <"$work/proxy.json")"
say "serve: $(grep '^stopped' "$work/serve.log" || true)"
if [[ -n "$json" && -f "$work/driver.json" ]]; then
  "$python" - "$work/driver.json" "$work/proxy.json" "$json" "$start_s" "$end_s" "$killed" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
d["proxy"] = json.load(open(sys.argv[2]))
d["wall_s"] = float(sys.argv[5]) - float(sys.argv[4])
d["redis_killed_and_restarted"] = sys.argv[6] == "1"
json.dump(d, open(sys.argv[3], "w"), indent=1)
EOF
fi
if [[ $rc -ne 0 ]]; then echo "chaos: error: the fetch driver failed (rc $rc)" >&2; exit 1; fi
say "OK: no wrong tensor, every failure reported or recovered"
