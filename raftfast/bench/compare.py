"""`python -m raftfast.bench compare`: sweep cluster configurations, and for
each run the load at one or more levels; print a table, write CSV, JSON and
PNG plots.  Every point starts its own cluster (one at a time), and a
configuration with several load levels traces a latency/throughput curve.

`--against pysyncobj` adds PySyncObj (raftfast/bench/pysyncobj_node.py: one node per
process on loopback, a replicated dict behind a RESP front) driven by the
same load generator from this process, at the same loads and node counts.
`--against redis` adds one redis-server with appendfsync always
(raftfast/bench/redis_server.py) at every load of the sweep, and every
raftfast row gets its ratios to Redis's row at the same load and value size
(throughput, p50, p99, server CPU per op).

A load is (clients, pipeline, rate, value size).  `--targets` is the grid
of the Redis comparison: 3 and 5 nodes, fsync always, Unix-socket peers, at
the loads and value sizes of TARGET_LOADS, and Redis at each of them.  The
other grids run every load at every size of `--value-sizes`.
`--loadgen redis-benchmark` drives every point with that binary instead of
the built-in generator (raftfast/bench/redis_benchmark.py); `--rounds K`
runs the whole sweep K times and reports the medians (raftfast/bench/rounds.py).
The physical floor of the machine (raftfast/bench/floor.py) is measured
once before the sweep and printed above the table.
"""
import asyncio
import datetime
import itertools
import os
import platform
import subprocess

import uvloop

from raftfast.bench import floor as bench_floor
from raftfast.bench import pysyncobj_tuning
from raftfast.bench import redis_server
from raftfast.bench import report as bench_report
from raftfast.bench import rounds as bench_rounds
from raftfast.bench.measure import Target, measure
from raftfast.config import Config
from raftfast.launcher.cli import build_parser as build_cluster_parser
from raftfast.launcher.layout import NodeSpec
from raftfast.launcher.local_cluster import ClusterError, LocalCluster, NodeGroup
from raftfast.launcher.supervisor import spawn

# (clients, pipeline, rate): the load levels.
SATURATE = ((50, 16, None),)
LADDER = ((1, 1, None), (8, 1, None), (50, 1, None), (50, 16, None))
# The Redis comparison's loads: (clients, pipeline, rate, value size).
TARGET_LOADS = ((50, 16, None, 64), (50, 1, None, 64), (1, 1, None, 64),
                (50, 16, None, 4096), (50, 1, None, 4096), (50, 16, None, 65536))
PYSYNCOBJ_NODE = "raftfast.bench.pysyncobj_node"
START_COST = 3.0  # seconds to start, elect and stop a cluster, for the estimate


def _default(name):
    return Config.__dataclass_fields__[name].default


def grid(name):
    """[(cluster flags as a dict, loads)] of the quick, full or targets grid.
    The targets grid's loads carry their value size; the others' loads are
    (clients, pipeline, rate) until with_value_sizes gives them theirs."""
    base = dict(nodes=3, transport="unix", fsync="always",
                max_batch_entries=_default("max_batch_entries"),
                batch_linger_us=_default("batch_linger_us"),
                max_inflight=_default("max_inflight"))
    if name == "targets":
        return [(dict(base, nodes=n), TARGET_LOADS) for n in (3, 5)]
    if name == "quick":
        points = [(base, LADDER), (dict(base, fsync="never"), LADDER)]
        points += [(dict(base, max_batch_entries=b), SATURATE) for b in (1, 16, 256)]
        points += [(dict(base, **kw), SATURATE) for kw in (
            dict(batch_linger_us=200), dict(max_inflight=1), dict(transport="tcp"),
            dict(nodes=5))]
        return points
    points = []
    for nodes, transport, fsync, batch, linger, inflight in itertools.product(
            (3, 5), ("unix", "tcp"), ("always", "never"), (16, 256, 1024, 4096),
            (0, 200), (4, 64)):
        p = dict(nodes=nodes, transport=transport, fsync=fsync, max_batch_entries=batch,
                 batch_linger_us=linger, max_inflight=inflight)
        at_defaults = (batch, linger, inflight) == (base["max_batch_entries"],
                                                    base["batch_linger_us"],
                                                    base["max_inflight"])
        points.append((p, LADDER if at_defaults else SATURATE))
    return points


def with_value_sizes(points, sizes):
    """Every (clients, pipeline, rate) load at every value size; a load that
    already has its size keeps it."""
    out = []
    for p, loads in points:
        sized = []
        for load in loads:
            sized += [load] if len(load) == 4 else [tuple(load) + (v,) for v in sizes]
        out.append((p, tuple(sized)))
    return out


