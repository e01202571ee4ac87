"""`python -m raftfast.bench compare --library`: the library side by side
with PySyncObj, each replicating the same Python state machine (a counter,
a dict) on three local processes, driven the same way: 64 callers in the
leader's own process, each waiting for its call's result before the next
(raftfast/bench/library_node.py).

raftfast runs with `--fsync always` (every entry on disk on a majority
before its caller hears back) unless told otherwise; PySyncObj keeps its
log in memory and never fsyncs, with the settings that were fastest for
this load in a sweep on this machine (docs/benchmarks.md): batched appends
every 2 ms and a tick thread period of 1 ms (its defaults, 100 ms and
50 ms, give 1,200 calls/s here; every call waits for a tick).
Systems alternate within each round, and the ratios come from the
medians of the rounds, so a noisy machine weighs on both alike.

Where redis-server and redis-benchmark are installed, each round also
measures a yardstick that is not a library: one redis-server, not
replicated, with appendfsync always, under the same number of clients each
waiting for its reply (`redis-benchmark -t set -c CALLERS -P 1`).  It shows
what one fsync per round of waiting callers allows on this machine at all.
"""
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import threading

from raftfast.bench import pysyncobj_tuning, redis_benchmark, redis_server
from raftfast.launcher.supervisor import NodeCommand, stop_processes

__all__ = ["run_library_comparison", "main"]

NODE_MODULE = "raftfast.bench.library_node"
PYSYNCOBJ_SETTINGS = {"appendEntriesUseBatch": True, "appendEntriesPeriod": 0.002,
                      "raftMinTimeout": 0.4, "raftMaxTimeout": 1.4, "commandsWaitLeader": False}
PYSYNCOBJ_TICK = 0.001


def pysyncobj_argv():
    argv = []
    for name, value in PYSYNCOBJ_SETTINGS.items():
        flag = pysyncobj_tuning.FLAGS[name]
        argv += [flag, ("yes" if value else "no") if isinstance(value, bool) else repr(value)]
    return argv + ["--auto-tick-period", repr(PYSYNCOBJ_TICK)]


def describe_pysyncobj():
    return ("PySyncObj " + ", ".join(f"{k}={v}" for k, v in PYSYNCOBJ_SETTINGS.items())
            + f", autoTickPeriod={PYSYNCOBJ_TICK}")


def run_one(system, machine, seconds, callers, fsync, base_port, nodes=3):
    """One measurement: start the nodes, wait for the leader's result line."""
    root = tempfile.mkdtemp(prefix="rflib")
    procs, result = [], {}
    try:
        for i in range(1, nodes + 1):
            argv = ["--system", system, "--machine", machine, "--id", str(i), "--nodes",
                    str(nodes), "--dir", root, "--base-port", str(base_port), "--seconds",
                    str(seconds), "--callers", str(callers), "--fsync", fsync]
            if system == "pysyncobj":
                argv += pysyncobj_argv()
            with open(os.path.join(root, f"n{i}.log"), "wb") as log:
                procs.append(NodeCommand.node(argv, module=NODE_MODULE).start(stderr=log))
        got = threading.Event()

        def read(p):
            for line in p.stdout:
                if line.startswith(b"{"):
                    result.update(json.loads(line))
                    got.set()

        readers = [threading.Thread(target=read, args=(p,), daemon=True) for p in procs]
        for t in readers:
            t.start()
        if not got.wait(seconds + 60):
            logs = "".join(open(os.path.join(root, f"n{i}.log")).read()[-800:]
                           for i in range(1, nodes + 1))
            raise RuntimeError(f"{system} {machine}: no result\n{logs}")
    finally:
        stop_processes(procs)
        for p in procs:
            p.stdout.close()
        shutil.rmtree(root, ignore_errors=True)
    return {"system": system, "machine": machine, "fsync": fsync if system == "raftfast"
            else "none (in memory)", "ops_per_s": result["ops"] / result["seconds"],
            "p50_us": result["latencies_us"][0], "p90_us": result["latencies_us"][1],
            "p99_us": result["latencies_us"][2]}


REDIS_SYSTEM = "redis (1 server)"
REDIS_MACHINE = "SET"


def redis_available():
    return bool(redis_server.redis_server_path() and redis_benchmark.binary_path())


