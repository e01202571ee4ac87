#!/bin/bash
# SET throughput of the checkout in DIR on a 3-node cluster (fsync always,
# peers over Unix sockets, snapshots off), with redis-benchmark: 1,000,000
# SETs, 50 clients x pipeline 16.  For a before/after check of the hot path,
# build the older commit in a worktree and alternate the two:
#
#   git worktree add /tmp/before REV && (cd /tmp/before && python setup.py build_ext --inplace -q)
#   for r in 1 2 3; do bench/set_throughput.sh /tmp/before before; bench/set_throughput.sh . after; done
set -e
DIR=$1; LABEL=$2
cd "$DIR"
PORT=${RAFTFAST_BENCH_BASE_PORT:-7650}
OUT=$(mktemp)
python -m raftfast.cluster --nodes 3 --fsync always --base-port "$PORT" --snapshot-entries 0 > "$OUT" 2>&1 &
CPID=$!
trap 'kill $CPID 2>/dev/null; wait $CPID 2>/dev/null; rm -f "$OUT"' EXIT
for _ in $(seq 60); do grep -q leader "$OUT" && break; sleep 0.5; done
LPORT=$(grep leader "$OUT" | awk '{print $5}' | sed 's/.*://')
SET=$(redis-benchmark -p "$LPORT" -t set -n 1000000 -P 16 -c 50 -q 2>&1 | tr '\r' '\n' | grep -v "rps=" | grep . | tail -1)
echo "$LABEL | $SET"
