#!/bin/bash
# Read throughput and single-client read latency of one read mode, on a
# 3-node cluster (fsync always, peers over Unix sockets), with redis-benchmark:
#
#   bench/read_modes.sh LABEL [node flags]        e.g.  bench/read_modes.sh lease --read-mode lease
#
# For reads through the log, run it from a checkout of 7556515 (the last
# commit before ReadIndex, where GET/MGET/EXISTS were log entries).
# Prints: label | GET/s at 50 clients x pipeline 16 | one client's latency
# avg/min/p50/p95/p99/max (ms) | the leader's last log index (reads add none).
set -e
LABEL=$1; shift
PORT=${RAFTFAST_BENCH_BASE_PORT:-7600}
OUT=$(mktemp)
python -m raftfast.cluster --nodes 3 --fsync always --base-port "$PORT" "$@" > "$OUT" 2>&1 &
CPID=$!
trap 'kill $CPID 2>/dev/null; wait $CPID 2>/dev/null; rm -f "$OUT"' EXIT
for _ in $(seq 60); do grep -q leader "$OUT" && break; sleep 0.5; done
LPORT=$(grep leader "$OUT" | awk '{print $5}' | sed 's/.*://')
redis-benchmark -p "$LPORT" -t set -n 20000 -P 16 -c 50 -d 64 -q > /dev/null 2>&1   # the key exists
GET=$(redis-benchmark -p "$LPORT" -t get -n 1000000 -P 16 -c 50 -d 64 -q 2>&1 | tr '\r' '\n' | grep -v "rps=" | grep . | tail -1)
LAT=$(redis-benchmark -p "$LPORT" -t get -n 20000 -c 1 -d 64 --precision 3 2>&1 | tr '\r' '\n' | grep -E "^ +[0-9.]+ +[0-9.]+ +[0-9.]+" | tail -1)
LAST=$(redis-cli -p "$LPORT" info raft | grep last_log_index | tr -d '\r')
echo "$LABEL | $GET | one client avg/min/p50/p95/p99/max ms: $LAT | $LAST"
