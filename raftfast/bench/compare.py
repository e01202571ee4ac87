"""`python -m raftfast.bench compare`: sweep cluster configurations, and for
each run the load at one or more levels; print a table, write CSV, JSON and
PNG plots.  Every point starts its own cluster (one at a time), and a
configuration with several load levels traces a latency/throughput curve.

`--against pysyncobj` adds PySyncObj (raftfast/bench/pysyncobj_node.py: one node per
process on loopback, a replicated dict behind a RESP front) driven by the
same load generator from this process, at the same loads and node counts.
`--against redis` adds one redis-server with appendfsync always
(raftfast/bench/redis_server.py) at every load of the sweep, and every
raftfast row gets its throughput ratio to Redis's row at the same load.
"""
import asyncio
import datetime
import itertools
import os
import platform
import subprocess

import uvloop

from raftfast.bench import redis_server
from raftfast.bench import report as bench_report
from raftfast.bench.measure import Target, measure
from raftfast.config import Config
from raftfast.launcher.cli import build_parser as build_cluster_parser
from raftfast.launcher.layout import NodeSpec
from raftfast.launcher.local_cluster import ClusterError, LocalCluster, NodeGroup
from raftfast.launcher.supervisor import spawn

# (clients, pipeline, rate): the load levels.
SATURATE = ((50, 16, None),)
LADDER = ((1, 1, None), (8, 1, None), (50, 1, None), (50, 16, None))
PYSYNCOBJ_NODE = "raftfast.bench.pysyncobj_node"
START_COST = 3.0  # seconds to start, elect and stop a cluster, for the estimate


def _default(name):
    return Config.__dataclass_fields__[name].default


def grid(name):
    """[(cluster flags as a dict, loads)] of the quick or the full grid."""
    base = dict(nodes=3, transport="unix", fsync="always",
                max_batch_entries=_default("max_batch_entries"),
                batch_linger_us=_default("batch_linger_us"),
                max_inflight=_default("max_inflight"))
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


def pysyncobj_points(points):
    """PySyncObj at every node count of the sweep, with the loads of the
    configurations that trace curves there."""
    out = {}
    for p, loads in points:
        out.setdefault(p["nodes"], set()).update(loads)
    return [(dict(nodes=n, transport="tcp", fsync=None, max_batch_entries=None,
                  batch_linger_us=None, max_inflight=None),
             tuple(sorted(loads, key=lambda x: (x[0] * x[1], x[0]))))
            for n, loads in sorted(out.items())]


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

    def __init__(self, nodes, base_port, leader_wait=30.0):
        super().__init__(leader_wait)
        self.n, self.base = nodes, base_port

    async def start_nodes(self):
        for i in range(1, self.n + 1):
            argv = ["--id", str(i), "--nodes", str(self.n), "--base-port", str(self.base)]
            spec = NodeSpec(i, None, None, f"tcp://127.0.0.1:{self.base + i}", argv)
            self.nodes.append(await spawn(spec, os.devnull, module=PYSYNCOBJ_NODE))


def meta(ns, seconds):
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
            "grid": ns.grid, "seconds_per_point": seconds, "value_size": ns.value_size,
            "against": ns.against, "commit": git_commit(), "python": platform.python_version(),
            "machine": {"cpus": os.cpu_count(), "cpu": cpu, "platform": platform.platform()}}


def skipped_rows(p, system, loads, note):
    rows = []
    for clients, pipeline, rate in loads:
        row = dict.fromkeys(bench_report.COLUMNS)
        row.update({k: v for k, v in p.items() if k in row}, system=system, clients=clients,
                   pipeline=pipeline, rate=rate, note=note)
        rows.append(row)
    return rows


def open_system(system, p, ns):
    if system == "raftfast":
        return LocalCluster(cluster_namespace(p, ns.base_port))
    if system == "redis":
        return redis_server.RedisServer()
    return PySyncObjCluster(p["nodes"], ns.base_port)


async def measure_load(system, c, seconds, clients, pipeline, value_size, rate):
    if system == "redis":
        return await redis_server.measure_redis(c, seconds, clients, pipeline, value_size,
                                                rate)
    return await measure(Target.of_cluster(c), seconds, clients, pipeline, value_size, rate)


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
                for clients, pipeline, rate in loads:
                    progress.update(task, description=f"{system} {label}: "
                                                      f"{clients}x{pipeline}")
                    result, figs = await measure_load(system, c, seconds, clients, pipeline,
                                                      ns.value_size, rate)
                    settings = dict(p, transport="tcp") if system == "pysyncobj" else p
                    note = redis_server.SETTINGS_NOTE if system == "redis" else ""
                    rows.append(bench_report.make_row(system, settings, result, figs, note))
                    done += 1
                    progress.advance(task)
        except (ClusterError, OSError, asyncio.TimeoutError) as e:
            progress.console.print(f"[red]{system} {label}: {e}[/red]")
            rows += skipped_rows(
                p, system, loads[done:],
                f"failed: {(str(e) or type(e).__name__).splitlines()[0][:60]}")
            progress.advance(task, len(loads) - done)
    return rows


def main(ns):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    seconds = ns.seconds or (2.0 if ns.grid == "quick" else 5.0)
    points = grid(ns.grid)
    if "pysyncobj" in ns.against:
        points += pysyncobj_points(points)
    if "redis" in ns.against:
        points += redis_server.redis_points(points)
    runs = sum(len(loads) for _, loads in points)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a file or a pipe: room for every column
    estimate = runs * (seconds + min(seconds / 4, 1.0)) + len(points) * START_COST  # + warm-up
    console.print(f"{ns.grid} grid: {len(points)} configurations, {runs} runs of {seconds:g} s "
                  f"(about {estimate / 60:.0f} min); results in {os.path.abspath(ns.out)}")
    os.makedirs(ns.out, exist_ok=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("starting", total=runs)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            rows = runner.run(sweep(points, ns, seconds, progress, task))
    redis_server.add_redis_ratios(rows)
    console.print(bench_report.make_table(
        rows, title=f"raftfast bench compare ({ns.grid}, {seconds:g} s per point, "
                    f"SET {ns.value_size} B values)"))
    for line in bench_report.comparison_lines(rows):
        console.print(line)
    out = [bench_report.write_csv(rows, os.path.join(ns.out, "results.csv")),
           bench_report.write_json(rows, meta(ns, seconds),
                                   os.path.join(ns.out, "results.json")),
           bench_report.plot_throughput_vs_batch(
               rows, os.path.join(ns.out, "throughput_vs_batch.png")),
           bench_report.plot_latency_vs_throughput(
               rows, os.path.join(ns.out, "latency_vs_throughput.png"))]
    console.print("wrote " + ", ".join(out))
    return 0 if any(r["throughput"] for r in rows) else 1
