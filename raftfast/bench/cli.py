"""`python -m raftfast.bench`: measure raftfast's replication path.

    python -m raftfast.bench run [--nodes 3] [--transport unix|tcp] [--fsync always|never]
        [--seconds 10] [--clients 50] [--pipeline 16] [--value-size 64] [--rate R]
        [--count-calls] [--breakdown [--breakdown-syscalls]]
        [node tunables as in raftfast.cluster]
    python -m raftfast.bench core [--nodes 3] [--seconds 5] [--batch 256]
        [--value-size 64] [--window 8] [--count-calls]
    python -m raftfast.bench compare [--quick | --full | --targets]
        [--against pysyncobj|redis] [--loadgen python|redis-benchmark] [--rounds K]
        [--value-size BYTES | --value-sizes B1,B2,...] [--out DIR] [--seconds S]

`run` starts a local cluster (the code of `python -m raftfast.cluster`),
drives its leader with the load generator over RESP, and prints throughput,
latency percentiles and the nodes' own figures for the run.  `core` asks the
leader to propose blocks of entries itself (RAFTFAST.BENCH), no RESP per
entry: the replication core's ceiling.  `compare` sweeps configurations and
writes a table, CSV, JSON and plots (raftfast/bench/compare.py).

`--loadgen redis-benchmark` (run, compare) drives the load with the
redis-benchmark binary instead of the built-in generator
(raftfast/bench/redis_benchmark.py); without the binary on PATH the
command says so and exits 2.

`--count-calls` (run, core) starts the nodes with RAFTFAST_COUNT_CALLS=1:
each counts its Python-level function calls (sys.setprofile `call` events,
every thread) and reports them in INFO stats; the command prints the calls
per SET (run) or per committed entry (core) of every node.

`--breakdown` (run) adds, per node, per SET and per batch: CPU, context
switches and the runtime's per-pass counters (raftfast/bench/breakdown.py);
`--breakdown-syscalls` also counts system calls by kind with strace, and
`--breakdown-stages` times the stages of the write path in every node
(RAFTFAST_STAGE_TIMES=1, raftfast/stage_times.py).
"""
import argparse
import asyncio
import json
import sys

import uvloop

from raftfast import resp_client
from raftfast.bench import redis_benchmark
from raftfast.bench import stats as bench_stats
from raftfast.bench.measure import LOADGENS, Target, measure_snapshots
from raftfast.config import ArgumentParser, Config, ConfigError, add_node_arguments
from raftfast.launcher.cli import nonnegative, positive, positive_float
from raftfast.launcher.local_cluster import ClusterError, LocalCluster

BASE_PORT = 7300  # away from raftfast.cluster's 7000, so both can run at once
INSTALL_HINT = 'pip install -e ".[bench]"'
COUNT_CALLS_ENV = {"RAFTFAST_COUNT_CALLS": "1"}
STAGE_TIMES_ENV = {"RAFTFAST_STAGE_TIMES": "1"}
NO_REDIS_BENCHMARK = ("--loadgen redis-benchmark: redis-benchmark is not on PATH "
                      "(Debian and Ubuntu: apt-get install redis-tools)")


def value_size_list(s):
    """--value-sizes: comma-separated byte counts, e.g. 64,4096,65536."""
    try:
        sizes = [int(x) for x in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a list of byte counts "
                                         "like 64,4096,65536") from None
    if any(v < 0 for v in sizes):
        raise argparse.ArgumentTypeError(f"value sizes must be >= 0, got {s}")
    return list(dict.fromkeys(sizes))


def _loadgen_arg(p):
    p.add_argument("--loadgen", choices=LOADGENS, default="python",
                   help="what drives the load: the built-in generator (python, the default) "
                        "or the redis-benchmark binary (closed loop only), the same for "
                        "every system measured")


