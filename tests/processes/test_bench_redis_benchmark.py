"""`bench --loadgen redis-benchmark` and the comparison with Redis: the
tool's CSV, the request count from a calibration run, a stand-in
redis-benchmark (a shell script) for what a run does with the tool's output
and its failures, the one-line exit when the tool is missing, the ratio
fields, and one short real `compare --loadgen redis-benchmark --rounds 2`
where redis-benchmark and redis-server are installed."""
import asyncio
import json
import os
import shutil
import stat

import pytest
import uvloop

from raftfast.bench import cli as bench
from raftfast.bench import compare as bench_compare
from raftfast.bench import redis_benchmark as rb
from raftfast.bench import redis_server
from raftfast.bench import report as bench_report
from raftfast.bench.loadgen import Result
from tests.support.harness import free_base_port

# Recorded from redis-benchmark 7.0.15 against redis-server (appendfsync always).
SAMPLE_CSV = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
    '"SET","5319.15","0.708","0.296","0.631","1.159","2.711","4.391"\n')


def run_async(coro):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        return r.run(coro)


# ---- the tool's output and command line ------------------------------------------

def test_parse_recorded_csv():
    f = rb.parse_csv(SAMPLE_CSV)
    assert (f.test, f.rps, f.avg, f.min, f.p50, f.p95, f.p99, f.max) == \
        ("SET", 5319.15, 0.708, 0.296, 0.631, 1.159, 2.711, 4.391)


def test_parse_skips_lines_that_are_not_rows():
    text = "WARNING: Could not fetch server CONFIG\n" + SAMPLE_CSV.replace(
        '"SET"', '"PING_INLINE","1.0","1","1","1","1","1","1"\n"SET"', 1)
    assert rb.parse_csv(text).rps == 5319.15
    assert rb.parse_csv(text, test="PING_INLINE").rps == 1.0


