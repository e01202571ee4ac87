"""`python -m raftfast.bench`: argument handling, the server-side figures,
the writers (table, CSV, JSON, PNG), the core benchmark's reply handling
against a fake node, LocalCluster with stand-in nodes, `compare --against
redis` (the skip without redis-server, the ratios, a short run against a real
redis-server where one is installed), and one short run against a real
3-node cluster."""
import asyncio
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import uvloop

from raftfast.arg_types import half_of_ram
from raftfast.bench import cli as bench
from raftfast.bench import compare as bench_compare
from raftfast.bench import redis_server
from raftfast.bench import report as bench_report
from raftfast.bench import stats as bench_stats
from raftfast.bench.histogram import Histogram
from raftfast.bench.loadgen import Result
from raftfast.bench.measure import Target, measure
from raftfast.launcher.layout import plan
from raftfast.launcher.local_cluster import ClusterError, LocalCluster
from raftfast.launcher.supervisor import NODE_MODULE_ENV, node_env
from raftfast.resp_client import RespReplyParser, parse_info
from tests.support import REPO
from tests.support.harness import free_base_port

ROOT = REPO


def run_async(coro):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        return r.run(coro)


def usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    return err


# ---- arguments -----------------------------------------------------------------

def test_run_defaults_and_tunables():
    ns = bench.build_parser().parse_args(["run"])
    assert (ns.nodes, ns.transport, ns.seconds, ns.clients, ns.value_size, ns.rate) == \
        (3, "unix", 10.0, 50, 64, None)
    assert bench.cluster_settings(ns) == {
        "nodes": 3, "transport": "unix", "fsync": "always", "max_batch_entries": 1024,
        "batch_linger_us": 0, "max_inflight": 64}
    ns = bench.build_parser().parse_args(
        ["run", "--nodes", "5", "--transport", "tcp", "--fsync", "never", "--max-batch-entries",
         "64", "--batch-linger-us", "100", "--max-inflight", "4", "--rate", "5000"])
    s = bench.cluster_settings(ns)
    assert (s["nodes"], s["transport"], s["fsync"], s["max_batch_entries"],
            s["batch_linger_us"], s["max_inflight"]) == (5, "tcp", "never", 64, 100, 4)
    assert ns.rate == 5000.0
    # The tunables reach every node's command line, as with raftfast.cluster.
    spec = plan(ns, "/tmp/rf-plan")[0]
    assert spec.argv[-10:-2] == ["--fsync", "never", "--max-batch-entries", "64",
                                 "--batch-linger-us", "100", "--max-inflight", "4"]
    # And each node gets its share of half the machine's memory.
    assert spec.argv[-2:] == ["--maxmemory", str(half_of_ram() // 5)]


def test_core_and_compare_defaults():
    ns = bench.build_parser().parse_args(["core"])
    assert (ns.nodes, ns.seconds, ns.batch, ns.value_size, ns.window) == (3, 5.0, 256, 64, 8)
    ns = bench.build_parser().parse_args(["compare"])
    assert (ns.grid, ns.against, ns.seconds) == ("quick", [], None)
    ns = bench.build_parser().parse_args(["compare", "--full", "--against", "pysyncobj",
                                          "--out", "x", "--seconds", "3"])
    assert (ns.grid, ns.against, ns.out, ns.seconds) == ("full", ["pysyncobj"], "x", 3.0)
    ns = bench.build_parser().parse_args(["compare", "--against", "redis"])
    assert ns.against == ["redis"]
    ns = bench.build_parser().parse_args(["compare", "--against", "redis",
                                          "--against", "pysyncobj"])
    assert ns.against == ["redis", "pysyncobj"]


def test_count_calls_flag():
    p = bench.build_parser()
    assert p.parse_args(["run"]).count_calls is False
    assert p.parse_args(["core"]).count_calls is False
    assert p.parse_args(["run", "--count-calls"]).count_calls is True
    ns = p.parse_args(["core", "--count-calls", "--batch", "1024"])
    assert ns.count_calls is True and ns.batch == 1024
    # A flag of the benchmark, not a node tunable: no node's command line has it.
    assert "--count-calls" not in plan(ns, "/tmp/rf-plan")[0].argv
    assert bench.COUNT_CALLS_ENV == {"RAFTFAST_COUNT_CALLS": "1"}


@pytest.mark.parametrize("argv,fragment", [
    ([], "required"),
    (["compare", "--count-calls"], "unrecognized arguments"),
    (["run", "--nodes", "0"], "--nodes"),
    (["run", "--seconds", "0"], "--seconds"),
    (["run", "--rate", "-5"], "--rate"),
    (["run", "--rate", "1000", "--pipeline", "4"], "closed loop"),
    (["run", "--transport", "udp"], "invalid choice"),
    (["run", "--election-timeout", "50"], "less than --election-timeout"),
    (["core", "--batch", "0"], "--batch"),
    (["compare", "--quick", "--full"], "not allowed with"),
    (["compare", "--against", "etcd"], "invalid choice"),
])
def test_bad_usage_exits_2_with_one_line(argv, fragment, capsys):
    assert fragment in usage_error(argv, capsys)


def test_missing_optional_packages_say_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(bench, "missing_packages", lambda names: [n for n in names
                                                                  if n != "rich"])
    with pytest.raises(SystemExit) as e:
        bench.main(["compare", "--against", "pysyncobj"])
    msg = str(e.value.code)
    assert "matplotlib, pysyncobj" in msg and 'pip install -e ".[bench]"' in msg
    assert "\n" not in msg


def test_against_redis_alone_needs_no_pysyncobj(monkeypatch):
    monkeypatch.setattr(bench, "missing_packages", lambda names: [n for n in names
                                                                  if n == "pysyncobj"])
    called = []
    monkeypatch.setattr(bench_compare, "main", lambda ns: called.append(ns.against) or 0)
    assert bench.main(["compare", "--against", "redis"]) == 0 and called == [["redis"]]


# ---- server-side figures ----------------------------------------------------------

def stats(appends, sent, fsyncs, written, applied, cpu, commit):
    return dict(zip(bench_stats.STAT_FIELDS,
                    map(float, (appends, sent, fsyncs, written, applied, cpu, commit))))


def test_figures_from_info_differences():
    before = {1: stats(10, 100, 5, 100, 100, 1.0, 100),
              2: stats(0, 0, 5, 100, 100, 2.0, 100),
              3: stats(0, 0, 5, 100, 100, 3.0, 100)}
    # Leader 1 sent 40 appends carrying 8000 entries; everyone wrote them.
    after = {1: stats(50, 8100, 25, 8100, 8100, 2.5, 8100),
             2: stats(0, 0, 45, 8100, 8050, 3.0, 8100),
             3: stats(0, 0, 35, 8100, 8000, 3.5, 8100)}
    f = bench_stats.figures(before, after, leader_id=1)
    assert f["entries"] == 8000                      # the leader's applied entries
    assert f["entries_per_append"] == 8000 / 40
    assert f["entries_per_fsync"] == 3 * 8000 / (20 + 40 + 30)
    assert f["server_cpu_s"] == pytest.approx(1.5 + 1.0 + 0.5)
    assert f["cpu_s_per_m_entries"] == pytest.approx(3.0 / 0.008)


def test_figures_without_the_stats_fields():
    """Nodes without INFO stats: commit index for entries, /proc for CPU,
    None (n/a) for what cannot be known."""
    before = {1: {"raft_commit_index": 10.0, "proc_cpu_seconds": 1.0, "proc_sys_seconds": 0.5},
              2: {"raft_commit_index": 10.0, "proc_cpu_seconds": 1.0, "proc_sys_seconds": 0.25}}
    after = {1: {"raft_commit_index": 1010.0, "proc_cpu_seconds": 1.5, "proc_sys_seconds": 0.75},
             2: {"raft_commit_index": 1005.0, "proc_cpu_seconds": 1.25, "proc_sys_seconds": 0.5}}
    f = bench_stats.figures(before, after, leader_id=1)
    assert f["entries"] == 1000
    assert f["server_cpu_s"] == pytest.approx(0.75)
    assert f["server_sys_s"] == pytest.approx(0.5)
    # The kernel's part is all the nodes' or none: one node without it -> None.
    del after[2]["proc_sys_seconds"]
    assert bench_stats.figures(before, after, leader_id=1)["server_sys_s"] is None
    after[2]["proc_sys_seconds"] = 0.5
    assert f["cpu_s_per_m_entries"] == pytest.approx(750.0)
    assert f["entries_per_append"] is None and f["entries_per_fsync"] is None
    assert bench_stats.fmt(None) == "n/a" and bench_stats.fmt(1234.5) == "1,234.5"
    # No fsyncs (fsync never): no ratio rather than a division by zero.
    b, a = stats(0, 0, 7, 0, 0, 0, 0), stats(3, 30, 7, 30, 30, 1, 30)
    assert bench_stats.figures({1: b}, {1: a}, 1)["entries_per_fsync"] is None
    assert bench_stats.figures({}, {}, None)["cpu_s_per_m_entries"] is None


def test_info_parsing_and_proc_cpu():
    text = b"# Stats\r\nraftfast_fsyncs:12\r\nraftfast_cpu_seconds:1.250\r\n\r\n# Raft\r\n" \
           b"raft_role:leader\r\nraft_commit_index:7\r\nbogus:x\r\n"
    st = bench_stats.node_stats(parse_info(text))
    assert st == {"raftfast_fsyncs": 12.0, "raftfast_cpu_seconds": 1.25,
                  "raft_commit_index": 7.0}
    t0 = bench_stats.proc_cpu_seconds(os.getpid())
    user0, sys0 = bench_stats.proc_cpu_times(os.getpid())
    sum(i * i for i in range(300_000))
    for _ in range(2000):
        os.stat("/")        # system time
    assert t0 is not None and bench_stats.proc_cpu_seconds(os.getpid()) >= t0
    user1, sys1 = bench_stats.proc_cpu_times(os.getpid())
    assert user1 >= user0 and sys1 >= sys0
    assert bench_stats.proc_cpu_seconds(os.getpid()) == pytest.approx(user1 + sys1, abs=0.02)
    assert bench_stats.proc_cpu_seconds(2**22 + 12345) is None
    assert bench_stats.proc_cpu_times(2**22 + 12345) is None


def info_text(calls=None, top=None, commit=0):
    text = f"# Stats\r\nraftfast_fsyncs:3\r\nraftfast_entries_applied:{commit}\r\n"
    if calls is not None:
        text += f"raftfast_python_calls:{calls}\r\n"
    if top is not None:
        text += f"raftfast_python_calls_top:{top}\r\n"
    return text + f"\r\n# Raft\r\nraft_commit_index:{commit}\r\n"


def snap(**texts):
    """{node id: node_stats} from INFO texts, as snapshot() makes it."""
    return {int(k[1:]): bench_stats.node_stats(parse_info(v.encode()))
            for k, v in texts.items()}


def test_python_calls_per_entry_from_info():
    before = snap(n1=info_text(1000, "driver.py:_tick=40,resp_server.py:_info=10"),
                  n2=info_text(500, "driver.py:_tick=40"),
                  n3=info_text(700))
    after = snap(n1=info_text(1000 + 12_800, "driver.py:_tick=90,resp_server.py:_info=12,"
                                             "driver.py:_flush=12000"),
                 n2=info_text(500 + 256, "driver.py:_tick=296"),
                 n3=info_text(700))
    assert before[1]["raftfast_python_calls"] == 1000.0
    assert before[1]["python_calls_top"] == {"driver.py:_tick": 40, "resp_server.py:_info": 10}
    rows = bench_stats.python_calls(before, after, 256_000, leader_id=2)
    assert [(r["node"], r["role"]) for r in rows] == [(2, "leader"), (1, "follower"),
                                                      (3, "follower")]
    leader, f1, f3 = rows
    assert (leader["calls"], leader["per_entry"]) == (256, 0.001)
    assert leader["top"] == [("driver.py:_tick", 256)]
    assert (f1["calls"], f1["per_entry"]) == (12_800, 0.05)
    # The run's calls by function: differences; a function new to the top list counts
    # from 0; an unchanged one is left out.
    assert f1["top"] == [("driver.py:_flush", 12000), ("driver.py:_tick", 50),
                         ("resp_server.py:_info", 2)]
    assert (f3["calls"], f3["per_entry"], f3["top"]) == (0, 0.0, [])
    lines = bench_stats.format_python_calls(rows, "committed entry")
    assert lines[0].startswith("Python calls per committed entry")
    assert lines[1].split() == ["node", "2", "(leader)", "0.001000", "(256", "calls", "/",
                                "256,000)"]
    assert lines[2].split() == ["most:", "driver.py:_tick", "256"]
    assert "0.050000" in lines[3] and "driver.py:_flush 12,000" in lines[4]
    assert lines[5].split()[3] == "0.000000" and len(lines) == 6


def test_python_calls_missing_or_no_entries():
    before = snap(n1=info_text(10), n2=info_text(None))
    after = snap(n1=info_text(30), n2=info_text(5))   # node 2 was not counting at first
    rows = bench_stats.python_calls(before, after, 0, leader_id=1)
    assert rows[0]["calls"] == 20 and rows[0]["per_entry"] is None   # no entries: n/a
    assert rows[1]["calls"] is None and rows[1]["per_entry"] is None
    lines = bench_stats.format_python_calls(rows, "SET")
    assert lines[0].startswith("Python calls per SET")
    assert lines[1].split()[3] == "n/a" and "does not report raftfast_python_calls" in lines[2]
    assert bench_stats.parse_calls_top("a.py:f=3,bad,b.py:g=x,c.py:h=1") == \
        {"a.py:f": 3, "c.py:h": 1}
    with pytest.raises(RuntimeError, match=r"node\(s\) 2 do not report .*RAFTFAST_COUNT_CALLS=1"):
        bench.check_counting(before)
    bench.check_counting(after)


# ---- writers ----------------------------------------------------------------------

def synthetic_rows():
    rng = random.Random(3)
    rows = []
    settings = dict(nodes=3, transport="unix", fsync="always", max_batch_entries=1024,
                    batch_linger_us=0, max_inflight=64)
    for fsync in ("always", "never"):
        for clients, pipeline in ((1, 1), (8, 1), (50, 16)):
            h = Histogram()
            for _ in range(500):
                h.record(rng.randrange(100, 5000) * clients)
            res = Result("127.0.0.1:1", 2.0, clients, pipeline, 64,
                         ops=clients * pipeline * 10_000, latency=h, client_cpu=0.2)
            figs = {"entries": res.ops, "entries_per_append": 12.5,
                    "entries_per_fsync": 40.0 if fsync == "always" else None,
                    "cpu_s_per_m_entries": 8.0, "server_cpu_s": 3.0}
            rows.append(bench_report.make_row("raftfast", dict(settings, fsync=fsync), res,
                                              figs))
    for b in (16, 256):
        res = Result("127.0.0.1:1", 2.0, 50, 16, 64, ops=b * 100)
        rows.append(bench_report.make_row("raftfast", dict(settings, max_batch_entries=b),
                                          res, {}))
    res = Result("127.0.0.1:1", 2.0, 50, 16, 64, ops=10_000, errors={"TIMEOUT": 3})
    rows.append(bench_report.make_row(
        "pysyncobj", dict(nodes=3, transport="tcp"), res, {"cpu_s_per_m_entries": 400.0}))
    failed = dict.fromkeys(bench_report.COLUMNS)
    failed.update(settings, system="raftfast", nodes=5, note="failed: no leader")
    rows.append(failed)
    return rows


def test_csv_and_json_round_trip(tmp_path):
    rows = synthetic_rows()
    p = bench_report.write_csv(rows, tmp_path / "r.csv")
    with open(p, newline="") as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(rows) and list(back[0]) == list(bench_report.COLUMNS)
    assert back[0]["throughput"] == "5000.0" and back[0]["entries_per_append"] == "12.5"
    assert back[3]["entries_per_fsync"] == ""            # fsync never: no figure
    assert back[-2]["errors"] == "TIMEOUT=3" and back[-2]["system"] == "pysyncobj"
    assert back[-1]["note"] == "failed: no leader" and back[-1]["throughput"] == ""
    p = bench_report.write_json(rows, {"grid": "quick"}, tmp_path / "r.json")
    doc = json.loads(open(p).read())
    assert doc["meta"] == {"grid": "quick"} and doc["rows"] == rows
    assert doc["rows"][0]["p99_ms"] >= doc["rows"][0]["p50_ms"] > 0


def test_table_shows_every_row():
    pytest.importorskip("rich")
    from rich.console import Console
    rows = synthetic_rows()
    console = Console(file=io.StringIO(), width=200)
    console.print(bench_report.make_table(rows, title="t"))
    text = console.file.getvalue()
    assert "3n unix always b1024 l0 i64" in text and "50x16" in text and "4,000,000" in text
    assert "n/a" in text and "TIMEOUT=3" in text and "failed: no leader" in text
    assert "pysyncobj" in text


def test_comparison_against_another_system():
    lines = bench_report.comparison_lines(synthetic_rows())
    # raftfast 50x16: 8,000,000 ops / 2 s = 4,000,000/s (never and always);
    # pysyncobj: 5,000/s.
    assert lines == ["raftfast / pysyncobj, 3 nodes at 50x16: fsync never 800.0x, "
                     "fsync always 800.0x"]


@pytest.mark.parametrize("plot", ["plot_throughput_vs_batch", "plot_latency_vs_throughput"])
def test_plots_are_valid_pngs(plot, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image
    path = getattr(bench_report, plot)(synthetic_rows(), str(tmp_path / "p.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    h, w, _ = image.imread(path).shape
    assert (w, h) == (800, 500)
    bench_report.plot_latency_vs_throughput([], str(tmp_path / "empty.png"))
    assert os.path.getsize(tmp_path / "empty.png") > 0


# ---- bench core against a fake node --------------------------------------------------

class FakeCore(asyncio.Protocol):
    """RAFTFAST.BENCH and INFO the way the node answers them."""

    reply = b"*3\r\n:500000\r\n:2000000\r\n:1000\r\n"

    def connection_made(self, transport):
        self.transport = transport
        self.parser = RespReplyParser()

    def data_received(self, data):
        self.parser.feed(data)
        while (req := self.parser.take()) is not RespReplyParser.INCOMPLETE:
            cmd = req[0].upper()
            if cmd == b"RAFTFAST.BENCH":
                assert req[1:] == [b"0.5", b"128", b"32", b"4"]
                self.transport.write(self.reply)
            elif cmd == b"SET":
                self.transport.write(b"+OK\r\n")
            elif cmd == b"INFO":
                body = b"raft_role:leader\r\nraft_commit_index:1\r\n"
                self.transport.write(b"$%d\r\n%s\r\n" % (len(body), body))
            else:
                self.transport.write(b"-ERR unknown command '%s'\r\n" % cmd.lower())


async def with_fake(factory, fn):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        return await fn(f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    finally:
        server.close()


def test_core_bench_reads_the_reply():
    r = run_async(with_fake(FakeCore, lambda url: bench.core_bench(url, 0.5, 128, 32, 4)))
    assert r == {"entries": 500000, "seconds": 2.0, "fsyncs": 1000,
                 "entries_per_s": 250000.0, "entries_per_fsync": 500.0}


@pytest.mark.parametrize("reply,fragment", [
    (b"-ERR unknown command 'raftfast.bench'\r\n", "does not support RAFTFAST.BENCH"),
    (b"-CLUSTERDOWN No raft leader\r\n", "CLUSTERDOWN"),
    (b"*2\r\n:1\r\n:2\r\n", "expected [entries, microseconds, fsyncs]"),
])
def test_core_bench_refusals(reply, fragment):
    fake = type("Fake", (FakeCore,), {"reply": reply})
    with pytest.raises(RuntimeError, match=fragment.replace("[", r"\[")):
        run_async(with_fake(fake, lambda url: bench.core_bench(url, 0.5, 128, 32, 4)))


def test_core_command_against_a_running_node(capsys):
    argv = ["core", "--seconds", "0.5", "--batch", "128", "--value-size", "32", "--window", "4"]

    async def drive(url):
        return await asyncio.get_running_loop().run_in_executor(
            None, bench.main, argv + ["--target", url])
    assert run_async(with_fake(FakeCore, drive)) == 0
    out = capsys.readouterr().out
    assert "committed 500,000 entries: 250,000 entries/s" in out
    assert "500.0 entries per fsync" in out and "entries per AppendEntries n/a" in out


class CountingCore(FakeCore):
    """FakeCore that also reports Python calls the way a node started with
    RAFTFAST_COUNT_CALLS=1 does: 100 before RAFTFAST.BENCH, 600 after."""

    bench_done = False

    def data_received(self, data):
        if b"RAFTFAST.BENCH" in data:
            CountingCore.bench_done = True
        if b"INFO" not in data:
            return super().data_received(data)
        calls = 600 if CountingCore.bench_done else 100
        body = (f"raft_role:leader\r\nraft_commit_index:1\r\nraftfast_python_calls:{calls}\r\n"
                f"raftfast_python_calls_top:driver.py:_tick={calls // 2}\r\n").encode()
        self.transport.write(b"$%d\r\n%s\r\n" % (len(body), body))


def run_core_against(fake, extra, capsys):
    argv = ["core", "--seconds", "0.5", "--batch", "128", "--value-size", "32", "--window", "4"]

    async def drive(url):
        return await asyncio.get_running_loop().run_in_executor(
            None, bench.main, argv + extra + ["--target", url])
    code = run_async(with_fake(fake, drive))
    return code, capsys.readouterr()


def test_core_count_calls_against_a_running_node(capsys):
    CountingCore.bench_done = False
    code, out = run_core_against(CountingCore, ["--count-calls"], capsys)
    assert code == 0, out.err
    lines = out.out.splitlines()
    i = lines.index("Python calls per committed entry (sys.setprofile call events, "
                    "every thread):")
    # 500 calls over the 500,000 entries RAFTFAST.BENCH committed.
    assert lines[i + 1].split() == ["node", "0", "(leader)", "0.001000", "(500", "calls", "/",
                                    "500,000)"]
    assert lines[i + 2].split() == ["most:", "driver.py:_tick", "250"]


def test_count_calls_needs_a_counting_node(capsys):
    code, out = run_core_against(FakeCore, ["--count-calls"], capsys)
    assert code == 1 and "committed" not in out.out
    assert "node(s) 0 do not report raftfast_python_calls" in out.err
    assert "RAFTFAST_COUNT_CALLS=1" in out.err


# ---- LocalCluster with stand-in nodes ---------------------------------------------------



def test_local_cluster_starts_measures_and_stops(monkeypatch):
    monkeypatch.setenv(NODE_MODULE_ENV, "tests.support.cluster_fake_node")
    monkeypatch.setenv("PYTHONPATH", REPO)
    ns = bench.build_parser().parse_args(["run", "--base-port", str(free_base_port(3))])

    async def main():
        async with LocalCluster(ns, leader_wait=20) as c:
            assert c.leader_id == 1 and os.path.isdir(c.data_dir)
            pids = list(c.pids.values())
            result, figs = await measure(Target.of_cluster(c), 0.3, 2, 4, 16)
        return c, pids, result, figs
    c, pids, result, figs = run_async(main())
    assert result.ops > 0 and not result.errors
    assert figs["entries"] > 0 and figs["server_cpu_s"] is not None
    assert not os.path.exists(c.data_dir) and c.nodes == []
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped: no process left behind


def test_local_cluster_reports_a_node_that_fails(monkeypatch):
    monkeypatch.setenv(NODE_MODULE_ENV, "tests.support.cluster_fake_node")
    monkeypatch.setenv("PYTHONPATH", REPO)
    monkeypatch.setenv("FAKE_FAIL_ID", "2")
    ns = bench.build_parser().parse_args(["run", "--base-port", str(free_base_port(3))])
    with pytest.raises(ClusterError, match="node 2 .* exited with code 1"):
        run_async(LocalCluster(ns, leader_wait=20).start())


def test_local_cluster_passes_extra_environment(monkeypatch):
    """LocalCluster(env=...) reaches every node process (the stand-in node
    fails on FAKE_FAIL_ID), on top of the launcher's own environment."""
    monkeypatch.setenv(NODE_MODULE_ENV, "tests.support.cluster_fake_node")
    monkeypatch.setenv("PYTHONPATH", REPO)
    monkeypatch.delenv("FAKE_FAIL_ID", raising=False)
    env = node_env({"FAKE_FAIL_ID": "3", "PYTHONUNBUFFERED": "0"})
    assert env["FAKE_FAIL_ID"] == "3" and env["PYTHONPATH"].endswith(REPO)
    assert "FAKE_FAIL_ID" not in node_env()
    ns = bench.build_parser().parse_args(["run", "--base-port", str(free_base_port(3))])
    with pytest.raises(ClusterError, match="node 3 .* exited with code 1"):
        run_async(LocalCluster(ns, leader_wait=20, env={"FAKE_FAIL_ID": "3"}).start())


# ---- against redis -----------------------------------------------------------------

def test_redis_server_command_line_is_its_most_durable_setting():
    argv = redis_server.server_argv("/bin/redis-server", 6400, "/tmp/d")
    assert argv[:5] == ["/bin/redis-server", "--port", "6400", "--bind", "127.0.0.1"]
    flags = dict(zip(argv[5::2], argv[6::2]))
    assert flags == {"--appendonly": "yes", "--appendfsync": "always", "--save": "",
                     "--dir": "/tmp/d"}


def test_redis_points_cover_every_load_of_the_sweep():
    points = bench_compare.with_value_sizes(bench_compare.grid("quick"), [64, 4096])
    [(p, loads)] = redis_server.redis_points(points)
    assert p["system"] == "redis" and p["nodes"] == 1 and p["fsync"] == "always"
    assert set(loads) == {load for _, ls in points for load in ls}


def test_ratio_to_redis_at_the_same_load():
    rows = synthetic_rows()
    # Redis at 50x16 (64 B): 20,000 ops in 2 s = 10,000/s; none at 1x1 or 8x1.
    res = Result("127.0.0.1:1", 2.0, 50, 16, 64, ops=20_000)
    rows.append(bench_report.make_row("redis", dict(nodes=1, transport="tcp", fsync="always"),
                                      res, {"cpu_s_per_m_entries": 30.0},
                                      redis_server.SETTINGS_NOTE))
    # A Redis row at 50x16 with another value size must not be used.
    res = Result("127.0.0.1:1", 2.0, 50, 16, 4096, ops=2)
    rows.append(bench_report.make_row("redis", dict(nodes=1), res, {}))
    redis_server.add_redis_ratios(rows)
    by_load = {(r["fsync"], r["clients"], r["max_batch_entries"]): r["ratio_to_redis"]
               for r in rows if r["system"] == "raftfast" and r["throughput"] is not None}
    assert by_load[("always", 50, 1024)] == 400.0     # 4,000,000/s over 10,000/s
    assert by_load[("never", 50, 1024)] == 400.0
    assert by_load[("always", 50, 16)] == 0.08        # 800/s over 10,000/s
    assert by_load[("always", 1, 1024)] is None and by_load[("never", 8, 1024)] is None
    assert all(r["ratio_to_redis"] is None for r in rows if r["system"] != "raftfast")


def test_ratio_column_in_table_and_csv(tmp_path):
    pytest.importorskip("rich")
    from rich.console import Console
    rows = synthetic_rows()
    res = Result("127.0.0.1:1", 2.0, 50, 16, 64, ops=20_000)
    rows.append(bench_report.make_row("redis", dict(nodes=1, transport="tcp", fsync="always"),
                                      res, {}, redis_server.SETTINGS_NOTE))
    redis_server.add_redis_ratios(rows)
    console = Console(file=io.StringIO(), width=220)
    console.print(bench_report.make_table(rows))
    text = console.file.getvalue()
    assert "x redis" in text and "400.00" in text and "appendfsync always" in text
    with open(bench_report.write_csv(rows, tmp_path / "r.csv"), newline="") as f:
        back = list(csv.DictReader(f))
    assert "ratio_to_redis" in back[0] and back[2]["ratio_to_redis"] == "400.0"
    assert back[-1]["note"] == redis_server.SETTINGS_NOTE


class Progress:
    """What sweep() uses of a rich Progress."""

    def __init__(self):
        self.advanced = 0
        self.console = self

    def update(self, task, description=None):
        pass

    def advance(self, task, n=1):
        self.advanced += n

    def print(self, text):
        raise AssertionError(text)


def compare_ns(base_port=7300):
    return bench.build_parser().parse_args(["compare", "--against", "redis",
                                            "--base-port", str(base_port)])


def test_against_redis_without_redis_server_says_skipped(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert redis_server.redis_server_path() is None
    points = redis_server.redis_points([(None, ((1, 1, None, 64), (50, 16, None, 4096)))])
    progress = Progress()
    rows = run_async(bench_compare.sweep(points, compare_ns(), 1.0, progress, None))
    assert [(r["system"], r["clients"], r["pipeline"], r["value_size"], r["throughput"],
             r["note"]) for r in rows] == \
        [("redis", 1, 1, 64, None, "skipped: redis-server not installed"),
         ("redis", 50, 16, 4096, None, "skipped: redis-server not installed")]
    assert progress.advanced == 2


def test_a_redis_server_that_exits_at_start_is_an_error_and_leaves_no_dir():
    server = redis_server.RedisServer(binary=shutil.which("false"))

    async def start():
        async with server:
            raise AssertionError("started")

    with pytest.raises(OSError, match="exited with code 1"):
        run_async(start())
    assert server.dir is None and server.proc.poll() == 1


@pytest.mark.multiprocess
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_against_a_real_redis_server():
    """Two short loads against a real redis-server: rows with throughput and
    the server's CPU per SET; the process is gone and its directory removed."""
    started, dirs = [], []
    real_init = redis_server.RedisServer.__aenter__

    async def record(self):
        started.append(self)
        out = await real_init(self)
        dirs.append(self.dir)
        return out

    points = redis_server.redis_points([(None, ((1, 1, None, 64), (4, 4, None, 64)))])
    progress = Progress()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(redis_server.RedisServer, "__aenter__", record)
        rows = run_async(bench_compare.sweep(points, compare_ns(), 0.3, progress, None))
    assert [(r["system"], r["clients"], r["pipeline"]) for r in rows] == \
        [("redis", 1, 1), ("redis", 4, 4)]
    for r in rows:
        assert r["throughput"] > 0 and r["errors"] == "" and r["note"] == \
            redis_server.SETTINGS_NOTE
        assert r["entries"] == r["ops"] and r["cpu_s_per_m_entries"] >= 0
        assert r["fsync"] == "always"
    # /proc counts CPU in 10 ms ticks: one short row may read none, two cannot both.
    assert sum(r["cpu_s_per_m_entries"] for r in rows) > 0
    [server] = started
    assert server.proc.poll() is not None and server.dir is None
    assert len(dirs) == 1 and not os.path.exists(dirs[0])


# ---- a real cluster --------------------------------------------------------------------

@pytest.mark.multiprocess
def test_bench_core_count_calls_on_a_real_cluster():
    """The nodes count their calls when started with --count-calls, and every
    node's line carries a figure (its size is the benchmark's business)."""
    argv = [sys.executable, "-m", "raftfast.bench", "core", "--seconds", "0.5",
            "--count-calls", "--base-port", str(free_base_port(3))]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    rows = [ln.split() for ln in lines if ln.startswith("  node ")]
    assert [r[2] for r in rows] == ["(leader)", "(follower)", "(follower)"], p.stdout
    for r in rows:
        assert float(r[3]) >= 0 and int(r[4].strip("(").replace(",", "")) > 0


@pytest.mark.multiprocess
def test_bench_run_against_a_real_cluster(tmp_path):
    out = tmp_path / "row.json"
    argv = [sys.executable, "-m", "raftfast.bench", "run", "--seconds", "1", "--clients", "4",
            "--pipeline", "4", "--base-port", str(free_base_port(3)), "--json", str(out)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "leader node" in p.stdout and "p99.9" in p.stdout
    assert "entries per AppendEntries" in p.stdout
    row = json.loads(out.read_text())
    assert row["system"] == "raftfast" and row["ops"] > 0 and row["errors"] == ""
    assert row["entries"] >= row["ops"] and row["cpu_s_per_m_entries"] > 0


# ---- against pysyncobj: its settings per load -----------------------------------------

def test_pysyncobj_settings_suit_each_load():
    from raftfast.bench import pysyncobj_tuning as tuning
    assert tuning.profile_for(1, 1) == tuning.profile_for(8, 1) == "unbatched"
    assert tuning.profile_for(50, 1) == tuning.profile_for(50, 16) == "batched"
    for conf in tuning.PROFILES.values():
        # PySyncObj's own rule: the election timeout exceeds three append periods.
        assert conf["raftMinTimeout"] > 3 * conf["appendEntriesPeriod"]
        assert conf["appendEntriesPeriod"] < 0.1         # its default adds up to 100 ms
    assert tuning.PROFILES["unbatched"]["appendEntriesUseBatch"] is False
    # The node's flags give back the same SyncObjConf arguments.
    import argparse
    p = argparse.ArgumentParser()
    tuning.add_arguments(p)
    for name, conf in tuning.PROFILES.items():
        assert tuning.conf_kwargs(p.parse_args(tuning.node_argv(name))) == conf
        assert all(f"{k}={v}" in tuning.describe(name) for k, v in conf.items())
    assert tuning.conf_kwargs(p.parse_args([])) == {}   # PySyncObj's defaults


def test_pysyncobj_points_one_cluster_per_node_count_and_settings():
    from raftfast.bench import pysyncobj_tuning as tuning
    points = bench_compare.with_value_sizes(bench_compare.grid("quick"), [64])
    out = bench_compare.pysyncobj_points(points)
    assert [(p["nodes"], p["pysyncobj_profile"]) for p, _ in out] == \
        [(3, "batched"), (3, "unbatched"), (5, "batched")]
    for p, loads in out:
        assert p["note"] == tuning.describe(p["pysyncobj_profile"])
        assert all(tuning.profile_for(c, pl) == p["pysyncobj_profile"]
                   for c, pl, _, _ in loads)
    assert {load for _, ls in out for load in ls} == {load for _, ls in points for load in ls}
    c = bench_compare.open_system("pysyncobj", out[1][0], compare_ns())
    assert c.settings == tuning.node_argv("unbatched")


def test_library_comparison_ratios_and_the_redis_yardstick(monkeypatch):
    # Stand-ins for the measured runs: raftfast 50,000 calls/s, PySyncObj
    # 20,000 (10,000 for the dict), Redis 40,000 SET/s; systems alternate.
    from raftfast.bench import library as bench_library

    calls = []

    def fake_run_one(system, machine, seconds, callers, fsync, base_port):
        calls.append((system, machine))
        rate = {"raftfast": 50_000.0, "pysyncobj": 20_000.0 if machine == "counter"
                else 10_000.0}[system]
        return {"system": system, "machine": machine, "fsync": fsync, "ops_per_s": rate,
                "p50_us": 1000.0, "p90_us": 1500.0, "p99_us": 3000.0}

    def fake_run_redis(seconds, callers):
        calls.append(("redis", callers))
        return {"system": bench_library.REDIS_SYSTEM, "machine": bench_library.REDIS_MACHINE,
                "fsync": "appendfsync always", "ops_per_s": 40_000.0, "p50_us": 800.0,
                "p90_us": None, "p99_us": 2000.0}

    monkeypatch.setattr(bench_library, "run_one", fake_run_one)
    monkeypatch.setattr(bench_library, "run_redis", fake_run_redis)
    rows = bench_library.run_library_comparison(rounds=2, callers=64, progress=lambda s: None,
                                                with_redis=True)
    assert calls[:5] == [("raftfast", "counter"), ("pysyncobj", "counter"),
                         ("raftfast", "dict"), ("pysyncobj", "dict"), ("redis", 64)]
    assert calls[5:7] == [("pysyncobj", "counter"), ("raftfast", "counter")]
    by = {(r["system"], r["machine"]): r for r in rows}
    assert by[("raftfast", "counter")]["vs_pysyncobj"] == 2.5
    assert by[("raftfast", "dict")]["vs_pysyncobj"] == 5.0
    assert by[("raftfast", "counter")]["vs_redis"] == 1.25
    assert by[("pysyncobj", "counter")]["vs_redis"] == 0.5
    redis_row = by[(bench_library.REDIS_SYSTEM, bench_library.REDIS_MACHINE)]
    assert redis_row["rounds"] == 2 and redis_row["p90_us"] is None

    calls.clear()
    rows = bench_library.run_library_comparison(rounds=1, progress=lambda s: None,
                                                with_redis=False)
    assert ("redis", 64) not in calls and all("vs_redis" not in r for r in rows)
