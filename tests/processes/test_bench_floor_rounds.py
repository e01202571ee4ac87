"""`bench compare`'s floor (the "2 of 3" arithmetic on made-up timings, and
that a measurement leaves nothing behind), the medians of several rounds,
the grids of loads with their value sizes, the one-client rows' distance to
the floor, and the table and ratio plot.  No test asserts a speed."""
import asyncio
import io
import os

import pytest
import uvloop

from raftfast.bench import cli as bench
from raftfast.bench import compare as bench_compare
from raftfast.bench import floor as bench_floor
from raftfast.bench import redis_server
from raftfast.bench import report as bench_report
from raftfast.bench import rounds as bench_rounds
from raftfast.bench.loadgen import Result


# ---- the floor ----------------------------------------------------------------------------

def test_second_of_three_completions():
    assert bench_floor.kth_completion(100, [130, 110, 190]) == 30   # 110, then 130
    assert bench_floor.kth_completion(100, [130, 110, 190], k=1) == 10
    assert bench_floor.kth_completion(100, [130, 110, 190], k=3) == 90
    assert bench_floor.kth_completion(0, [5, 5, 9]) == 5            # a tie
    for k in (0, 4):
        with pytest.raises(ValueError):
            bench_floor.kth_completion(0, [1, 2, 3], k=k)


def test_median_over_rounds_of_the_second_completion():
    rounds = [(0, [3, 1, 2]),        # 2
              (10, [20, 11, 50]),    # 10
              (100, [104, 200, 103]),  # 4
              (0, [7, 7, 7])]        # 7
    assert bench_floor.median_kth_completion(rounds) == 5.5
    assert bench_floor.median_kth_completion(rounds[:3]) == 4


def test_fsync_rounds_have_three_writers_each_and_leave_no_files(tmp_path):
    floor = bench_floor.FsyncFloor(str(tmp_path), 100)
    rounds = floor.run(5)
    assert len(rounds) == 5
    for start, ends in rounds:
        assert len(ends) == 3 and all(e >= start for e in ends)
    assert len(floor.cpu_ns) == 15 and all(c >= 0 for c in floor.cpu_ns)
    assert os.listdir(tmp_path) == []


def test_kth_completions_and_their_p99():
    rounds = [(0, [3, 1, 2]), (10, [15, 30, 11]), (5, [6, 6, 9])]
    assert bench_floor.kth_completions(rounds) == [1, 2, 5]
    assert bench_floor.p99([1, 2, 5]) == 5
    assert bench_floor.p99(list(range(1, 101))) == 99  # nearest rank: the 99th of 100


def test_floor_figures_and_their_line(tmp_path):
    f = bench_floor.measure_floor(64, directory=str(tmp_path), rounds=5, trips=10)
    assert f["one_client_ms"] == pytest.approx(f["fsync_2of3_ms"] + f["rtt_tcp_ms"], abs=1e-3)
    assert f["value_size"] == 64 and f["directory"] == str(tmp_path)
    assert min(f["fsync_2of3_ms"], f["rtt_unix_ms"], f["rtt_tcp_ms"]) > 0
    assert f["fsync_2of3_p99_ms"] >= f["fsync_2of3_ms"] and f["fsync_cpu_us"] >= 0
    line = bench_floor.format_floor(f)
    assert "2 of 3 concurrent append+fdatasync" in line and "one client >=" in line
    assert "p99" in line and "CPU" in line
    assert os.listdir(tmp_path) == []


# ---- grids and value sizes ---------------------------------------------------------------

def test_targets_grid_is_the_comparison_table():
    points = bench_compare.grid("targets")
    assert [p["nodes"] for p, _ in points] == [3, 5]
    for p, loads in points:
        assert (p["fsync"], p["transport"]) == ("always", "unix")
        assert loads == ((50, 16, None, 64), (50, 1, None, 64), (1, 1, None, 64),
                         (50, 16, None, 4096), (50, 1, None, 4096), (50, 16, None, 65536))
    # Sizes given on the command line do not change the grid's own.
    assert bench_compare.with_value_sizes(points, [8]) == points
    [(p, loads)] = redis_server.redis_points(points)
    assert set(loads) == set(bench_compare.TARGET_LOADS)


