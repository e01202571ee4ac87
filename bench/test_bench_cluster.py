"""The whole cluster: real node processes started by raftfast.cluster's
LocalCluster, peers over Unix sockets, clients over TCP, 64-byte values.

- test_cluster_set[NODES-FSYNC]: the built-in load generator
  (raftfast.bench.loadgen, the one `python -m raftfast.bench run` uses) drives the
  leader with 50 clients x pipeline 16 SETs for RAFTFAST_BENCH_SECONDS
  (default 3) per round.  3 nodes with fsync always and never, 5 nodes with
  fsync always.
- test_cluster_core[3nodes-always-BATCH]: the replication core alone.
  RAFTFAST.BENCH makes the leader propose blocks of BATCH 64-byte entries
  itself, with no RESP per entry (`python -m raftfast.bench core`), for
  RAFTFAST_BENCH_SECONDS per round.  BATCH is 256 or 1024.

One cluster is started per configuration and kept for all its rounds (and
for the core benchmarks of the same configuration).  It gets 1 s of load,
untimed, before the first round.  A round's timed duration is its wall
time: the load plus connection set-up and drain.  The figures are in
extra_info, taken over all rounds together.  For SET they are throughput,
p50/p90/p99/p99.9/max, and the nodes' INFO-stats figures (entries per
AppendEntries, entries per fsync, CPU seconds per million entries, from
raftfast.bench.stats).  For the core they are entries/s committed and the
same INFO figures.  Data directories go under $RAFTFAST_BENCH_DIR when it
is set, else under /tmp.
"""
import asyncio
import os
import shutil
import tempfile

import pytest
import uvloop

import benchutil
from benchutil import VALUE_SIZE, filesystem_of, planned_rounds
from raftfast.bench import cli as bench
from raftfast.bench import stats as bench_stats
from raftfast.bench import loadgen
from raftfast.bench.histogram import Histogram
from raftfast.bench.measure import Target
from raftfast.launcher.local_cluster import LocalCluster
from tests.support.harness import free_base_port

SECONDS = float(os.environ.get("RAFTFAST_BENCH_SECONDS", "3"))
CLIENTS = 50
PIPELINE = 16
WARMUP = 1.0
CORE_WINDOW = 8     # blocks kept uncommitted at once (the `bench core` default)

# One object per configuration: pytest reuses a module-scoped fixture's
# value only for the very same param object, so the core benchmarks, which
# pass THREE_ALWAYS again, share the cluster of the SET benchmark.
THREE_ALWAYS = (3, "always")
THREE_NEVER = (3, "never")
FIVE_ALWAYS = (5, "always")
CONFIGS = [pytest.param(THREE_ALWAYS, id="3nodes-always"),
           pytest.param(THREE_NEVER, id="3nodes-never"),
           pytest.param(FIVE_ALWAYS, id="5nodes-always")]




