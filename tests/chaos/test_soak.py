"""The soak: a 5-node cluster under load for an hour, with snapshots,
voters replaced, and a rolling restart every ten minutes; nothing
acknowledged may be lost, the sampled history must be linearizable, and
the nodes' memory and file descriptors may not grow once the data set is
stable (tests/support/soak.py and soak_report.py say how each is judged).
Behind the `slow` marker:

    RAFTFAST_SOAK_REPORT=soak.json python -m pytest -m slow tests/chaos/test_soak.py -s

RAFTFAST_SOAK_MINUTES (default 60) and RAFTFAST_SOAK_ROLL_MINUTES (default
10) shorten it for a try (4 and 2 take about five minutes);
RAFTFAST_SOAK_SAMPLE_SECONDS (default 10) sets how often the nodes are
sampled.  The growth verdicts themselves are checked here on made-up
samples, in the default suite.
"""
import math
import os

import pytest

from tests.support.soak_report import (FD_MARGIN, PROCESS_SAMPLES, RSS_FLOOR_KB, WARMUP_AGE,
                                       growth_verdicts, process_verdicts, roll_verdicts)

MINUTES = float(os.environ.get("RAFTFAST_SOAK_MINUTES", "60"))
ROLL_MINUTES = float(os.environ.get("RAFTFAST_SOAK_ROLL_MINUTES", "10"))
SAMPLE_SECONDS = float(os.environ.get("RAFTFAST_SOAK_SAMPLE_SECONDS", "10"))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(int(MINUTES * 60) + 1200)
def test_soak_loses_nothing_and_does_not_grow(capsys):
    from tests.support.soak import SoakConfig, run_soak

    report = run_soak(SoakConfig(minutes=MINUTES, roll_minutes=ROLL_MINUTES,
                                 sample_seconds=SAMPLE_SECONDS))
    with capsys.disabled():
        print("\n" + report.text())
    if path := os.environ.get("RAFTFAST_SOAK_REPORT"):
        report.write_json(path)
    assert not report.errors, report.text()
    assert not report.lost and not report.wrong_reads, report.text()
    assert report.history.get("findings") == 0 and not report.findings, report.text()
    assert report.load["gave_up"] == 0, report.text()
    assert report.growth and all(v["ok"] for v in report.growth), report.text()
    assert report.rolls and all(v["ok"] for v in report.rolls), report.text()
    assert report.processes and all(v["ok"] for v in report.processes), report.text()
    # The run did what it says: load, a history checked, snapshots, both kinds
    # of operator action, and samples all along.
    # (soak.operate: an action at every half roll period before the last one)
    actions = math.ceil((MINUTES * 60 - 1) / (ROLL_MINUTES * 30)) - 1
    assert [e["action"] for e in report.events] == [
        "replace" if k % 2 else "roll" for k in range(1, actions + 1)], report.events
    assert report.load["writes"] > 1000 and report.history["ops_checked"] > 100, report.text()
    assert report.snapshots["taken"] > 0 and report.snapshots["installed"] > 0, report.text()
    assert len(report.samples) >= MINUTES * 60 / SAMPLE_SECONDS - 2, len(report.samples)


def settled_sample(t, rss_kb, fds, clients=0, age=WARMUP_AGE + 1, pid=100):
    return {"t": t, "nodes": {1: {"rss_kb": rss_kb, "fds": fds, "clients": clients,
                                  "age": age, "pid": pid, "id": 1}}}


def verdict(samples, metric):
    return next(v for v in growth_verdicts(samples, 90) if v["metric"] == metric)


def test_growth_verdicts_pass_a_flat_node_and_fail_a_growing_one():
    base = 100 * 1024
    flat = [settled_sample(t, base + (t % 3) * 100, 20) for t in range(0, 91, 10)]
    assert verdict(flat, "rss_kb")["ok"] and verdict(flat, "fds")["ok"]
    # RSS that keeps climbing, and one more fd every sample (a leak).
    growing = [settled_sample(t, base + t * 4096, 20 + t // 5) for t in range(0, 91, 10)]
    assert not verdict(growing, "rss_kb")["ok"]
    assert not verdict(growing, "fds")["ok"]
    # Below the floor, RSS may move (allocator noise on a small process).
    noisy = [settled_sample(t, base + (RSS_FLOOR_KB - 1024 if t >= 60 else 0), 20)
             for t in range(0, 91, 10)]
    assert verdict(noisy, "rss_kb")["ok"]


def test_growth_verdicts_count_fds_less_clients_and_skip_young_processes():
    # More fds on the node that leads the clients later is not growth.
    leader_later = [settled_sample(t, 100 * 1024, 20 + (8 if t >= 60 else 0),
                                   clients=8 if t >= 60 else 0) for t in range(0, 91, 10)]
    assert verdict(leader_later, "fds")["ok"]
    # A restarted process's first seconds are not measured; with nothing
    # settled in a third there is no verdict, and that is a failure.
    young = [settled_sample(t, 100 * 1024, 20, age=WARMUP_AGE - 1) for t in range(0, 91, 10)]
    v = verdict(young, "rss_kb")
    assert not v["ok"] and v["middle_samples"] == 0


def test_roll_verdicts_want_fds_back_at_their_level_after_each_roll():
    roll = [{"action": "replace", "at": 10.0, "seconds": 1.0},
            {"action": "roll", "at": 50.0, "seconds": 5.0}]
    back = [settled_sample(t, 100 * 1024, 20) for t in range(0, 91, 10)]
    assert [v["ok"] for v in roll_verdicts(back, roll, 90)] == [True]
    leaked = [settled_sample(t, 100 * 1024, 20 + (FD_MARGIN + 1 if t > 55 else 0))
              for t in range(0, 91, 10)]
    v, = roll_verdicts(leaked, roll, 90)
    assert not v["ok"] and (v["before"], v["after"]) == (20, 21 + FD_MARGIN)


def test_process_verdicts_catch_growth_within_a_process_that_restarts_hide():
    # Each process grows by 30 MB over its life, then a roll starts a new
    # one from the same size: the thirds see the same thing twice.
    samples = [settled_sample(t, 40 * 1024 + (t % 100) * 300, 20, pid=100 + t // 100)
               for t in range(0, 300, 5)]
    assert all(v["ok"] for v in growth_verdicts(samples, 300) if v["metric"] == "rss_kb")
    rss = [v for v in process_verdicts(samples) if v["metric"] == "rss_kb"]
    assert len(rss) == 3 and not any(v["ok"] for v in rss)
    flat = [settled_sample(t, 40 * 1024, 20, pid=100 + t // 100) for t in range(0, 300, 5)]
    assert all(v["ok"] for v in process_verdicts(flat))
    # Too short a life gives no verdict rather than a noisy one.
    short = [settled_sample(t, 40 * 1024 + t * 1024, 20) for t in range(PROCESS_SAMPLES - 1)]
    assert process_verdicts(short) == []
