"""`python -m raftfast.bench run --breakdown`: /proc and strace parsing,
the per-SET and per-batch arithmetic and table on fake data, a Tracer
driving a stand-in strace, and one short run against a real cluster."""
import asyncio
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import uvloop

from raftfast.bench import breakdown
from raftfast.bench import cli as bench
from raftfast.bench import syscalls
from raftfast.resp_client import parse_info
from raftfast.stage_times import STAGES, StageTimer, format_stages, parse_stages
from tests.support import REPO
from tests.support.harness import free_base_port

TICK = os.sysconf("SC_CLK_TCK")


def run_async(coro):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        return r.run(coro)


def fake_proc(root, pid, utime, stime, threads):
    """/proc/<pid>/stat and task/<tid>/status; threads: {tid: (voluntary, involuntary)}."""
    base = root / str(pid)
    (base / "task").mkdir(parents=True)
    # A command name with a space and a parenthesis, as a process may have.
    rest = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime),
            "0", "0", "20"]
    (base / "stat").write_text(f"{pid} (py thon) x) " + " ".join(rest) + "\n")
    for tid, (vol, invol) in threads.items():
        (base / "task" / str(tid)).mkdir()
        (base / "task" / str(tid) / "status").write_text(
            f"Name:\tpython\nPid:\t{tid}\nvoluntary_ctxt_switches:\t{vol}\n"
            f"nonvoluntary_ctxt_switches:\t{invol}\n")


# ---- /proc -----------------------------------------------------------------------------

def test_read_proc_sums_the_threads(tmp_path):
    fake_proc(tmp_path, 42, 3 * TICK, TICK, {42: (100, 7), 43: (20, 3)})
    (tmp_path / "42" / "task" / "44").mkdir()  # a thread that ended: no status
    assert breakdown.read_proc(42, root=str(tmp_path)) == {
        "cpu_s": 4.0, "ctx_voluntary": 120, "ctx_involuntary": 10}
    assert breakdown.read_proc(43, root=str(tmp_path)) is None


def test_read_proc_of_this_process():
    me = breakdown.read_proc(os.getpid())
    assert me["cpu_s"] > 0 and me["ctx_voluntary"] + me["ctx_involuntary"] > 0


# ---- INFO and the arithmetic -----------------------------------------------------------

INFO_LEADER = ("# Stats\r\nraftfast_ready_passes:{p}\r\nraftfast_fsync_wakeups:{w}\r\n"
               "raftfast_peer_reads:{r}\r\nraftfast_peer_frames_received:{f}\r\n"
               "raftfast_client_reads:{c}\r\nraftfast_proposals:{b}\r\nraftfast_fsyncs:{w}\r\n"
               "raftfast_appends_sent:{a}\r\nraftfast_entries_written:{e}\r\n"
               "raftfast_cpu_seconds:1.000\r\n")


def info(**kw):
    return parse_info(INFO_LEADER.format(**kw))


def snapshots():
    proc0 = {"cpu_s": 1.0, "ctx_voluntary": 10, "ctx_involuntary": 1}
    proc1 = {"cpu_s": 1.5, "ctx_voluntary": 1010, "ctx_involuntary": 101}
    before = {1: breakdown.node_sample(info(p=10, w=5, r=10, f=10, c=10, b=10, a=20, e=10),
                                       proc0),
              2: breakdown.node_sample(info(p=0, w=0, r=0, f=0, c=0, b=0, a=0, e=0), proc0),
              3: breakdown.node_sample({}, None)}  # reports nothing
    after = {1: breakdown.node_sample(info(p=3010, w=1005, r=3010, f=2010, c=1010, b=510,
                                           a=4020, e=1010), proc1),
             2: breakdown.node_sample(info(p=2000, w=1000, r=2000, f=2000, c=0, b=0, a=0,
                                           e=1000), proc1),
             3: breakdown.node_sample({}, None)}
    return before, after


