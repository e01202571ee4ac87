"""SET throughput and latency of two checkouts, side by side in one run.

    python bench/before_after.py --before /tmp/before --after . [--rounds 5]
        [--targets] [--nodes N] [--scale X] [--only LABEL ...] [--keyspace N]
        [--before-flags FLAGS] [--after-flags FLAGS] [--scrape SECONDS]

Each checkout must be built in place (`python setup.py build_ext --inplace`
or `pip install -e .` there).  Every round starts a 3-node cluster of each
checkout in turn (the order alternates from round to round, so a machine
that slows down over the run does not favour one side), with `--fsync
always`, peers over Unix sockets and snapshots off, and drives its leader
with redis-benchmark at each load.  It prints every round, then the medians
and the after/before ratios of the medians; the server CPU per SET is the
CPU time of the three node processes over the run, divided by its SETs.  The machine is shared and
noisy: only ratios within one run mean anything.

--before-flags/--after-flags add `python -m raftfast.cluster` flags to one
side (the same tree with and without `--metrics`, say), and --scrape S
makes a side started with `--metrics` be scraped as Prometheus would: every
node's /metrics every S seconds while the load runs.
"""
import argparse
import csv
import io
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

# (label, redis-benchmark arguments): a pipelined many-client load and a
# single client waiting for each reply.
LOADS = [
    ("P16 c50", ["-P", "16", "-c", "50", "-n", "1000000"]),
    ("P1 c1", ["-P", "1", "-c", "1", "-n", "20000"]),
]
# --targets: the loads of the hot-path table (raftfast.bench compare
# --targets), each about five seconds long on this machine.
TARGET_LOADS = [
    ("64B P16 c50", ["-d", "64", "-P", "16", "-c", "50", "-n", "600000"]),
    ("64B P1 c50", ["-d", "64", "-P", "1", "-c", "50", "-n", "100000"]),
    ("64B P1 c1", ["-d", "64", "-P", "1", "-c", "1", "-n", "12000"]),
    ("4K P16 c50", ["-d", "4096", "-P", "16", "-c", "50", "-n", "200000"]),
    ("4K P1 c50", ["-d", "4096", "-P", "1", "-c", "50", "-n", "75000"]),
    ("64K P16 c50", ["-d", "65536", "-P", "16", "-c", "50", "-n", "8000"]),
]
LEADER_RE = re.compile(r"leader.*tcp://127\.0\.0\.1:(\d+)")