@pytest.mark.parametrize("text,fragment", [
    ("", "no SET row"),
    (SAMPLE_CSV.splitlines()[0] + "\n", "no SET row"),
    (SAMPLE_CSV.replace('"5319.15"', '"fast"'), "bad SET row"),
    (SAMPLE_CSV.replace(',"max_latency_ms"', ''), "bad SET row"),
])
def test_parse_refuses_what_is_not_a_result(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        rb.parse_csv(text)


def test_command_line_over_tcp_and_unix():
    argv = rb.benchmark_argv("/usr/bin/redis-benchmark", "tcp://127.0.0.1:7301", 50, 16,
                             4096, 123456)
    assert argv == ["/usr/bin/redis-benchmark", "-h", "127.0.0.1", "-p", "7301", "-t", "set",
                    "-c", "50", "-P", "16", "-d", "4096", "-n", "123456", "-r", "1000000",
                    "--csv"]
    argv = rb.benchmark_argv("rb", "unix:///tmp/x.sock", 1, 1, 64, 10)
    assert argv[1:3] == ["-s", "/tmp/x.sock"] and "-h" not in argv


# ---- how many requests ---------------------------------------------------------------

def test_calibration_stops_once_a_run_is_long_enough():
    assert rb.next_calibration_count(1000, 0.25, 0.25) is None
    assert rb.next_calibration_count(1000, 3.0, 0.25) is None


def test_calibration_grows_between_2x_and_16x():
    assert rb.next_calibration_count(1000, 0.2, 0.25) == 2000          # near: at least 2x
    assert rb.next_calibration_count(1000, 0.05, 0.25) == 6000         # 5x, with 20% spare
    assert rb.next_calibration_count(1000, 0.001, 0.25) == 16000       # capped
    assert rb.next_calibration_count(1000, 0.0, 0.25) == 16000


def test_requests_for_the_wanted_seconds():
    assert rb.requests_for(10_000.0, 2.0, 50, 16) == 20_000
    assert rb.requests_for(1_234.4, 1.0, 1, 1) == 1234
    # Too few for the connections: every connection gets a few pipelines.
    assert rb.requests_for(100.0, 1.0, 50, 16) == 50 * 16 * rb.MIN_REQUESTS_PER_CONNECTION


# ---- a stand-in redis-benchmark ----------------------------------------------------------

def fake_binary(tmp_path, body):
    """A redis-benchmark stand-in: a shell script that appends its arguments
    to calls.txt, then runs body."""
    path = tmp_path / "redis-benchmark"
    path.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls.txt\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def calls(tmp_path):
    return [ln.split() for ln in (tmp_path / "calls.txt").read_text().splitlines()]


def test_a_point_calibrates_then_runs_for_the_wanted_seconds(tmp_path):
    binary = fake_binary(tmp_path, f"cat <<'EOF'\n{SAMPLE_CSV}EOF")
    snapshots = []

    async def between():
        snapshots.append(len(calls(tmp_path)))
        return f"snapshot {len(snapshots)}"

    result, before, after = run_async(rb.run_point("tcp://127.0.0.1:1", 2.0, 50, 16, 64,
                                                   between=between, binary=binary))
    runs = calls(tmp_path)
    counts = [int(a[a.index("-n") + 1]) for a in runs]
    # Calibration runs first (each larger than the last), then the timed run
    # with the requests that last 2 s at the calibrated 5319.15/s.
    assert len(runs) >= 2 and counts[:-1] == sorted(counts[:-1])
    assert counts[0] == max(rb.MIN_CALIBRATION, 50 * 16 * 2)
    assert counts[-1] == rb.requests_for(5319.15, 2.0, 50, 16) == 10638
    # The servers are snapshotted around the timed run only.
    assert snapshots == [len(runs) - 1, len(runs)]
    assert (before, after) == ("snapshot 1", "snapshot 2")
    assert result.ops == 10638 and result.throughput == 5319.15
    assert result.seconds == pytest.approx(10638 / 5319.15)
    assert result.latency_ms()["p99"] == 2.711 and result.rate is None
    row = bench_report.make_row("raftfast", {"nodes": 3}, result,
                                {"server_cpu_s": 0.5, "server_sys_s": 0.2},
                                loadgen="redis-benchmark")
    assert row["loadgen"] == "redis-benchmark" and row["p95_ms"] == 1.159
    assert row["p90_ms"] is None and row["avg_ms"] == 0.708
    assert row["mb_per_s"] == round(5319.15 * 64 / 1e6, 3)
    assert row["cpu_us_per_op"] == round(0.5 * 1e6 / 10638, 2)
    assert row["sys_us_per_op"] == round(0.2 * 1e6 / 10638, 2)


def test_a_refusing_server_fails_the_point_with_its_words(tmp_path):
    binary = fake_binary(tmp_path, 'echo "Error from server: MOVED 0 127.0.0.1:7301" >&2\n'
                                   'echo "WARNING: Could not fetch server CONFIG" >&2\nexit 1')
    with pytest.raises(rb.RedisBenchmarkError, match="code 1: Error from server: MOVED 0"):
        run_async(rb.run_point("tcp://127.0.0.1:1", 1.0, 1, 1, 64, binary=binary))


def test_no_result_fails_the_point(tmp_path):
    binary = fake_binary(tmp_path, "echo nothing here")
    with pytest.raises(ValueError, match="no SET row"):
        run_async(rb.run_point("tcp://127.0.0.1:1", 1.0, 1, 1, 64, binary=binary))


# ---- the command line ----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["compare", "--loadgen", "redis-benchmark"],
    ["compare", "--targets", "--loadgen", "redis-benchmark", "--rounds", "3"],
    ["run", "--loadgen", "redis-benchmark"],
])
def test_without_redis_benchmark_one_line_and_exit_2(argv, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert "redis-benchmark is not on PATH" in err


@pytest.mark.parametrize("argv,fragment", [
    (["compare", "--targets", "--value-sizes", "64,4096"], "--value-sizes is for"),
    (["compare", "--value-sizes", "64,4k"], "not a list of byte counts"),
    (["compare", "--value-sizes", "64,-1"], "must be >= 0"),
    (["compare", "--value-size", "128", "--value-sizes", "64"], "not allowed with"),
    (["compare", "--rounds", "0"], "--rounds"),
    (["compare", "--loadgen", "wrk"], "invalid choice"),
    (["compare", "--targets", "--quick"], "not allowed with"),
    (["run", "--loadgen", "redis-benchmark", "--rate", "100"], "closed loops only"),
    (["run", "--loadgen", "redis-benchmark", "--breakdown"], "built-in load generator"),
])
def test_bad_usage(argv, fragment, monkeypatch, tmp_path, capsys):
    fake_binary(tmp_path, "exit 0")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(bench, "missing_packages", lambda names: [])
    monkeypatch.setattr(bench_compare, "main", lambda ns: pytest.fail("compare ran"))
    monkeypatch.setattr(bench, "cmd_run", lambda ns: pytest.fail("run ran"))
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and fragment in err, err


def test_compare_flags(monkeypatch):
    ns = bench.build_parser().parse_args(["compare"])
    assert (ns.loadgen, ns.rounds, ns.value_sizes, ns.value_size) == ("python", 1, None, 64)
    ns = bench.build_parser().parse_args(["compare", "--targets", "--loadgen",
                                          "redis-benchmark", "--rounds", "3"])
    assert (ns.grid, ns.loadgen, ns.rounds) == ("targets", "redis-benchmark", 3)
    ns = bench.build_parser().parse_args(["compare", "--value-sizes", "64,4096,65536,64"])
    assert ns.value_sizes == [64, 4096, 65536]
    # --targets brings the Redis rows with it.
    seen = []
    monkeypatch.setattr(bench, "missing_packages", lambda names: [])
    monkeypatch.setattr(bench_compare, "main", lambda ns: seen.append(ns.against) or 0)
    assert bench.main(["compare", "--targets"]) == 0 and seen == [["redis"]]


# ---- ratios ----------------------------------------------------------------------------

def row(system, clients, pipeline, size, ops, p50, p99, cpu_s, nodes=3):
    res = Result("127.0.0.1:1", 2.0, clients, pipeline, size, ops=ops)
    r = bench_report.make_row(system, dict(nodes=nodes, transport="unix", fsync="always"),
                              res, {"server_cpu_s": cpu_s})
    r.update(p50_ms=p50, p99_ms=p99)
    return r


def test_ratios_to_redis_at_the_same_load_and_value_size():
    rows = [row("raftfast", 50, 1, 64, 10_000, 4.0, 8.0, 0.9),
            row("raftfast", 50, 1, 4096, 5_000, 6.0, 20.0, 1.0),
            row("raftfast", 1, 1, 64, 1_000, 1.0, 5.0, 1.0),
            row("redis", 50, 1, 64, 20_000, 2.0, 4.0, 0.5, nodes=1),
            row("redis", 50, 1, 4096, 10_000, 3.0, 10.0, 0.5, nodes=1)]
    redis_server.add_redis_ratios(rows)
    r = rows[0]
    # 5,000/s over 10,000/s; p50 4 over 2; p99 8 over 4; CPU 90 us over 25 us.
    assert r["cpu_us_per_op"] == 90.0 and rows[3]["cpu_us_per_op"] == 25.0
    assert (r["ratio_to_redis"], r["p50_ratio_to_redis"], r["p99_ratio_to_redis"],
            r["cpu_ratio_to_redis"]) == (0.5, 2.0, 2.0, 3.6)
    r = rows[1]
    assert (r["ratio_to_redis"], r["p50_ratio_to_redis"], r["p99_ratio_to_redis"],
            r["cpu_ratio_to_redis"]) == (0.5, 2.0, 2.0, 4.0)
    # No Redis row at 1x1: no ratios; Redis rows carry none.
    assert all(rows[2][name] is None for name, _ in redis_server.RATIOS)
    assert all(rows[i][name] is None for i in (3, 4) for name, _ in redis_server.RATIOS)
    assert rows[1]["mb_per_s"] == round(2_500 * 4096 / 1e6, 3)


# ---- a real run ----------------------------------------------------------------------------

@pytest.mark.multiprocess
@pytest.mark.skipif(shutil.which("redis-benchmark") is None or shutil.which("redis-server")
                    is None, reason="redis-benchmark or redis-server not installed")
def test_compare_with_redis_benchmark_against_redis(monkeypatch, tmp_path, capsys):
    """One load, 3 nodes and Redis, two rounds, driven by redis-benchmark:
    rows with the medians of two rounds, every ratio, the floor above the
    table and in results.json, and the ratio plot."""
    pytest.importorskip("rich")
    pytest.importorskip("matplotlib")
    base = dict(bench_compare.grid("quick")[0][0])
    monkeypatch.setattr(bench_compare, "grid", lambda name: [(base, ((4, 4, None),))])
    monkeypatch.setattr(bench_compare.bench_floor, "FSYNC_ROUNDS", 20)
    ns = bench.build_parser().parse_args(
        ["compare", "--against", "redis", "--loadgen", "redis-benchmark", "--rounds", "2",
         "--seconds", "0.3", "--out", str(tmp_path), "--base-port", str(free_base_port(3))])
    assert bench_compare.main(ns) == 0
    out = capsys.readouterr().out
    assert "median of 2" in out and "redis-benchmark" in out and "2 of 3 concurrent" in out
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["meta"]["loadgen"] == "redis-benchmark" and doc["meta"]["rounds"] == 2
    assert doc["meta"]["floor"]["64"]["one_client_ms"] > 0
    [raft, redis] = doc["rows"]
    assert (raft["system"], redis["system"]) == ("raftfast", "redis")
    for r in (raft, redis):
        assert r["rounds"] == 2 and r["errors"] == "" and r["loadgen"] == "redis-benchmark"
        assert r["throughput"] > 0 and r["mb_per_s"] > 0 and r["server_cpu_s"] is not None
    # /proc counts CPU in clock ticks (10 ms): a short Redis run may show none.
    assert raft["cpu_us_per_op"] > 0 and redis["cpu_us_per_op"] is not None
    # The kernel's part of it (from /proc for both; the nodes' fsyncs alone
    # are more than one 10 ms tick over the run).
    assert raft["sys_us_per_op"] > 0
    assert redis["sys_us_per_op"] is not None
    assert all(raft[name] is not None for name, _ in redis_server.RATIOS)
    assert raft["ratio_to_redis"] > 0 and raft["p50_ratio_to_redis"] > 0
    with open(tmp_path / "ratio_to_redis.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
