"""One measurement: a load run against a cluster's leader, with the nodes'
own figures (INFO stats) taken around it.  The load comes from the built-in
generator (loadgen, "python") or from the redis-benchmark binary
(redis_benchmark, "redis-benchmark")."""
from raftfast.bench import loadgen, redis_benchmark
from raftfast.bench import stats as bench_stats


class Target:
    """What a measurement drives: the leader's client URL, and every node as
    {id: (client url, pid or None)} for the server-side figures."""

    def __init__(self, url, nodes, leader_id):
        self.url = url
        self.nodes = nodes
        self.leader_id = leader_id

    @classmethod
    def of_cluster(cls, c):
        return cls(c.client_url(c.leader_id),
                   {n.id: (n.spec.client, n.proc.pid) for n in c.nodes}, c.leader_id)


LOADGENS = ("python", "redis-benchmark")


async def measure(target, seconds, clients, pipeline, value_size, rate=None, warmup=None,
                  loadgen_name="python"):
    """One load run with the nodes' figures around it: (Result, figures).

    The same load runs untimed for `warmup` seconds first (default: a
    quarter of the run, at most 1 s), so that the figures are not those of
    a cluster that has just elected its leader and has empty buffers."""
    result, before, after = await measure_snapshots(target, seconds, clients, pipeline,
                                                    value_size, rate, warmup, loadgen_name)
    return result, bench_stats.figures(before, after, target.leader_id)


async def measure_snapshots(target, seconds, clients, pipeline, value_size, rate=None,
                            warmup=None, loadgen_name="python", sessions=False):
    """measure(), with the nodes' snapshots instead of the figures:
    (Result, before, after).  With redis-benchmark the calibration run is
    the warm-up, and an open loop (rate) is refused: the tool has none."""
    if loadgen_name == "redis-benchmark":
        if sessions:
            raise ValueError("--sessions needs the python load generator")
        if rate is not None:
            raise ValueError("redis-benchmark runs closed loops only (no --rate)")
        return await redis_benchmark.run_point(
            target.url, seconds, clients, pipeline, value_size,
            between=lambda: bench_stats.snapshot(target.nodes))
    if loadgen_name != "python":
        raise ValueError(f"unknown load generator {loadgen_name!r}")
    if warmup is None:
        warmup = min(seconds / 4, 1.0)
    if warmup > 0:
        await loadgen.run_async(target.url, warmup, clients, pipeline, value_size, rate=rate,
                                sessions=sessions)
    before = await bench_stats.snapshot(target.nodes)
    result = await loadgen.run_async(target.url, seconds, clients, pipeline, value_size,
                                     rate=rate, sessions=sessions)
    after = await bench_stats.snapshot(target.nodes)
    return result, before, after