def build_parser():
    p = ArgumentParser(prog="python -m raftfast.bench",
                       description="Benchmarks of raftfast's replication path.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,core,compare}",
                           parser_class=ArgumentParser)
    r = sub.add_parser("run", help="load a local cluster's leader over RESP")
    _cluster_args(r)
    g = r.add_argument_group("load")
    g.add_argument("--seconds", type=positive_float, default=10.0, metavar="S",
                   help="length of the load (default: 10)")
    g.add_argument("--clients", type=positive, default=50, metavar="N",
                   help="connections (default: 50)")
    g.add_argument("--pipeline", type=positive, metavar="N",
                   help="closed loop: requests in flight per connection (default: 16)")
    g.add_argument("--value-size", type=nonnegative, default=64, metavar="BYTES",
                   help="SET value size (default: 64)")
    g.add_argument("--rate", type=positive_float, metavar="OPS",
                   help="open loop: send OPS requests/s spread over the connections, "
                        "latency measured from each request's intended send time")
    g.add_argument("--sessions", action="store_true",
                   help="send every SET through a client session (RAFT.EXEC sid seq SET ...), "
                        "one session per connection: what exactly-once costs the server")
    g.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
    _loadgen_arg(g)
    g = r.add_argument_group("breakdown")
    g.add_argument("--breakdown", action="store_true",
                   help="print per node, per SET and per batch: CPU, context switches, "
                        "Ready loop passes, wake-ups, socket reads, fsyncs, appends")
    g.add_argument("--breakdown-syscalls", action="store_true",
                   help="with --breakdown: also count system calls by kind (strace -c, "
                        "which slows the nodes down several times)")
    g.add_argument("--breakdown-stages", action="store_true",
                   help="with --breakdown: start the nodes with RAFTFAST_STAGE_TIMES=1 and "
                        "print the time each spends per batch in each stage of the write "
                        "path (client read, peer step, WAL write, fsync, send, apply)")

    c = sub.add_parser("core", help="the replication core alone: the leader proposes "
                                    "blocks of entries itself (RAFTFAST.BENCH)")
    _cluster_args(c)
    g = c.add_argument_group("load")
    g.add_argument("--seconds", type=positive_float, default=5.0, metavar="S",
                   help="how long the leader proposes (default: 5)")
    g.add_argument("--batch", type=positive, default=256, metavar="N",
                   help="entries per proposed block (default: 256)")
    g.add_argument("--value-size", type=nonnegative, default=64, metavar="BYTES",
                   help="entry payload size (default: 64)")
    g.add_argument("--window", type=positive, default=8, metavar="N",
                   help="blocks kept uncommitted at once (default: 8)")

    m = sub.add_parser(
        "compare", help="sweep configurations; table, CSV, JSON, plots",
        description="Start one local cluster per configuration (max batch entries, linger, "
                    "max inflight, transport, fsync, node count), run the load at one or "
                    "more levels against each, and print a table; results.csv, results.json, "
                    "throughput_vs_batch.png and latency_vs_throughput.png go to --out.  "
                    "Needs the bench extra: " + INSTALL_HINT)
    grid = m.add_mutually_exclusive_group()
    grid.add_argument("--quick", dest="grid", action="store_const", const="quick",
                      help="a handful of points, 1-2 minutes (the default)")
    grid.add_argument("--full", dest="grid", action="store_const", const="full",
                      help="the cross product of batching, pipelining, transport, fsync "
                           "and node count (tens of minutes)")
    grid.add_argument("--targets", dest="grid", action="store_const", const="targets",
                      help="the comparison with Redis: 3 and 5 nodes, fsync always, unix "
                           "peers, at -c 50 -P 16, -c 50 -P 1 and -c 1 -P 1 with 64 B values, "
                           "-c 50 -P 16 and -c 50 -P 1 with 4 KiB, -c 50 -P 16 with 64 KiB; "
                           "Redis at each (implies --against redis)")
    grid.add_argument("--library", dest="grid", action="store_const", const="library",
                      help="the library instead of the server: a Python counter and dict "
                           "replicated on 3 processes, --callers calls in flight from the "
                           "leader's process, against PySyncObj driven the same way "
                           "(library.json in --out)")
    m.set_defaults(grid="quick")
    m.add_argument("--callers", type=positive, default=64, metavar="N",
                   help="with --library: concurrent callers in the leader's process "
                        "(default: 64)")
    m.add_argument("--fsync", choices=("always", "never"), default="always",
                   help="with --library: raftfast's fsync mode (default: always)")
    m.add_argument("--against", choices=("pysyncobj", "redis"), action="append", default=[],
                   help="add rows for another system, run the same way (repeat for both): "
                        "pysyncobj, another Raft library; redis, one redis-server with "
                        "appendonly yes and appendfsync always, and every raftfast row's "
                        "throughput ratio to it at the same load")
    m.add_argument("--out", default="bench-results", metavar="DIR",
                   help="where results.csv, results.json and the plots go "
                        "(default: ./bench-results)")
    m.add_argument("--seconds", type=positive_float, metavar="S",
                   help="load per point (default: 2 with --quick, 5 with --full)")
    sizes = m.add_mutually_exclusive_group()
    sizes.add_argument("--value-size", type=nonnegative, default=64, metavar="BYTES",
                       help="SET value size (default: 64)")
    sizes.add_argument("--value-sizes", type=value_size_list, metavar="B1,B2,...",
                       help="a sweep: every load at every one of these value sizes "
                            "(not with --targets, whose loads have theirs)")
    _loadgen_arg(m)
    m.add_argument("--rounds", type=positive, default=1, metavar="K",
                   help="run the whole sweep K times, every system in every round, and "
                        "report the median of each figure (default: 1)")
    m.add_argument("--base-port", type=positive, default=BASE_PORT, metavar="PORT",
                   help=f"node i serves clients on 127.0.0.1:<PORT + i> (default: {BASE_PORT})")
    return p


