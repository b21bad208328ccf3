#!/usr/bin/env bash
# Scale-out figures for docs/results/scale.md: `kvcodec loadgen` against `kvcodec serve` over
# loopback with each store (mem: in-process; file:, redis://, redis-cluster:// behind a separate
# serve process whose memory is sampled), for several client counts.
#
# usage: bench/scale.sh [KVCODEC_BINARY] [OUT_DIR]
# Environment: SCALE_CLIENTS (default 1,4,16,64,256), SCALE_TOTAL (fetches per round, split over
#              the clients, default 64), SCALE_TOKENS (tokens per context, default 32),
#              SCALE_CONTEXTS (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
kvcodec="$(realpath "${1:-build/tools/kvcodec/kvcodec}")"
out="${2:-scale-out}"
clients="${SCALE_CLIENTS:-1,4,16,64,256}"
total="${SCALE_TOTAL:-64}"
tokens="${SCALE_TOKENS:-32}"
contexts="${SCALE_CONTEXTS:-8}"
mkdir -p "$out"
source scripts/redis-cluster.sh

work="$(mktemp -d)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  cluster_stop "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT

"$kvcodec" kv-dump --synthetic llama3-8b --tokens "$tokens" --seed 1 -o "$work/in.safetensors" >/dev/null
put_opts=(--levels 4 --chunk-tokens 16)
ids=()
for i in $(seq 0 $((contexts - 1))); do ids+=("scale$i"); done
id_list="$(IFS=,; echo "${ids[*]}")"

echo "== mem: (server in the loadgen process)"
"$kvcodec" loadgen --store mem: --put "$work/in.safetensors" --contexts "$contexts" --levels 4 --chunk-tokens 16 \
  --clients "$clients" --total "$total" --json "$out/mem.json" | tee "$out/mem.txt"

# run_served NAME URI: put the contexts into URI, serve it, run the load, stop the server.
run_served() {
  local name="$1" uri="$2" port serve_pid
  for id in "${ids[@]}"; do "$kvcodec" put --store "$uri" --id "$id" "${put_opts[@]}" "$work/in.safetensors" >/dev/null; done
  "$kvcodec" serve --store "$uri" --port 0 --max-connections 1024 >"$work/serve-$name.log" 2>&1 &
  serve_pid=$!
  pids+=("$serve_pid")
  for _ in $(seq 50); do grep -q '^serving' "$work/serve-$name.log" && break; sleep 0.1; done
  port="$(sed -n 's/^serving .* on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$work/serve-$name.log")"
  echo "== $name ($uri)"
  "$kvcodec" loadgen --server "127.0.0.1:$port" --ids "$id_list" --server-pid "$serve_pid" \
    --clients "$clients" --total "$total" --json "$out/$name.json" | tee "$out/$name.txt"
  kill "$serve_pid"
  wait "$serve_pid" 2>/dev/null || true
}

run_served file "file:$work/files"
redis_port=$((20000 + RANDOM % 20000))
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
pids+=("$!")
for _ in $(seq 50); do [[ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" == PONG ]] && break; sleep 0.1; done
run_served redis "redis://127.0.0.1:$redis_port"
cluster_start $((20000 + RANDOM % 20000)) "$work/cluster"
run_served cluster "$CLUSTER_URL"
