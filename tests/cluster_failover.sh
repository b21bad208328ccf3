#!/usr/bin/env bash
# Failover of a Redis Cluster under `kvcodec put`, `serve` and `fetch` (ctest: cluster_failover).
#
# Starts its own 3-master + 3-replica cluster (scripts/redis-cluster.sh; it kills a master, so
# it never uses the shared one), puts contexts, serves them, fetches every one and compares it
# byte for byte with a local encode + decode; then SIGKILLs the master that holds the first
# context while fetches and a put run, and checks that every fetch during the failover is
# byte-exact or a reported error, and that after the replica's promotion every context (the one
# put during the failover included) fetches exactly. Never wrong data.
#
# usage: tests/cluster_failover.sh KVCODEC_BINARY
# Exit 77 (ctest: skipped) without redis-server, except under CI=true (then a failure).
set -euo pipefail
kvcodec="$(realpath "$1")"
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  if [[ "${CI:-}" == true ]]; then echo "cluster_failover: redis-server is required under CI=true" >&2; exit 1; fi
  echo "cluster_failover: SKIP: redis-server / redis-cli not installed"
  exit 77
fi
source scripts/redis-cluster.sh

work="$(mktemp -d)"
serve_pid=""
cleanup() {
  if [[ -n "$serve_pid" ]]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  cluster_stop "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT

# Ports BASE..BASE+5 and their bus ports (+10000) must be free: try a few random bases, all
# below the kernel's ephemeral range (a killed node's port is not taken by an outgoing
# connection before it restarts).
ephemeral_low="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
(( ephemeral_low > 30006 )) || ephemeral_low=50006  # an unusual range: any port will have to do
started=""
for _ in 1 2 3; do
  base=$((10000 + RANDOM % (ephemeral_low - 20006)))
  if cluster_start "$base" "$work/cluster" 2>"$work/start.err"; then started=1; break; fi
  cluster_stop "$work/cluster"
done
if [[ -z "$started" ]]; then cat "$work/start.err" >&2; echo "cluster_failover: FAIL: no cluster" >&2; exit 1; fi
echo "cluster_failover: cluster up on $CLUSTER_URL"

fail() { echo "cluster_failover: FAIL: $*" >&2; exit 1; }
ids=(fo0 fo1 fo2 fo3 fo4 fo5)
for i in "${!ids[@]}"; do
  "$kvcodec" kv-dump --synthetic llama3-8b --tokens 32 --seed "$((i + 1))" -o "$work/in$i.safetensors" >/dev/null
  "$kvcodec" encode "$work/in$i.safetensors" --level 4 --chunk-tokens 8 -o "$work/$i.kvc" >/dev/null
  "$kvcodec" decode "$work/$i.kvc" -o "$work/ref$i.safetensors" >/dev/null
done
for i in 0 1 2 3 4; do  # fo5 is put during the failover
  "$kvcodec" put --store "$CLUSTER_URL" --id "${ids[$i]}" --levels 4 --chunk-tokens 8 "$work/in$i.safetensors" >/dev/null
done

"$kvcodec" serve --store "$CLUSTER_URL" --port 0 >"$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 50); do grep -q '^serving' "$work/serve.log" && break; sleep 0.1; done
port="$(sed -n 's/^serving .* on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$work/serve.log")"
[[ -n "$port" ]] || fail "serve did not start: $(cat "$work/serve.log")"

# fetch I TAG: 0 exact, 1 a reported error (one stderr line), 2 wrong data (never acceptable).
fetch() {
  local i="$1" out="$work/out$1.$2.safetensors"
  rm -f "$out"
  if "$kvcodec" fetch --server "127.0.0.1:$port" --id "${ids[$i]}" -o "$out" --policy fixed:4 --quiet \
       --timeout-ms 3000 >"$work/fetch.$i.$2.log" 2>&1; then
    cmp -s "$out" "$work/ref$i.safetensors" && return 0
    echo "cluster_failover: ${ids[$i]} fetched WRONG data ($2)" >&2
    return 2
  fi
  grep -q 'error' "$work/fetch.$i.$2.log" || { echo "fetch failed without a reported error" >&2; return 2; }
  return 1
}

for i in 0 1 2 3 4; do fetch "$i" before || fail "${ids[$i]} is not exact before the failover"; done
echo "cluster_failover: 5 contexts exact before the failover"

slot="$(redis-cli -h 127.0.0.1 -p "$base" cluster keyslot "${ids[0]}" | tr -d '\r')"
victim="$(cluster_master_pid_of_slot "$work/cluster" "$slot")"
[[ -n "$victim" ]] || fail "no master found for slot $slot"

# Fetches in the background while the master dies, and a put that must ride out the failover.
(
  exact=0 errors=0
  end=$((SECONDS + 8))
  n=0
  while ((SECONDS < end)); do
    for i in 0 1 2 3 4; do
      n=$((n + 1))
      rc=0; fetch "$i" "during$n" || rc=$?
      case "$rc" in 0) exact=$((exact + 1)) ;; 1) errors=$((errors + 1)) ;; *) echo WRONG >"$work/wrong" ;; esac
    done
  done
  echo "$exact $errors" >"$work/during"
) &
loop_pid=$!
sleep 1
kill -KILL "$victim"
echo "cluster_failover: SIGKILLed master pid $victim (slot $slot of ${ids[0]})"
t0=$SECONDS
put_rc=0
"$kvcodec" put --store "$CLUSTER_URL" --id "${ids[5]}" --levels 4 --chunk-tokens 8 "$work/in5.safetensors" \
  >"$work/put5.log" 2>&1 || put_rc=$?
put_s=$((SECONDS - t0))
wait "$loop_pid"
[[ ! -e "$work/wrong" ]] || fail "a fetch returned wrong data during the failover"
read -r exact errors <"$work/during"
echo "cluster_failover: during the failover: $exact exact fetches, $errors reported errors; put during it: rc $put_rc after $put_s s"

live=()
while read -r pid p; do [[ "$pid" == "$victim" ]] || live+=("$p"); done <"$work/cluster/pids"
for _ in $(seq 150); do cluster_ok "${live[@]}" && break; sleep 0.1; done
cluster_ok "${live[@]}" || fail "the cluster did not recover in 15 s after the kill"
echo "cluster_failover: replica promoted; cluster ok"
if ((put_rc != 0)); then  # a reported error is acceptable; the retry after the failover must work
  grep -q 'error' "$work/put5.log" || fail "put failed without a reported error"
  "$kvcodec" put --store "$CLUSTER_URL" --id "${ids[5]}" --levels 4 --chunk-tokens 8 "$work/in5.safetensors" >/dev/null
fi
for i in 0 1 2 3 4 5; do fetch "$i" after || fail "${ids[$i]} is not exact after the failover"; done
((exact > 0)) || fail "no fetch completed during the failover window"
echo "cluster_failover: PASS (every fetch exact or a reported error; all exact after the failover)"