def test_value_sizes_sweep_every_load():
    points = [({"nodes": 3}, ((1, 1, None), (50, 16, None)))]
    assert bench_compare.with_value_sizes(points, [64, 4096]) == [
        ({"nodes": 3}, ((1, 1, None, 64), (1, 1, None, 4096), (50, 16, None, 64),
                        (50, 16, None, 4096)))]
    ns = bench.build_parser().parse_args(["compare", "--value-sizes", "64,65536"])
    points = bench_compare.build_points(ns)
    assert {load[3] for _, loads in points for load in loads} == {64, 65536}
    assert bench_compare.floor_sizes(points) == [64, 65536]       # 1x1 at both sizes
    ns = bench.build_parser().parse_args(["compare", "--value-size", "100"])
    assert {load[3] for _, loads in bench_compare.build_points(ns) for load in loads} == {100}


def test_floor_size_without_a_one_client_load():
    assert bench_compare.floor_sizes([({}, ((50, 16, None, 4096), (8, 1, None, 512)))]) == \
        [512]


# ---- medians of rounds ---------------------------------------------------------------------

def measured(system, clients, ops, p99, errors=None, size=64):
    res = Result("127.0.0.1:1", 2.0, clients, 1, size, ops=ops, errors=errors or {})
    r = bench_report.make_row(system, dict(nodes=3, transport="unix", fsync="always"), res,
                              {"server_cpu_s": ops / 1e4})
    r["p99_ms"] = p99
    return r


def failed(system, clients, note="failed: no leader"):
    r = dict.fromkeys(bench_report.COLUMNS)
    r.update(system=system, nodes=3, transport="unix", fsync="always", clients=clients,
             pipeline=1, value_size=64, note=note)
    return r


def test_median_of_each_figure_over_rounds():
    rounds = [[measured("raftfast", 1, 1000, 5.0), measured("redis", 1, 3000, 1.0)],
              [measured("raftfast", 1, 4000, 2.0, {"TIMEOUT": 1}),
               measured("redis", 1, 2000, 3.0)],
              [measured("raftfast", 1, 2000, 9.0, {"TIMEOUT": 2, "MOVED": 1}),
               measured("redis", 1, 1000, 2.0)]]
    raft, redis = bench_rounds.median_rows(rounds)
    assert raft["system"] == "raftfast" and redis["system"] == "redis"
    assert (raft["ops"], raft["throughput"], raft["p99_ms"]) == (2000, 1000.0, 5.0)
    assert (redis["ops"], redis["throughput"], redis["p99_ms"]) == (2000, 1000.0, 2.0)
    assert raft["rounds"] == redis["rounds"] == 3
    assert raft["errors"] == "MOVED=1;TIMEOUT=3" and redis["errors"] == ""
    assert raft["cpu_us_per_op"] == 100.0
    # The ratios come from the medians.
    redis_server.add_redis_ratios([raft, redis])
    assert raft["ratio_to_redis"] == 1.0 and raft["p99_ratio_to_redis"] == 2.5


def test_a_point_failed_in_some_rounds_says_so():
    rounds = [[measured("raftfast", 1, 1000, 5.0), failed("raftfast", 8)],
              [failed("raftfast", 1), failed("raftfast", 8)],
              [measured("raftfast", 1, 3000, 7.0), failed("raftfast", 8, "failed: timeout")]]
    one, eight = bench_rounds.median_rows(rounds)
    assert (one["clients"], one["rounds"], one["ops"]) == (1, 2, 2000)
    assert one["note"] == "1 of 3 rounds failed: no leader"
    assert (eight["clients"], eight["rounds"], eight["throughput"]) == (8, 0, None)
    assert eight["note"] == "failed: no leader"


def test_points_differ_by_settings_load_and_value_size():
    a = measured("raftfast", 1, 1000, 1.0)
    b = measured("raftfast", 1, 1000, 1.0, size=4096)
    c = dict(a, nodes=5)
    assert len(bench_rounds.median_rows([[a, b, c], [a, b, c]])) == 3


# ---- the one-client rows, the table, the plot -------------------------------------------

def test_one_client_rows_against_the_floor():
    rows = [measured("raftfast", 1, 1000, 5.0), measured("raftfast", 50, 1000, 5.0),
            measured("redis", 1, 1000, 2.0), measured("raftfast", 1, 1000, 5.0, size=4096),
            dict(measured("raftfast", 1, 1000, 5.0), fsync="never")]
    for r, p50 in zip(rows, (1.06, 3.0, 0.42, 2.0, 0.5)):
        r["p50_ms"] = p50
    bench_compare.add_floor(rows, {64: {"one_client_ms": 0.69}})
    # Only raftfast's one-client row under fsync always, at a size with a floor.
    assert [r["over_floor_ms"] for r in rows] == [0.37, None, None, None, None]
    rows[0]["p50_ms"] = 0.5
    bench_compare.add_floor(rows, {64: {"one_client_ms": 0.69}})
    assert rows[0]["over_floor_ms"] == -0.19