def test_rows_per_set_and_per_batch():
    before, after = snapshots()
    rs = breakdown.rows(before, after, leader_id=1, sets=1000,
                        syscalls={1: {"write": 5000, "read": 4000}, 2: {"read": 2000}})
    assert [(r["node"], r["role"]) for r in rs] == [(1, "leader"), (2, "follower"),
                                                    (3, "follower")]
    lead, fol, mute = rs
    # The leader's batch is a proposal (500 of them), a follower's a peer message (2000).
    assert lead["batches"] == 500 and fol["batches"] == 2000
    assert lead["per_set"]["cpu_us"] == pytest.approx(500.0)
    assert lead["per_batch"]["cpu_us"] == pytest.approx(1000.0)
    assert lead["per_set"]["syscalls"] == 9 and fol["per_batch"]["syscalls"] == 1
    assert lead["per_set"]["ready_passes"] == 3 and lead["per_set"]["client_reads"] == 1
    assert lead["per_set"]["ctx_voluntary"] == 1 and lead["per_set"]["ctx_involuntary"] == 0.1
    assert fol["per_batch"]["fsync_wakeups"] == 0.5 and fol["per_set"]["entries_written"] == 1
    assert mute["batches"] is None and mute["per_batch"] is None and mute["per_set"] == {}


def test_rows_without_sets():
    before, after = snapshots()
    rs = breakdown.rows(before, after, leader_id=1, sets=0)
    assert all(r["per_set"] is None for r in rs)
    assert "syscalls" not in rs[0]["totals"]


def test_table_has_two_lines_per_node():
    before, after = snapshots()
    rs = breakdown.rows(before, after, 1, 1000, syscalls={1: {"write": 5000}})
    lines = breakdown.format_table(rs, 1000)
    body = [ln.split() for ln in lines[2:-1]]
    assert len(body) == 6
    assert body[0][:4] == ["leader", "1", "SET", "500.0"] and body[0][4] == "5.00"
    assert body[1][:3] == ["(500)", "batch", "1000.0"]
    assert body[2][:4] == ["follower", "2", "SET", "500.0"] and body[2][4] == "-"
    assert body[5][:2] == ["(n/a)", "batch"] and set(body[5][2:]) == {"-"}
    assert len(lines[1].split()) == 2 + len(breakdown.METRICS)
    syscall_lines = breakdown.format_syscalls({1: {"write": 5000, "read": 4000}}, rs, 1000)
    assert syscall_lines[1] == "  leader 1: write 5.00, read 4.00"
    assert syscall_lines[2] == "  follower 2: n/a"


# ---- stage times -----------------------------------------------------------------------

class FakeStorage:
    def __init__(self):
        self.appended = []

    def append(self, first, block, count):
        self.appended.append((first, block, count))

    def sync(self):
        raise OSError("disk gone")


def test_stage_timer_counts_calls_and_passes_results_and_errors():
    timer, storage = StageTimer(), FakeStorage()
    timer.install_storage(storage)
    storage.append(1, b"x", 1)
    storage.append(2, b"y", 1)
    with pytest.raises(OSError):
        storage.sync()  # a failure still counts, and still propagates
    assert storage.appended == [(1, b"x", 1), (2, b"y", 1)]
    assert timer.calls["wal_write"] == 2 and timer.calls["fsync"] == 1
    assert timer.ns["wal_write"] > 0 and timer.calls["send"] == 0
    stages = parse_stages(timer.stats()["raftfast_stage_times"])
    assert list(stages) == list(STAGES)
    assert stages["wal_write"] == (timer.ns["wal_write"], 2)


def test_stage_times_in_the_breakdown():
    text = format_stages({"send": 4000, "fsync": 0}, {"send": 2, "fsync": 0})
    assert parse_stages(text + ",junk,apply=x:1") == {"send": (4000, 2), "fsync": (0, 0)}
    before = {1: breakdown.node_sample({"raftfast_proposals": "0",
                                        "raftfast_stage_times": "send=1000:1,fsync=0:0"}, None)}
    after = {1: breakdown.node_sample({"raftfast_proposals": "10",
                                       "raftfast_stage_times": "send=41000:21,fsync=0:0"},
                                      None)}
    rs = breakdown.rows(before, after, 1, 10)
    assert breakdown.format_stages(rs)[1] == "  leader 1: fsync 0.0 (-), send 4.0 (2.0)"


# ---- strace ----------------------------------------------------------------------------

STRACE_SUMMARY = textwrap.dedent("""\
    % time     seconds  usecs/call     calls    errors syscall
    ------ ----------- ----------- --------- --------- ----------------
     51.20    0.010240           2      5120           write
     30.10    0.006020           1      4500       310 read
     18.70    0.003740           1      3400           epoll_pwait
    ------ ----------- ----------- --------- --------- ----------------
    100.00    0.020000           1     13020       310 total
    """)


