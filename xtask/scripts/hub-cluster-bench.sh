#!/usr/bin/env bash
# Durable writes through a Flotilla hub cluster's HTTPS API, driven by the same wrk
# generator as the etcd anchor (../shared/anchors/put.lua), on loopback.
#
# Usage: xtask/scripts/hub-cluster-bench.sh PUT_LUA [DURATION]   (after
#        `cargo build --release -p cloud-hub --bin flotilla`)
# Env:   CONCURRENCY (default "1 16 256"), TOPOLOGIES (default "3 1"),
#        TARGET (leader | follower, default leader), BIN (the flotilla binary to run)
#
# For each topology it starts hubs on 127.0.0.1 from fresh data directories (the first
# founds the cluster, the others `flotilla hub join` it), waits for every member, then
# PUTs a new Site per request (256-byte displayName) with wrk at each concurrency, to
# the leader's API (or a follower's, which forwards). Every write is committed by a
# quorum with fsync before the 2xx. After the runs it kills the leader and times how
# long until a write through a surviving hub succeeds.
# Prints: METRIC hub{3,1}_put_{rps,p50_ms,p99_ms,non2xx}_c{C}, hub3_failover_ms
set -euo pipefail

LUA=${1:?usage: hub-cluster-bench.sh PUT_LUA [DURATION]}
DUR=${2:-10s}
CONCURRENCY=${CONCURRENCY:-"1 16 256"}
TOPOLOGIES=${TOPOLOGIES:-"3 1"}
TARGET=${TARGET:-leader}
BIN=${BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/release/flotilla}
WORK=$(mktemp -d /tmp/bench-hubs.XXXXXX)
PIDS=()
# wrk opens every connection from 127.0.0.1: lift the per-client connection cap (64).
HUB_ARGS=(--api-max-connections-per-client 1024)
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ready() { # log file
  for _ in $(seq 600); do grep -q "^hub ready" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "hub did not start: $(tail -5 "$1")" >&2; return 1
}

run_topology() {
  local n=$1 i api=() ctx
  for i in $(seq 1 "$n"); do
    local d=$WORK/t$n/h$i a q r
    mkdir -p "$d"; a=$(port); q=$(port); r=$(port)
    api+=("$a")
    if ((i == 1)); then
      local raft=(--raft-listen "127.0.0.1:$r")
      # A lone hub as the default install runs it: no Raft listener.
      ((n == 1)) && raft=()
      "$BIN" hub serve --data-dir "$d" --api-listen 127.0.0.1:$a --quic-listen 127.0.0.1:$q \
        "${raft[@]}" "${HUB_ARGS[@]}" >"$d.log" 2>&1 &
    else
      "$BIN" hub join "https://127.0.0.1:${api[0]}" --join-token "$token" --data-dir "$d" \
        --api-listen 127.0.0.1:$a --quic-listen 127.0.0.1:$q --raft-listen 127.0.0.1:$r "${HUB_ARGS[@]}" >"$d.log" 2>&1 &
    fi
    PIDS+=($!)
    wait_ready "$d.log"
    ctx=$WORK/t$n/h1/context.json
    ((i == 1)) && token=$(FLOTILLA_CONTEXT=$ctx "$BIN" hub join-token create 2>/dev/null)
  done
  local bearer leader target
  bearer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$ctx")
  leader=$(FLOTILLA_CONTEXT=$ctx "$BIN" hub members | awk '$4=="*"{print $1}')
  leader=${leader:-1}
  target=${api[$((leader - 1))]}
  if [[ $TARGET == follower && $n -gt 1 ]]; then target=${api[$((leader % n))]}; fi
  for c in $CONCURRENCY; do
    local t=2; ((c == 1)) && t=1
    local out
    out=$(PUT_METHOD=PUT wrk -t$t -c"$c" -d"$DUR" --latency -s "$LUA" "https://127.0.0.1:$target" -- \
      '/api/v1/sites/{{NAME}}' \
      '{"apiVersion":"flotilla.dev/v1","kind":"Site","metadata":{"name":"{{NAME}}"},"spec":{"displayName":"{{VALUE}}"}}' \
      256 "" "Authorization: Bearer $bearer" | grep WRKRESULT)
    python3 - "$n" "$c" "$out" <<'PY'
import sys
n, c, line = sys.argv[1], sys.argv[2], sys.argv[3]
kv = dict(x.split("=") for x in line.split()[1:])
print(f"METRIC hub{n}_put_rps_c{c} {float(kv['rps']):.0f} req/s")
print(f"METRIC hub{n}_put_p50_ms_c{c} {int(kv['p50_us'])/1000:.2f} ms")
print(f"METRIC hub{n}_put_p99_ms_c{c} {int(kv['p99_us'])/1000:.2f} ms")
print(f"METRIC hub{n}_put_non2xx_c{c} {kv['non2xx']} requests")
print(f"# {line}")
PY
  done
  if ((n > 1)); then
    # Failover: SIGKILL the leader, then write through a survivor until one succeeds.
    local survivor=${api[$((leader % n))]} start end
    kill -KILL "${PIDS[$((${#PIDS[@]} - n + leader - 1))]}"
    start=$(date +%s%N)
    for k in $(seq 10000); do
      if printf 'apiVersion: flotilla.dev/v1\nkind: Site\nmetadata: {name: after-%s}\n' "$k" |
        FLOTILLA_CONTEXT=$ctx "$BIN" --hub "https://127.0.0.1:$survivor" apply -f - >/dev/null 2>&1; then break; fi
    done
    end=$(date +%s%N)
    echo "METRIC hub${n}_failover_ms $(((end - start) / 1000000)) ms"
  fi
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
}

for n in $TOPOLOGIES; do run_topology "$n"; done
