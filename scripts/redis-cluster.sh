#!/usr/bin/env bash
# A local Redis Cluster for the tests: 3 masters + 3 replicas of Debian's redis-server 7 on
# 127.0.0.1 ports BASE..BASE+5, no persistence, cluster-node-timeout 1000 ms (a killed master's
# replica is promoted within a few seconds). A replica can only be promoted once it has synced
# with its master (otherwise: "Disconnected from master for longer than allowed"), so the
# masters sync replicas at once (no diskless-sync delay, Redis 7 waits 5 s by default) and
# cluster_start returns only when every replica's link to its master is up.
#
# As a library (scripts/test.sh, tests/cluster_failover.sh):
#   source scripts/redis-cluster.sh
#   cluster_start BASE DIR    # starts, creates, waits for cluster_state:ok and every replica
#                             # synced (master_link_status:up); sets CLUSTER_URL
#                             # (redis-cluster://127.0.0.1:BASE,...) and writes DIR/pids
#   cluster_master_pid_of_slot DIR SLOT  # the pid of the master serving SLOT (failover tests)
#   cluster_ok PORT...        # true when every node says cluster_state:ok, 16384 slots ok
#   cluster_stop DIR          # kills every process DIR/pids lists, by pid, and waits for them
# As a command: scripts/redis-cluster.sh start BASE DIR | stop DIR

cluster_ping() { [[ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" == PONG ]]; }

# True when every listed node reports cluster_state:ok and all 16384 slots assigned and ok.
cluster_ok() {
  local port info
  for port in "$@"; do
    info="$(redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | tr -d '\r')" || return 1
    grep -q '^cluster_state:ok$' <<<"$info" || return 1
    grep -q '^cluster_slots_ok:16384$' <<<"$info" || return 1
  done
}

cluster_start() {
  local base="$1" dir="$2" port ports=() addrs=() i
  mkdir -p "$dir"
  : >"$dir/pids"
  for i in 0 1 2 3 4 5; do
    port=$((base + i))
    ports+=("$port")
    addrs+=("127.0.0.1:$port")
    mkdir -p "$dir/$port"
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
      --cluster-config-file "$dir/$port/nodes.conf" --cluster-node-timeout 1000 \
      --repl-diskless-sync-delay 0 \
      --save "" --appendonly no --dir "$dir/$port" --logfile "$dir/$port/redis.log" &
    echo "$! $port" >>"$dir/pids"
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 100); do cluster_ping "$port" && break; sleep 0.1; done
    if ! cluster_ping "$port"; then
      echo "redis-cluster: node $port did not start:" >&2
      cat "$dir/$port/redis.log" >&2 || true
      return 1
    fi
  done
  if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1; then
    echo "redis-cluster: 'redis-cli --cluster create' failed:" >&2
    cat "$dir/create.log" >&2
    return 1
  fi
  for _ in $(seq 200); do cluster_ok "${ports[@]}" && break; sleep 0.1; done
  if ! cluster_ok "${ports[@]}"; then
    echo "redis-cluster: the cluster did not reach cluster_state:ok in 20 s" >&2
    return 1
  fi
  for _ in $(seq 200); do cluster_replicas_synced "${ports[@]}" && break; sleep 0.1; done
  if ! cluster_replicas_synced "${ports[@]}"; then
    echo "redis-cluster: a replica did not sync with its master in 20 s" >&2
    return 1
  fi
  CLUSTER_URL="redis-cluster://$(IFS=,; echo "${addrs[*]}")"
  export CLUSTER_URL
}

# True when every listed node that is a replica has its link to its master up.
cluster_replicas_synced() {
  local port info
  for port in "$@"; do
    info="$(redis-cli -h 127.0.0.1 -p "$port" info replication 2>/dev/null | tr -d '\r')" || return 1
    grep -q '^role:slave$' <<<"$info" || continue
    grep -q '^master_link_status:up$' <<<"$info" || return 1
  done
}

# The pid of the live master serving SLOT (from CLUSTER NODES of any live node).
cluster_master_pid_of_slot() {
  local dir="$1" slot="$2" pid port master_port=""
  while read -r pid port; do
    kill -0 "$pid" 2>/dev/null || continue
    master_port="$(redis-cli -h 127.0.0.1 -p "$port" cluster nodes 2>/dev/null | tr -d '\r' |
      awk -v s="$slot" '$3 ~ /master/ && $3 !~ /fail/ {
        for (i = 9; i <= NF; i++) { n = split($i, r, "-"); lo = r[1]; hi = n > 1 ? r[2] : r[1];
          if ($i !~ /^\[/ && s + 0 >= lo + 0 && s + 0 <= hi + 0) { split($2, a, "[:@]"); print a[2]; exit } } }')"
    [[ -n "$master_port" ]] && break
  done <"$dir/pids"
  awk -v p="$master_port" '$2 == p {print $1}' "$dir/pids"
}

cluster_stop() {
  local dir="$1" pid port
  [[ -f "$dir/pids" ]] || return 0
  while read -r pid port; do kill "$pid" 2>/dev/null || true; done <"$dir/pids"
  while read -r pid port; do wait "$pid" 2>/dev/null || true; done <"$dir/pids"
  rm -f "$dir/pids"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  case "${1:-}" in
    start) cluster_start "$2" "$3" && echo "$CLUSTER_URL" ;;
    stop) cluster_stop "$2" ;;
    *) echo "usage: $0 start BASE DIR | stop DIR" >&2; exit 2 ;;
  esac
fi