def test_parse_strace_summary():
    assert syscalls.parse_summary(STRACE_SUMMARY) == {
        "write": 5120, "read": 4500, "epoll_pwait": 3400}
    assert syscalls.parse_summary("strace: Process 7 detached\n") == {}


FAKE_STRACE = """\
import signal, sys, time
out = sys.argv[sys.argv.index("-o") + 1]
pid = sys.argv[sys.argv.index("-p") + 1]
def done(*_):
    with open(out, "w") as f:
        f.write(SUMMARY)
    sys.exit(0)
signal.signal(signal.SIGINT, done)
print(f"strace: Process {pid} attached", file=sys.stderr, flush=True)
while True:
    time.sleep(60)
"""


def test_tracer_with_a_stand_in_strace(tmp_path):
    exe = tmp_path / "strace"
    exe.write_text(f"#!{sys.executable}\nSUMMARY = {STRACE_SUMMARY!r}\n" + FAKE_STRACE)
    exe.chmod(0o755)

    async def go():
        t = syscalls.Tracer({1: 101, 2: 102}, str(exe))
        await t.start()
        workdir = t.dir
        counts = await t.stop()
        return counts, workdir

    counts, workdir = run_async(go())
    assert counts[1]["write"] == 5120 and counts[2]["epoll_pwait"] == 3400
    assert not os.path.exists(workdir)


def test_tracer_reports_a_failed_attach(tmp_path):
    exe = tmp_path / "strace"
    exe.write_text("#!/bin/sh\necho 'strace: attach: Operation not permitted' >&2\nexit 1\n")
    exe.chmod(0o755)

    async def go():
        t = syscalls.Tracer({1: 101}, str(exe))
        try:
            await t.start()
        finally:
            t.close()

    with pytest.raises(RuntimeError, match="node 1"):
        run_async(go())


# ---- flags and a real cluster ----------------------------------------------------------

def test_breakdown_flags(capsys):
    p = bench.build_parser()
    ns = p.parse_args(["run"])
    assert (ns.breakdown, ns.breakdown_syscalls) == (False, False)
    ns = p.parse_args(["run", "--breakdown", "--breakdown-syscalls", "--breakdown-stages"])
    assert (ns.breakdown, ns.breakdown_syscalls, ns.breakdown_stages) == (True, True, True)
    for flag in ("--breakdown-syscalls", "--breakdown-stages"):
        with pytest.raises(SystemExit) as e:
            bench.main(["run", flag])
        assert e.value.code == 2 and "goes with --breakdown" in capsys.readouterr().err
    assert bench.STAGE_TIMES_ENV == {"RAFTFAST_STAGE_TIMES": "1"}


@pytest.mark.multiprocess
def test_breakdown_on_a_real_cluster():
    """Every node has its two lines with figures; with strace installed the
    system calls by kind follow (or a note says why they were skipped)."""
    argv = [sys.executable, "-m", "raftfast.bench", "run", "--seconds", "1", "--clients", "1",
            "--pipeline", "1", "--fsync", "never", "--breakdown", "--breakdown-syscalls",
            "--breakdown-stages",
            "--base-port", str(free_base_port(3))]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("breakdown over"))
    body = [ln.split() for ln in lines[start + 2:start + 8]]
    assert [r[0] for r in body[::2]] == ["leader", "follower", "follower"], p.stdout
    assert all(r[1] == "batch" for r in body[1::2]), p.stdout
    for r in body[::2]:
        assert r[2] == "SET" and float(r[3]) > 0  # CPU µs per SET
        assert float(r[7]) > 0  # Ready passes per SET
    if shutil.which("strace") is None:
        assert "strace is not installed" in p.stdout
    elif "strace could not attach" not in p.stdout:
        assert "system calls per SET by kind:" in p.stdout
        assert float(body[0][4]) > 0 and syscalls.SLOWDOWN_NOTE in p.stdout
    i = lines.index("time in each stage, us per batch (us per call), nested stages overlap:")
    assert [ln.split()[0] for ln in lines[i + 1:i + 4]] == ["leader", "follower", "follower"]
    assert "client_read" in lines[i + 1] and "wal_write" in lines[i + 2]