def _cluster_args(p):
    p.add_argument("--nodes", type=positive, default=3, metavar="N",
                   help="number of nodes (default: 3)")
    p.add_argument("--transport", choices=("unix", "tcp"), default="unix",
                   help="peer traffic (clients always use TCP) (default: unix)")
    p.add_argument("--base-port", type=positive, default=BASE_PORT, metavar="PORT",
                   help=f"node i serves clients on 127.0.0.1:<PORT + i> (default: {BASE_PORT})")
    p.add_argument("--target", metavar="URL",
                   help="drive this already running node (tcp://HOST:PORT) instead of "
                        "starting a cluster; server figures then come from it alone")
    p.add_argument("--count-calls", action="store_true",
                   help="start the nodes with RAFTFAST_COUNT_CALLS=1 and print every node's "
                        "Python-level function calls per SET (run) or per committed entry "
                        "(core); slows the nodes down (a profile hook)")
    p.set_defaults(data_dir=None)
    add_node_arguments(p, cluster=True)


def cluster_settings(ns):
    """The settings a row is labelled with: the flags given, else the defaults."""
    out = {"nodes": ns.nodes, "transport": ns.transport}
    for name in ("fsync", "max_batch_entries", "batch_linger_us", "max_inflight"):
        v = getattr(ns, name, None)
        out[name] = v if v is not None else Config.__dataclass_fields__[name].default
    return out


def describe_settings(s):
    return (f"{s['nodes']} nodes, peers over {s['transport']}, fsync {s['fsync']}, "
            f"max batch {s['max_batch_entries']} entries, linger {s['batch_linger_us']} us, "
            f"max inflight {s['max_inflight']}")


def format_figures(figs):
    f = bench_stats.fmt
    return (f"server: entries per AppendEntries {f(figs['entries_per_append'])}, "
            f"entries per fsync {f(figs['entries_per_fsync'])}, "
            f"CPU s per million entries {f(figs['cpu_s_per_m_entries'], ',.2f')} "
            f"({f(figs['server_cpu_s'], '.2f')} CPU s over "
            f"{f(figs['entries'], ',.0f')} entries)")


