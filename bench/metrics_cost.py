"""What the metrics cost a node (not a test, not a benchmark suite): one
latency histogram update, timed in-process, and one scrape of a running
leader's /metrics, as that leader's CPU seconds (from /proc) over many
scrapes less what it spends idle.  Prints both.

    python -m bench.metrics_cost [--scrapes 1000] [--base-port 7600]
"""
import argparse
import os
import subprocess
import sys
import time
import timeit
import urllib.request

from raftfast.runtime.latency import FSYNC_BUCKETS, LatencyHistogram


def observe_ns():
    h = LatencyHistogram(FSYNC_BUCKETS)
    n = 1_000_000
    best = min(timeit.repeat(lambda: h.observe(0.0003), number=n, repeat=5))
    return best / n * 1e9


def process_cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape_cost(scrapes, base_port):
    """(bytes of one scrape, CPU seconds of the leader per scrape)."""
    cluster = subprocess.Popen(
        [sys.executable, "-m", "raftfast.cluster", "--nodes", "3", "--metrics",
         "--base-port", str(base_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rows = []
        for line in cluster.stdout:
            if line.startswith("serving"):
                break
            rows.append(line.split())
        else:
            raise SystemExit("the cluster did not start:\n" + "\n".join(map(" ".join, rows)))
        # The table: id, pid, role, term, client, metrics.
        leader = next(r for r in rows if len(r) == 6 and r[2] == "leader")
        pid, url = int(leader[1]), leader[5]
        before = process_cpu_s(pid)
        time.sleep(5)
        idle_per_s = (process_cpu_s(pid) - before) / 5
        size = len(urllib.request.urlopen(url).read())
        started, before = time.monotonic(), process_cpu_s(pid)
        for _ in range(scrapes):
            urllib.request.urlopen(url).read()
        spent = process_cpu_s(pid) - before - idle_per_s * (time.monotonic() - started)
        return size, spent / scrapes
    finally:
        cluster.terminate()
        cluster.wait(30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scrapes", type=int, default=1000)
    ap.add_argument("--base-port", type=int, default=7600)
    args = ap.parse_args()
    print(f"histogram update: {observe_ns():.0f} ns (best of 5 x 1M)")
    size, cpu = scrape_cost(args.scrapes, args.base_port)
    print(f"scrape of a 3-node cluster's leader ({size} bytes): {cpu * 1000:.2f} ms of its CPU "
          f"(mean of {args.scrapes}, idle CPU subtracted)")


if __name__ == "__main__":
    main()
