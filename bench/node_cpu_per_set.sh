#!/bin/bash
# SET/s, p50, p99 and the node processes' CPU per SET of the checkout in DIR:
# a 3-node cluster (peers over Unix sockets, snapshots off) driven by
# redis-benchmark, the CPU counted by `perf stat -e task-clock` over the
# three node processes for the run, and their context switches.
#
#   FSYNC=never|always N=6000 ARGS="-P 1 -c 1" bench/node_cpu_per_set.sh DIR
#
# NODE_ARGS adds flags to the cluster's nodes (say "--max-inflight-bytes 4194304").
#
# For a before/after check, alternate two built checkouts in one run:
#   for r in 1 2 3; do bench/node_cpu_per_set.sh /tmp/before; bench/node_cpu_per_set.sh .; done
set -e
DIR=$1; N=${N:-6000}; PORT=${RAFTFAST_BENCH_BASE_PORT:-7770}
cd "$DIR"
OUT=$(mktemp)
python -m raftfast.cluster --nodes 3 --fsync "${FSYNC:-never}" --base-port "$PORT" \
    --snapshot-entries 0 ${NODE_ARGS:-} > "$OUT" 2>&1 &
CPID=$!
trap 'kill -INT $CPID 2>/dev/null; wait $CPID 2>/dev/null; rm -f "$OUT"' EXIT
for _ in $(seq 60); do grep -q leader "$OUT" && break; sleep 0.5; done
LPORT=$(grep leader "$OUT" | grep -o "127.0.0.1:[0-9]*" | cut -d: -f2)
PIDS=$(cat /proc/$CPID/task/*/children | tr ' ' '\n' | grep . | paste -sd,)
redis-benchmark -p "$LPORT" -t set -n 1000 ${ARGS:--P 1 -c 1} -q > /dev/null 2>&1  # warm-up
perf stat -x, -e task-clock,context-switches -p "$PIDS" -- \
    redis-benchmark -p "$LPORT" -t set -n "$N" ${ARGS:--P 1 -c 1} --csv 2>&1 \
    | awk -F, -v n="$N" '
        /task-clock/ {printf "node CPU per SET %.1f us  ", $1*1000/n}
        /context-switches/ {printf "switches per SET %.2f  ", $1/n}
        /^"SET"/ {gsub(/"/, ""); printf "SET/s %.0f p50 %s ms p99 %s ms max %s ms  ", $2, $5, $7, $8}'
echo "($DIR, fsync ${FSYNC:-never}, ${ARGS:--P 1 -c 1}${NODE_ARGS:+, $NODE_ARGS})"