async def _with_target(ns, body):
    """Run body(target) against --target or a fresh local cluster."""
    if ns.target:
        url = str(await resp_client.find_leader(ns.target))
        return await body(Target(url, {0: (url, None)}, 0))
    env = {**(COUNT_CALLS_ENV if getattr(ns, "count_calls", False) else {}),
           **(STAGE_TIMES_ENV if getattr(ns, "breakdown_stages", False) else {})} or None
    async with LocalCluster(ns, env=env) as c:
        print(f"cluster: {describe_settings(cluster_settings(ns))}; "
              f"leader node {c.leader_id}", flush=True)
        return await body(Target.of_cluster(c))


def check_counting(before):
    """--count-calls: every node must report its Python calls (a node started
    by hand needs RAFTFAST_COUNT_CALLS=1 in its environment)."""
    missing = sorted(i for i, st in before.items() if bench_stats.CALLS_FIELD not in st)
    if missing:
        raise RuntimeError(
            f"--count-calls: node(s) {', '.join(map(str, missing))} do not report "
            f"{bench_stats.CALLS_FIELD} in INFO stats; start them with RAFTFAST_COUNT_CALLS=1")


def print_python_calls(before, after, entries, leader_id, unit):
    rows = bench_stats.python_calls(before, after, entries, leader_id)
    print("\n".join(bench_stats.format_python_calls(rows, unit)))
    print("(counted with a profile hook in every node: the figures above are not "
          "speed figures)")
    return rows


async def cmd_run(ns):
    async def body(target):
        if ns.count_calls:
            check_counting(await bench_stats.snapshot(target.nodes))
        if ns.breakdown and ns.sessions:
            print("--breakdown measures plain SETs; run it without --sessions")
            return 2
        if ns.breakdown:
            from raftfast.bench.breakdown import measure_breakdown
            result, before, after, lines = await measure_breakdown(
                target, ns.seconds, ns.clients, ns.pipeline, ns.value_size, ns.rate,
                syscalls=ns.breakdown_syscalls, stages=ns.breakdown_stages)
        else:
            result, before, after = await measure_snapshots(
                target, ns.seconds, ns.clients, ns.pipeline, ns.value_size, ns.rate,
                loadgen_name=ns.loadgen, sessions=ns.sessions)
            lines = []
        figs = bench_stats.figures(before, after, target.leader_id)
        print(result.format())
        print(format_figures(figs))
        if lines:
            print("\n".join(lines))
        if ns.count_calls:
            print_python_calls(before, after, result.ops, target.leader_id, "SET")
        if ns.json:
            from raftfast.bench.report import make_row
            row = make_row("raftfast", cluster_settings(ns), result, figs,
                           loadgen=ns.loadgen)
            with open(ns.json, "w") as f:
                json.dump(row, f, indent=2)
        return 0
    return await _with_target(ns, body)


async def core_bench(url, seconds, batch, value_size, window):
    """RAFTFAST.BENCH on the leader at url: {entries, seconds, fsyncs, entries_per_s}."""
    reply = await resp_client.call(url, "RAFTFAST.BENCH", str(seconds), str(batch),
                                   str(value_size), str(window), timeout=seconds + 30)
    if isinstance(reply, resp_client.RespError):
        if reply.startswith("ERR unknown command"):
            raise RuntimeError("this node does not support RAFTFAST.BENCH yet")
        raise RuntimeError(f"RAFTFAST.BENCH failed: {reply}")
    if (not isinstance(reply, list) or len(reply) < 3
            or not all(isinstance(v, int) for v in reply[:3])):
        raise RuntimeError(f"RAFTFAST.BENCH: expected [entries, microseconds, fsyncs], "
                           f"got {reply!r}")
    entries, micros, fsyncs = reply[:3]
    secs = micros / 1e6
    return {"entries": entries, "seconds": secs, "fsyncs": fsyncs,
            "entries_per_s": entries / secs if secs > 0 else 0.0,
            "entries_per_fsync": entries / fsyncs if fsyncs else None}