def test_table_has_the_new_columns_and_the_floor_note():
    pytest.importorskip("rich")
    from rich.console import Console
    rows = [measured("raftfast", 1, 1000, 5.0), measured("redis", 1, 2000, 2.0),
            measured("raftfast", 1, 1000, 5.0, size=4096)]
    rows[0]["p50_ms"], rows[1]["p50_ms"], rows[2]["p50_ms"] = 1.06, 0.42, 0.5
    redis_server.add_redis_ratios(rows)
    bench_compare.add_floor(rows, {64: {"one_client_ms": 0.69}, 4096: {"one_client_ms": 0.77}})
    console = Console(file=io.StringIO(), width=240)
    console.print(bench_report.make_table(rows))
    text = console.file.getvalue()
    for heading in ("MB/s", "CPU us/op", "x redis", "p50 x", "p99 x", "CPU x", "value"):
        assert heading in text
    assert "p50 = floor + 0.37 ms" in text and "p50 = floor - 0.27 ms" in text
    assert "64 B" in text and "2.52" in text          # p50 1.06 over 0.42


def test_size_labels():
    assert [bench_report.size_label(v) for v in (0, 64, 1024, 4096, 1536, 65536, 1 << 20)] == \
        ["0 B", "64 B", "1 KiB", "4 KiB", "1.5 KiB", "64 KiB", "1 MiB"]


def test_ratio_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image
    rows = [measured("raftfast", c, 1000 * c, 5.0, size=s) for c in (1, 50)
            for s in (64, 4096)]
    rows += [measured("redis", c, 2000 * c, 2.0, size=s) for c in (1, 50) for s in (64, 4096)]
    redis_server.add_redis_ratios(rows)
    path = bench_report.plot_ratio_to_redis(rows, str(tmp_path / "r.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    h, w, _ = image.imread(path).shape
    assert (w, h) == (800, 500)
    bench_report.plot_ratio_to_redis([], str(tmp_path / "empty.png"))
    assert os.path.getsize(tmp_path / "empty.png") > 0


# ---- rounds in the sweep ------------------------------------------------------------------

class Progress:
    def __init__(self):
        self.console = self
        self.lines = []

    def update(self, task, description=None):
        pass

    def advance(self, task, n=1):
        pass

    def print(self, text):
        self.lines.append(text)


def test_every_round_runs_every_system_in_the_same_order(monkeypatch):
    """Round by round: raftfast's point, then Redis's, then again."""
    order = []

    class System:
        def __init__(self, system):
            self.system = system

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            pass

    async def fake_measure(system, c, seconds, clients, pipeline, value_size, rate, loadgen):
        order.append((system, clients, value_size))
        res = Result("x", 1.0, clients, pipeline, value_size, ops=10)
        return res, {}

    monkeypatch.setattr(bench_compare, "open_system", lambda system, p, ns: System(system))
    monkeypatch.setattr(bench_compare, "measure_load", fake_measure)
    monkeypatch.setattr(redis_server, "redis_server_path", lambda: "/bin/true")
    ns = bench.build_parser().parse_args(["compare", "--against", "redis", "--rounds", "3"])
    points = [(bench_compare.grid("targets")[0][0], ((1, 1, None, 64), (50, 16, None, 4096)))]
    points += redis_server.redis_points(points)
    progress = Progress()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        rounds = runner.run(bench_compare.run_rounds(points, ns, 1.0, progress, None))
    one_round = [("raftfast", 1, 64), ("raftfast", 50, 4096), ("redis", 1, 64),
                 ("redis", 50, 4096)]
    assert order == one_round * 3 and len(rounds) == 3
    assert progress.lines == ["round 1 of 3", "round 2 of 3", "round 3 of 3"]
    rows = bench_rounds.median_rows(rounds)
    assert [(r["system"], r["rounds"]) for r in rows] == [("raftfast", 3), ("raftfast", 3),
                                                           ("redis", 3), ("redis", 3)]