class RunningCluster:
    """A LocalCluster on an event loop of its own.  The loop runs only while a
    round runs; the nodes do not need it in between (only their output
    pipes are read on it, and they print little)."""

    def __init__(self, nodes, fsync):
        self.nodes, self.fsync = nodes, fsync
        argv = ["run", "--nodes", str(nodes), "--transport", "unix", "--fsync", fsync,
                "--base-port", str(free_base_port(nodes))]
        self.own_dir = None
        base = os.environ.get("RAFTFAST_BENCH_DIR")
        if base:
            os.makedirs(base, exist_ok=True)
            self.own_dir = tempfile.mkdtemp(prefix="rf-", dir=base)
            argv += ["--data-dir", self.own_dir]
        self.ns = bench.build_parser().parse_args(argv)
        self.runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        self.cluster = LocalCluster(self.ns)
        try:
            self.run(self.cluster.start())
        except BaseException:
            self.close()
            raise
        self.target = Target.of_cluster(self.cluster)
        self.mount, self.filesystem = filesystem_of(self.cluster.data_dir)

    def run(self, coro):
        return self.runner.run(coro)

    def snapshot(self):
        return self.run(bench_stats.snapshot(self.target.nodes))

    def info(self):
        """What every benchmark of this cluster records about it."""
        return {"nodes": self.nodes, "fsync": self.fsync, "transport": "unix",
                "value_size": VALUE_SIZE, "leader": self.target.leader_id,
                "filesystem": self.filesystem, "mount": self.mount,
                **{k: v for k, v in bench.cluster_settings(self.ns).items()
                   if k not in ("nodes", "fsync", "transport")}}

    def close(self):
        try:
            self.run(self.cluster.stop())
        finally:
            self.runner.close()
            if self.own_dir:
                shutil.rmtree(self.own_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(request):
    nodes, fsync = request.param
    c = RunningCluster(nodes, fsync)
    try:
        c.run(loadgen.run_async(c.target.url, WARMUP, CLIENTS, PIPELINE, VALUE_SIZE))
        yield c
    finally:
        c.close()


def _figures(extra, before, after, leader_id):
    figs = bench_stats.figures(before, after, leader_id)
    for k in ("entries_per_append", "entries_per_fsync", "cpu_s_per_m_entries"):
        extra[k] = None if figs[k] is None else round(figs[k], 2)
    extra["server_cpu_s"] = None if figs["server_cpu_s"] is None else \
        round(figs["server_cpu_s"], 3)
    extra["server_entries"] = figs["entries"]
    return figs


@pytest.mark.parametrize("cluster", CONFIGS, indirect=True)
def test_cluster_set(benchmark, cluster):
    results = []

    def one_round():
        results.append(cluster.run(loadgen.run_async(
            cluster.target.url, SECONDS, CLIENTS, PIPELINE, VALUE_SIZE)))

    benchmark.group = f"cluster SET {CLIENTS}x{PIPELINE}"
    before = cluster.snapshot()
    benchmark.pedantic(one_round, rounds=planned_rounds(benchmark, SECONDS + 0.2),
                       iterations=1)
    after = cluster.snapshot()

    latency = Histogram()
    errors = {}
    for r in results:
        latency.merge(r.latency)
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    ops = sum(r.ops for r in results)
    secs = sum(r.seconds for r in results)
    lat = latency.summary_ms()
    extra = benchmark.extra_info
    extra.update(cluster.info())
    extra.update(
        clients=CLIENTS, pipeline=PIPELINE, seconds_per_round=SECONDS, rounds=len(results),
        ops=ops, throughput=round(ops / secs, 1),
        throughput_per_round=[round(r.throughput, 1) for r in results],
        p50_ms=lat["p50"], p90_ms=lat["p90"], p99_ms=lat["p99"], p999_ms=lat["p99.9"],
        max_ms=lat["max"], errors=errors,
        client_cpu_frac=round(sum(r.client_cpu for r in results) / secs, 3))
    figs = _figures(extra, before, after, cluster.target.leader_id)
    benchutil.rows.append((
        benchmark.fullname.split("::")[-1],
        f"{ops / secs:>14,.0f} SET/s  p50 {lat['p50']:.3f}  p99 {lat['p99']:.3f}  "
        f"p99.9 {lat['p99.9']:.3f} ms  {_server_line(figs)}"
        + (f"  errors {errors}" if errors else "")))
    assert ops > 0, errors


@pytest.mark.parametrize("batch", [256, 1024])
@pytest.mark.parametrize("cluster", [pytest.param(THREE_ALWAYS, id="3nodes-always")],
                         indirect=True)
def test_cluster_core(benchmark, cluster, batch):
    url = cluster.target.url
    results = []

    def one_round():
        results.append(cluster.run(bench.core_bench(url, SECONDS, batch, VALUE_SIZE,
                                                    CORE_WINDOW)))

    cluster.run(bench.core_bench(url, 0.5, batch, VALUE_SIZE, CORE_WINDOW))  # warm-up
    benchmark.group = "cluster replication core (RAFTFAST.BENCH)"
    before = cluster.snapshot()
    benchmark.pedantic(one_round, rounds=planned_rounds(benchmark, SECONDS + 0.2),
                       iterations=1)
    after = cluster.snapshot()

    entries = sum(r["entries"] for r in results)
    secs = sum(r["seconds"] for r in results)
    fsyncs = sum(r["fsyncs"] for r in results)
    extra = benchmark.extra_info
    extra.update(cluster.info())
    extra.update(
        batch=batch, window=CORE_WINDOW, seconds_per_round=SECONDS, rounds=len(results),
        entries=entries, entries_per_s=round(entries / secs, 1),
        entries_per_s_per_round=[round(r["entries_per_s"], 1) for r in results],
        leader_fsyncs=fsyncs,
        leader_entries_per_fsync=round(entries / fsyncs, 1) if fsyncs else None)
    figs = _figures(extra, before, after, cluster.target.leader_id)
    benchutil.rows.append((benchmark.fullname.split("::")[-1],
                           f"{entries / secs:>14,.0f} entries/s  {_server_line(figs)}"))
    assert entries > 0


def _server_line(figs):
    f = bench_stats.fmt
    return (f"ent/AE {f(figs['entries_per_append'])}  ent/fsync {f(figs['entries_per_fsync'])}"
            f"  CPU s/M {f(figs['cpu_s_per_m_entries'], '.2f')}")