def start_cluster(tree, base_port, log, nodes=3, flags=()):
    """A cluster of the checkout in `tree`; returns (process, leader port)."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    proc = subprocess.Popen(
        [sys.executable, "-m", "raftfast.cluster", "--nodes", str(nodes), "--fsync", "always",
         "--base-port", str(base_port), "--snapshot-entries", "0", *flags],
        cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"cluster in {tree} exited with {proc.returncode}")
        log.flush()
        with open(log.name) as f:
            m = LEADER_RE.search(f.read())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.2)  # polling the launcher's output file for its table
    stop(proc)
    raise RuntimeError(f"no leader in {tree} within 60 s")


class Scraper(threading.Thread):
    """GET every node's /metrics (raftfast.cluster --metrics: node i on
    base-port + 200 + i) every `period` seconds until stopped; counts scrapes."""

    def __init__(self, base_port, nodes, period):
        super().__init__(daemon=True)
        self.urls = [f"http://127.0.0.1:{base_port + 200 + i}/metrics" for i in range(1, nodes + 1)]
        self.period = period
        self.halt = threading.Event()
        self.scrapes = 0

    def run(self):
        while not self.halt.wait(self.period):
            for url in self.urls:
                with urllib.request.urlopen(url, timeout=5) as r:
                    r.read()
                self.scrapes += 1


def stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def node_cpu_seconds(launcher):
    """CPU time (user + system) of every node process the launcher started."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for task in os.listdir(f"/proc/{launcher.pid}/task"):
        with open(f"/proc/{launcher.pid}/task/{task}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/stat") as st:
                        fields = st.read().rpartition(")")[2].split()
                except FileNotFoundError:
                    continue
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def redis_benchmark(launcher, port, args):
    """(requests/s, p50 ms, p99 ms, server CPU µs per SET) of one SET run."""
    n = int(args[args.index("-n") + 1])
    cpu = node_cpu_seconds(launcher)
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "--csv", *args],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    cpu = node_cpu_seconds(launcher) - cpu
    row = next(r for r in csv.DictReader(io.StringIO(out)) if r["test"] == "SET")
    return (float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"]),
            cpu * 1e6 / n)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--base-port", type=int, default=7650)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every load's request count (longer runs, less noise)")
    p.add_argument("--targets", action="store_true",
                   help="the six loads of the hot-path table instead of two")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--keyspace", type=int, default=0, metavar="N",
                   help="SETs to random keys among N (redis-benchmark -r), as the targets run "
                        "them; 0 (default): every SET to one key")
    p.add_argument("--only", nargs="+", metavar="LABEL",
                   help="these loads only (labels as printed, e.g. '64B P16 c50')")
    p.add_argument("--before-flags", default="", metavar="FLAGS",
                   help="more raftfast.cluster flags for the before side (one string)")
    p.add_argument("--after-flags", default="", metavar="FLAGS",
                   help="more raftfast.cluster flags for the after side, e.g. '--metrics'")
    p.add_argument("--scrape", type=float, default=0, metavar="SECONDS",
                   help="scrape a side run with --metrics every SECONDS (0: never)")
    ns = p.parse_args()
    flags = {"before": shlex.split(ns.before_flags), "after": shlex.split(ns.after_flags)}
    table = TARGET_LOADS if ns.targets else LOADS
    if ns.only:
        table = [(label, args) for label, args in table if label in ns.only]
    if ns.keyspace:
        table = [(label, args + ["-r", str(ns.keyspace)]) for label, args in table]
    loads = [(label, [str(int(int(a) * ns.scale)) if i and args[i - 1] == "-n" else a
                      for i, a in enumerate(args)]) for label, args in table]
    trees = {"before": ns.before, "after": ns.after}
    results = {(side, load): [] for side in trees for load, _ in table}
    for r in range(ns.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for side in order:
            with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
                proc, port = start_cluster(trees[side], ns.base_port, log, ns.nodes,
                                           flags[side])
                scraper = None
                if ns.scrape and "--metrics" in flags[side]:
                    scraper = Scraper(ns.base_port, ns.nodes, ns.scrape)
                    scraper.start()
                try:
                    for load, args in loads:
                        figs = redis_benchmark(proc, port, args)
                        results[(side, load)].append(figs)
                        print(f"round {r + 1} {side:6} {load:11} {figs[0]:>12,.0f} SET/s  "
                              f"p50 {figs[1]:.3f} ms  p99 {figs[2]:.3f} ms  "
                              f"CPU {figs[3]:.1f} µs/SET", flush=True)
                finally:
                    if scraper is not None:
                        scraper.halt.set()
                        scraper.join()
                        print(f"round {r + 1} {side:6} {scraper.scrapes} scrapes", flush=True)
                    stop(proc)
    print(f"\nmedians of {ns.rounds} rounds ({ns.nodes} nodes, fsync always, unix peers, "
          f"redis-benchmark -t set; before {' '.join(flags['before']) or 'no flags'}, "
          f"after {' '.join(flags['after']) or 'no flags'}):")
    for load, _ in table:
        med = {side: [statistics.median(x[i] for x in results[(side, load)]) for i in range(4)]
               for side in trees}
        b, a = med["before"], med["after"]
        print(f"{load:11} before {b[0]:>9,.0f} SET/s p50 {b[1]:.3f} p99 {b[2]:.3f} "
              f"CPU {b[3]:.1f} µs | after {a[0]:>9,.0f} SET/s p50 {a[1]:.3f} p99 {a[2]:.3f} "
              f"CPU {a[3]:.1f} µs | after/before: SET/s {a[0] / b[0]:.3f}, "
              f"p50 {a[1] / b[1]:.3f}, CPU/SET {a[3] / b[3]:.3f}")


if __name__ == "__main__":
    main()