def pysyncobj_points(points):
    """PySyncObj at every node count of the sweep, with the loads of the
    configurations that trace curves there: one cluster per node count and
    settings (pysyncobj_tuning), each with the loads those settings suit."""
    out = {}
    for p, loads in points:
        for load in loads:
            profile = pysyncobj_tuning.profile_for(load[0], load[1])
            out.setdefault((p["nodes"], profile), set()).add(load)
    return [(dict(nodes=n, transport="tcp", fsync=None, max_batch_entries=None,
                  batch_linger_us=None, max_inflight=None, pysyncobj_profile=profile,
                  note=pysyncobj_tuning.describe(profile)),
             tuple(sorted(loads, key=redis_server.load_order)))
            for (n, profile), loads in sorted(out.items())]


def cluster_namespace(p, base_port):
    argv = ["--nodes", str(p["nodes"]), "--transport", p["transport"],
            "--base-port", str(base_port), "--fsync", p["fsync"],
            "--max-batch-entries", str(p["max_batch_entries"]),
            "--batch-linger-us", str(p["batch_linger_us"]),
            "--max-inflight", str(p["max_inflight"])]
    return build_cluster_parser().parse_args(argv)


class PySyncObjCluster(NodeGroup):
    """N raftfast.bench.pysyncobj_node processes on loopback, like LocalCluster."""

    label = "pysyncobj node"

    def __init__(self, nodes, base_port, leader_wait=30.0, settings=()):
        super().__init__(leader_wait)
        self.n, self.base, self.settings = nodes, base_port, list(settings)

    async def start_nodes(self):
        for i in range(1, self.n + 1):
            argv = ["--id", str(i), "--nodes", str(self.n), "--base-port", str(self.base),
                    *self.settings]
            spec = NodeSpec(i, None, None, f"tcp://127.0.0.1:{self.base + i}", argv)
            self.nodes.append(await spawn(spec, os.devnull, module=PYSYNCOBJ_NODE))


def meta(ns, seconds, floors=None):
    def git_commit():
        try:
            return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True, cwd=os.path.dirname(__file__), timeout=5
                                  ).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       None)
    except OSError:
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "grid": ns.grid, "seconds_per_point": seconds, "value_sizes": value_sizes(ns),
            "loadgen": ns.loadgen, "rounds": ns.rounds, "against": ns.against,
            "floor": floors or {}, "commit": git_commit(), "python": platform.python_version(),
            "machine": {"cpus": os.cpu_count(), "cpu": cpu, "platform": platform.platform()}}


def skipped_rows(p, system, loads, note):
    rows = []
    for clients, pipeline, rate, value_size in loads:
        row = dict.fromkeys(bench_report.COLUMNS)
        row.update({k: v for k, v in p.items() if k in row}, system=system, clients=clients,
                   pipeline=pipeline, rate=rate, value_size=value_size, note=note)
        rows.append(row)
    return rows


def open_system(system, p, ns):
    if system == "raftfast":
        return LocalCluster(cluster_namespace(p, ns.base_port))
    if system == "redis":
        return redis_server.RedisServer()
    profile = p.get("pysyncobj_profile")
    return PySyncObjCluster(p["nodes"], ns.base_port,
                            settings=pysyncobj_tuning.node_argv(profile) if profile else ())


async def measure_load(system, c, seconds, clients, pipeline, value_size, rate,
                       loadgen_name="python"):
    if system == "redis":
        return await redis_server.measure_redis(c, seconds, clients, pipeline, value_size,
                                                rate, loadgen_name)
    return await measure(Target.of_cluster(c), seconds, clients, pipeline, value_size, rate,
                         loadgen_name=loadgen_name)


async def sweep(points, ns, seconds, progress, task):
    rows = []
    for p, loads in points:
        system = p.get("system") or ("raftfast" if p["fsync"] else "pysyncobj")
        label = bench_report.config_label(dict(p, system=system))
        if system == "redis" and not redis_server.redis_server_path():
            rows += skipped_rows(p, system, loads, "skipped: redis-server not installed")
            progress.advance(task, len(loads))
            continue
        done = 0
        progress.update(task, description=f"{system} {label}: starting")
        try:
            async with open_system(system, p, ns) as c:
                for clients, pipeline, rate, value_size in loads:
                    progress.update(task, description=f"{system} {label}: {clients}x"
                                                      f"{pipeline} {value_size} B")
                    result, figs = await measure_load(system, c, seconds, clients, pipeline,
                                                      value_size, rate, ns.loadgen)
                    settings = dict(p, transport="tcp") if system == "pysyncobj" else p
                    note = redis_server.SETTINGS_NOTE if system == "redis" else \
                        p.get("note") or ""
                    rows.append(bench_report.make_row(system, settings, result, figs, note,
                                                      ns.loadgen))
                    done += 1
                    progress.advance(task)
        except (ClusterError, OSError, ValueError, asyncio.TimeoutError) as e:
            progress.console.print(f"[red]{system} {label}: {e}[/red]")
            rows += skipped_rows(
                p, system, loads[done:],
                f"failed: {(str(e) or type(e).__name__).splitlines()[0][:60]}")
            progress.advance(task, len(loads) - done)
    return rows