async def cmd_core(ns):
    if not ns.target and getattr(ns, "enable_debug_command", None) is None:
        # Its own cluster, driven from this machine: RAFTFAST.BENCH from
        # loopback only.  Against --target the operator enables it.
        ns.enable_debug_command = "local"

    async def body(target):
        before = await bench_stats.snapshot(target.nodes)
        if ns.count_calls:
            check_counting(before)
        r = await core_bench(target.url, ns.seconds, ns.batch, ns.value_size, ns.window)
        after = await bench_stats.snapshot(target.nodes)
        figs = bench_stats.figures(before, after, target.leader_id)
        print(f"replication core: blocks of {ns.batch} x {ns.value_size}-byte entries, "
              f"window {ns.window} blocks, {r['seconds']:.2f} s")
        print(f"committed {r['entries']:,} entries: {r['entries_per_s']:,.0f} entries/s; "
              f"{r['fsyncs']:,} fsyncs on the leader "
              f"({bench_stats.fmt(r['entries_per_fsync'])} entries per fsync)")
        print(format_figures(figs))
        if ns.count_calls:
            print_python_calls(before, after, r["entries"], target.leader_id,
                               "committed entry")
        return 0
    return await _with_target(ns, body)


def missing_packages(names):
    """The names among `names` that cannot be imported."""
    import importlib.util
    return [n for n in names if importlib.util.find_spec(n) is None]


def require(*names, what="this command"):
    missing = missing_packages(names)
    if missing:
        sys.exit(f"error: {what} needs {', '.join(missing)}, not installed: {INSTALL_HINT}")


def main(argv=None):
    parser = build_parser()
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(ns, "loadgen", None) == "redis-benchmark" and not redis_benchmark.binary_path():
        parser.error(NO_REDIS_BENCHMARK)
    if ns.command == "compare":
        if ns.grid == "library":
            require("rich", "pysyncobj", what="bench compare --library")
            from raftfast.bench import library as bench_library
            return bench_library.main(ns)
        if ns.grid == "targets":
            if ns.value_sizes:
                parser.error("--value-sizes is for --quick and --full: the --targets "
                             "grid sets each load's value size")
            if "redis" not in ns.against:
                ns.against.append("redis")
        with_pysyncobj = "pysyncobj" in ns.against
        require("rich", "matplotlib", *(["pysyncobj"] if with_pysyncobj else []),
                what="bench compare" + (" --against pysyncobj" if with_pysyncobj else ""))
        from raftfast.bench import compare as bench_compare
        return bench_compare.main(ns)
    if ns.command == "run":
        if ns.rate is not None and ns.pipeline is not None:
            parser.error("--pipeline is for the closed loop; with --rate the requests in "
                         "flight follow from the rate")
        ns.pipeline = ns.pipeline or 16
        if ns.loadgen == "redis-benchmark":
            if ns.rate is not None:
                parser.error("--rate is an open loop; redis-benchmark runs closed loops only")
            if ns.breakdown:
                parser.error("--breakdown runs the built-in load generator; leave out "
                             "--loadgen redis-benchmark")
        for flag in ("syscalls", "stages"):
            if getattr(ns, f"breakdown_{flag}") and not ns.breakdown:
                parser.error(f"--breakdown-{flag} goes with --breakdown")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(cmd_run(ns) if ns.command == "run" else cmd_core(ns))
    except ConfigError as e:
        parser.error(str(e))
    except (ClusterError, RuntimeError, OSError, asyncio.TimeoutError) as e:
        print(f"error: {e or type(e).__name__}", file=sys.stderr)
        return 1

