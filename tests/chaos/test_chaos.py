"""Chaos against real node processes: faults from a proxy on every peer link
and from signals, concurrent redis-py clients, and a linearizability check
of everything they saw (tests/support/chaos.py says what is checked).

The default run has a short schedule on a 3-node and on a 5-node cluster,
and one on a 3-node cluster whose peers prove the cluster secret and talk
mutual TLS (transport "tls").
The long run is behind the `chaos` marker:

    RAFTFAST_CHAOS_MINUTES=10 RAFTFAST_CHAOS_REPORT=chaos.json python -m pytest -m chaos

RAFTFAST_CHAOS_SEED picks the first seed of either run (each schedule then
takes the next one); a failing schedule's report names its seed.
"""
import os

import pytest

from tests.support.chaos import Report, ScheduleConfig, report_path, run_chaos, run_schedule

pytestmark = pytest.mark.multiprocess

SEED = int(os.environ.get("RAFTFAST_CHAOS_SEED", "1"))
MINUTES = float(os.environ.get("RAFTFAST_CHAOS_MINUTES", "10"))
SHORT_SECONDS = 20.0


def show(report):
    print("\n" + report.text())
    if path := report_path():
        report.write_json(path)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("nodes,transport,seed", [(3, "unix", SEED), (5, "tcp", SEED + 1),
                                                  (3, "tls", SEED + 2)])
def test_short_chaos_run_finds_no_anomaly(nodes, transport, seed):
    result = run_schedule(ScheduleConfig(nodes=nodes, transport=transport, seed=seed,
                                         seconds=SHORT_SECONDS))
    report = Report()
    report.add(result)
    print(report.text())  # shown with -s, and on failure
    assert not report.errors, report.text()
    assert report.violations == 0 and report.inconclusive == 0, report.text()
    assert report.lost == 0 and report.duplicated == 0 and report.unexpected == 0, report.text()
    assert report.replica_disagreements == 0, report.text()
    # The run did what it says: faults of most kinds, and a real history.
    assert len(result.faults) >= 6, result.faults
    assert {"kill", "kill_leader", "kill_all"} & set(result.faults), result.faults
    assert report.ops_ok >= 500 and report.keys_checked >= 10, report.text()
    assert report.ops_checked >= report.ops_recorded, report.text()
    # Snapshots were taken under the faults, and some node got one by InstallSnapshot.
    assert report.snapshots.get("snapshots_taken", 0) > 0, report.text()


@pytest.mark.chaos
@pytest.mark.timeout(int(MINUTES * 60) + 900)
def test_long_chaos_run_finds_no_anomaly(capsys):
    report = run_chaos(MINUTES * 60, seed=SEED)
    with capsys.disabled():
        show(report)
    assert report.clean, report.text()