def value_sizes(ns):
    """The sizes every load runs at (the targets grid's loads carry theirs)."""
    return ns.value_sizes or [ns.value_size]


def build_points(ns):
    points = with_value_sizes(grid(ns.grid), value_sizes(ns))
    if "pysyncobj" in ns.against:
        points += pysyncobj_points(points)
    if "redis" in ns.against:
        points += redis_server.redis_points(points)
    return points


def floor_sizes(points):
    """The value sizes of the one-client loads (the smallest size if none):
    the floor is measured at each."""
    ones = {load[3] for _, loads in points for load in loads if load[:2] == (1, 1)}
    return sorted(ones) or [min(load[3] for _, loads in points for load in loads)]


def add_floor(rows, floors):
    """Every one-client closed-loop raftfast row's p50 above the floor
    measured at its value size (`over_floor_ms`), under fsync always: the
    floor is that of a majority of three fsyncs, so it bounds neither Redis
    (one fsync) nor a run without fsync.  floors is {value size: floor dict}."""
    for r in rows:
        f = floors.get(r.get("value_size"))
        if (f and r.get("system") == "raftfast" and r.get("fsync") == "always"
                and (r.get("clients"), r.get("pipeline")) == (1, 1)
                and r.get("p50_ms") is not None):
            r["over_floor_ms"] = round(r["p50_ms"] - f["one_client_ms"], 3)
    return rows


async def run_rounds(points, ns, seconds, progress, task):
    """The sweep ns.rounds times: a list of rounds, each a list of rows."""
    out = []
    for k in range(ns.rounds):
        if ns.rounds > 1:
            progress.console.print(f"round {k + 1} of {ns.rounds}")
        out.append(await sweep(points, ns, seconds, progress, task))
    return out


def main(ns):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    seconds = ns.seconds or (2.0 if ns.grid in ("quick", "targets") else 5.0)
    points = build_points(ns)
    runs = sum(len(loads) for _, loads in points) * ns.rounds
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or a pipe: room for every column
    # + warm-up (or calibration), + starting each configuration
    estimate = (runs * (seconds + min(seconds / 4, 1.0))
                + len(points) * ns.rounds * START_COST)
    console.print(f"{ns.grid} grid: {len(points)} configurations, {runs} runs of {seconds:g} s "
                  f"({ns.rounds} round{'s' if ns.rounds > 1 else ''}, load from {ns.loadgen}; "
                  f"about {estimate / 60:.0f} min); results in {os.path.abspath(ns.out)}")
    os.makedirs(ns.out, exist_ok=True)
    floors = {v: bench_floor.measure_floor(v) for v in floor_sizes(points)}
    for f in floors.values():
        console.print(bench_floor.format_floor(f))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("starting", total=runs)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            rounds = runner.run(run_rounds(points, ns, seconds, progress, task))
    rows = bench_rounds.median_rows(rounds) if ns.rounds > 1 else rounds[0]
    redis_server.add_redis_ratios(rows)
    add_floor(rows, floors)
    sizes = sorted({r["value_size"] for r in rows if r.get("value_size") is not None})
    of = f"median of {ns.rounds}, " if ns.rounds > 1 else ""
    for f in floors.values():
        console.print(bench_floor.format_floor(f))
    console.print(bench_report.make_table(
        rows, title=f"raftfast bench compare ({ns.grid}, {of}{seconds:g} s per point, load "
                    f"from {ns.loadgen}, SET values of "
                    f"{', '.join(map(bench_report.size_label, sizes))})"))
    for line in bench_report.comparison_lines(rows):
        console.print(line)
    out = [bench_report.write_csv(rows, os.path.join(ns.out, "results.csv")),
           bench_report.write_json(rows, meta(ns, seconds, {str(v): f for v, f in
                                                           floors.items()}),
                                   os.path.join(ns.out, "results.json")),
           bench_report.plot_throughput_vs_batch(
               rows, os.path.join(ns.out, "throughput_vs_batch.png")),
           bench_report.plot_latency_vs_throughput(
               rows, os.path.join(ns.out, "latency_vs_throughput.png"))]
    if "redis" in ns.against:
        out.append(bench_report.plot_ratio_to_redis(
            rows, os.path.join(ns.out, "ratio_to_redis.png")))
    console.print("wrote " + ", ".join(out))
    return 0 if any(r["throughput"] for r in rows) else 1
