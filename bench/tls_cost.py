"""What TLS costs on the hot path: a 3-node cluster with peers over plain
TCP (loopback) and clients over plain TCP, against the same cluster with
`--tls` (mutual TLS between peers, TLS on the client port), in turns, in
one run, under `redis-benchmark -t set` (with `--tls` and the cluster's
client certificate for the second).  Both run with the cluster secret
(`raftfast.cluster` always makes one): its cost is one HMAC per connection,
at the handshake, and none per message.  Printed per load and setup:
SET/s, p50, p99 and the CPU per SET of the three node processes.

    python -m bench.tls_cost [--rounds R] [--fsync always|never]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from bench.python_replication_floor import _Processes
from raftfast.bench.redis_benchmark import parse_csv
from raftfast.bench.stats import proc_cpu_times

LOADS = (("-P", "16", "-c", "50"), ("-P", "1", "-c", "1"))


def start(procs, directory, base_port, tls, fsync):
    """A 3-node cluster; (the leader's client port, node PIDs, redis-benchmark's TLS flags)."""
    argv = [sys.executable, "-m", "raftfast.cluster", "--nodes", "3", "--transport", "tcp",
            "--fsync", fsync, "--base-port", str(base_port), "--snapshot-entries", "0",
            "--data-dir", directory]
    if tls:
        argv = [a for a in argv if a not in ("--transport", "tcp")] + ["--tls"]
    cluster = procs.start(argv, ready_line=False)
    port = None
    while True:
        line = cluster.stdout.readline()
        if not line:
            raise RuntimeError("the cluster exited before it served")
        fields = line.split()
        if " leader " in f" {line} ":
            port = int(next(f for f in fields if "://" in f).rsplit(":", 1)[1])
        if line.startswith("serving"):
            break
    children = open(f"/proc/{cluster.pid}/task/{cluster.pid}/children").read().split()
    flags = []
    if tls:
        d = os.path.join(directory, "tls")
        flags = ["--tls", "--cacert", f"{d}/ca.crt", "--cert", f"{d}/client.crt",
                 "--key", f"{d}/client.key"]
    return port, [int(p) for p in children], flags


def measure(port, pids, flags, load, requests):
    before = [proc_cpu_times(p) for p in pids]
    out = subprocess.run(["redis-benchmark", "-p", str(port), *flags, "-t", "set", "-r",
                          "1000000", "-d", "64", *load, "-n", str(requests), "--csv"],
                         check=True, capture_output=True, text=True).stdout
    after = [proc_cpu_times(p) for p in pids]
    figs = parse_csv(out)
    cpu = sum(a[0] + a[1] - b[0] - b[1] for a, b in zip(after, before)) * 1e6 / requests
    return figs.rps, figs.p50, figs.p99, cpu


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fsync", choices=("always", "never"), default="always")
    ap.add_argument("--base-port", type=int, default=7400)
    ns = ap.parse_args(argv)
    if not shutil.which("redis-benchmark"):
        print("redis-benchmark is not installed", file=sys.stderr)
        return 1
    setups = (("plain TCP", False, ns.base_port), ("TLS", True, ns.base_port + 200))
    results = {}
    with tempfile.TemporaryDirectory() as top:
        procs = _Processes()
        try:
            started = []
            for name, tls, port in setups:
                d = os.path.join(top, "tls" if tls else "plain")
                started.append((name, *start(procs, d, port, tls, ns.fsync)))
            for load in LOADS:
                n = 100_000 if load[1] == "16" else 3_000
                for name, port, pids, flags in started:  # warm-up
                    measure(port, pids, flags, load, n // 10)
                for _ in range(ns.rounds):
                    for name, port, pids, flags in started:
                        results.setdefault((name, load), []).append(
                            measure(port, pids, flags, load, n))
        finally:
            procs.close()
    print(f"3 nodes, --fsync {ns.fsync}, 64 B SETs, {ns.rounds} rounds in turns, medians; "
          "CPU is the three nodes' user + kernel")
    print(f"{'setup':10} {'load':12} {'SET/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>8}")
    for load in LOADS:
        for name, _, _ in setups:
            med = [statistics.median(r[k] for r in results[(name, load)]) for k in range(4)]
            print(f"{name:10} {' '.join(load):12} {med[0]:>9,.0f} {med[1]:>7.3f} {med[2]:>7.3f} "
                  f"{med[3]:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
