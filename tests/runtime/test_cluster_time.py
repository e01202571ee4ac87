"""Cluster time on one node (ClusterClock) and where a restarted node
takes it up again (recovered_time)."""
from raftfast._entrylog import EntryLog, encode_entries
from raftfast.core.messages import ENTRY_NORMAL
from raftfast.runtime.cluster_time import ClusterClock, recovered_time, time_entry


def test_the_leader_time_is_its_clock_unless_a_peer_saw_later():
    wall = [1_000]
    c = ClusterClock(lambda: wall[0])
    assert c.advance() == 1_000
    c.heard(5_000)             # a vote answer from a node that saw a faster leader
    assert c.advance() == 5_000
    wall[0] = 6_000
    assert c.advance() == 6_000
    c.heard(10)                # older news changes nothing
    assert c.seen == 6_000


def test_a_batch_is_stamped_only_when_the_time_moved_and_always_after_an_election():
    wall = [1_000]
    c = ClusterClock(lambda: wall[0])
    assert c.stamp_due() == 1_000
    assert c.stamp_due() == 0          # the same millisecond: the entries before carry it
    wall[0] = 1_001
    assert c.stamp_due() == 1_001
    c.new_term()
    assert c.stamp_due() == 1_001      # a new leader's first batch says its time


def block(*entries):
    return b"".join(entries)


def test_a_restarted_node_takes_the_last_time_in_its_log():
    log = EntryLog(11)
    cmd = encode_entries([(2, ENTRY_NORMAL, b"x")])
    log.append(11, block(time_entry(700), cmd, time_entry(900)) + cmd * 5000)
    assert recovered_time(log, None, window=64) == 900


def test_without_a_time_in_its_log_it_takes_its_state_machines():
    class Snapshotted:
        time_ms = 1234

    log = EntryLog(1)
    log.append(1, encode_entries([(1, ENTRY_NORMAL, b"x")] * 10))
    assert recovered_time(log, Snapshotted()) == 1234
    assert recovered_time(EntryLog(1), object()) == 0
