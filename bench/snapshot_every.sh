#!/bin/bash
# SET throughput with snapshots every N applied entries, on a 3-node cluster
# (fsync always, peers over Unix sockets), with redis-benchmark: 2,000,000
# SETs of 16-byte values over up to 1,000,000 random keys (so the state grows
# to ~860,000 keys and each snapshot is ~35 MB), 50 clients x pipeline 16.
#
#   bench/snapshot_every.sh N [node flags]       e.g.  bench/snapshot_every.sh 100000
#
# Prints: N | SET/s | snapshots taken and compactions on the leader | its first log index.
set -e
N=$1; shift
PORT=${RAFTFAST_BENCH_BASE_PORT:-7600}
OUT=$(mktemp)
python -m raftfast.cluster --nodes 3 --fsync always --base-port "$PORT" \
    --snapshot-entries "$N" "$@" > "$OUT" 2>&1 &
CPID=$!
trap 'kill $CPID 2>/dev/null; wait $CPID 2>/dev/null; rm -f "$OUT"' EXIT
for _ in $(seq 60); do grep -q leader "$OUT" && break; sleep 0.5; done
LPORT=$(grep leader "$OUT" | awk '{print $5}' | sed 's/.*://')
SET=$(redis-benchmark -p "$LPORT" -t set -n 2000000 -r 1000000 -P 16 -c 50 -d 16 -q 2>&1 | tr '\r' '\n' | grep -v "rps=" | grep . | tail -1)
STATS=$(redis-cli -p "$LPORT" info stats | grep -E "snapshots_taken|compactions" | tr -d '\r' | tr '\n' ' ')
FIRST=$(redis-cli -p "$LPORT" info raft | grep first_log_index | tr -d '\r')
echo "$N | $SET | $STATS| $FIRST"