def run_redis(seconds, callers):
    """The yardstick: one redis-server with appendfsync always, `callers`
    redis-benchmark clients each waiting for its reply."""
    async def measure():
        async with redis_server.RedisServer() as server:
            result, _, _ = await redis_benchmark.run_point(server.url, seconds, callers, 1, 8)
            return result

    result = asyncio.run(measure())
    lat = result.latency_ms()
    return {"system": REDIS_SYSTEM, "machine": REDIS_MACHINE,
            "fsync": "appendfsync always, not replicated", "ops_per_s": result.throughput,
            "p50_us": lat["p50"] * 1000, "p90_us": None, "p99_us": lat["p99"] * 1000}


def run_library_comparison(seconds=5.0, rounds=3, callers=64, fsync="always", base_port=7000,
                           machines=("counter", "dict"), progress=print, with_redis=None):
    """Rows of medians over `rounds`, systems alternating within a round;
    the Redis yardstick too when `with_redis` (default: when installed)."""
    if with_redis is None:
        with_redis = redis_available()
    runs = {}
    for r in range(rounds):
        order = ("raftfast", "pysyncobj") if r % 2 == 0 else ("pysyncobj", "raftfast")
        for machine in machines:
            for system in order:
                row = run_one(system, machine, seconds, callers, fsync, base_port)
                progress(f"round {r + 1}: {system} {machine}: {row['ops_per_s']:,.0f} calls/s, "
                         f"p50 {row['p50_us']:,.0f} us, p99 {row['p99_us']:,.0f} us")
                runs.setdefault((system, machine), []).append(row)
        if with_redis:
            row = run_redis(seconds, callers)
            progress(f"round {r + 1}: {REDIS_SYSTEM}: {row['ops_per_s']:,.0f} SET/s, "
                     f"p50 {row['p50_us']:,.0f} us, p99 {row['p99_us']:,.0f} us")
            runs.setdefault((REDIS_SYSTEM, REDIS_MACHINE), []).append(row)
    rows = []
    for (system, machine), rs in runs.items():
        row = dict(rs[0])
        for k in ("ops_per_s", "p50_us", "p90_us", "p99_us"):
            if row[k] is not None:
                row[k] = statistics.median(r[k] for r in rs)
        row["rounds"] = len(rs)
        rows.append(row)
    by = {(r["system"], r["machine"]): r for r in rows}
    redis_row = by.get((REDIS_SYSTEM, REDIS_MACHINE))
    for machine in machines:
        ours, theirs = by[("raftfast", machine)], by[("pysyncobj", machine)]
        ours["vs_pysyncobj"] = ours["ops_per_s"] / theirs["ops_per_s"]
        if redis_row is not None:
            for row in (ours, theirs):
                row["vs_redis"] = row["ops_per_s"] / redis_row["ops_per_s"]
    return rows


def _us(v):
    return "" if v is None else f"{v:,.0f}"


def main(ns):
    from rich.console import Console
    from rich.table import Table
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a file or a pipe: room for every column
    seconds = ns.seconds or 5.0
    console.print(f"library comparison: 3 nodes, {ns.callers} callers in the leader's process, "
                  f"{seconds:g} s per run, {ns.rounds} round(s); raftfast --fsync {ns.fsync} "
                  f"over Unix sockets; PySyncObj over TCP on loopback, "
                  f"{describe_pysyncobj()}")
    if redis_available():
        console.print(f"yardstick: one redis-server ({redis_server.SETTINGS_NOTE}), not "
                      f"replicated, redis-benchmark -t set -c {ns.callers} -P 1 -d 8")
    else:
        console.print("no redis-server or redis-benchmark here: no Redis yardstick")
    rows = run_library_comparison(seconds, ns.rounds, ns.callers, ns.fsync, ns.base_port,
                                  progress=console.print)
    t = Table(title=f"Python state machines, median of {ns.rounds}")
    for col in ("system", "machine", "fsync", "calls/s", "p50 us", "p90 us", "p99 us",
                "raftfast / PySyncObj", "/ Redis"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["system"], r["machine"], r["fsync"], f"{r['ops_per_s']:,.0f}",
                  _us(r["p50_us"]), _us(r["p90_us"]), _us(r["p99_us"]),
                  f"{r['vs_pysyncobj']:.1f}x" if "vs_pysyncobj" in r else "",
                  f"{r['vs_redis']:.2f}x" if "vs_redis" in r else "")
    console.print(t)
    os.makedirs(ns.out, exist_ok=True)
    path = os.path.join(ns.out, "library.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    console.print(f"wrote {path}")
    return 0
