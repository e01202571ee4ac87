"""Taking snapshots on one node (its own majority), on a simulated loop and
clock: a snapshot every --snapshot-entries applied entries, written step by
step from the loop and synced off it, the log compacted behind it with the
trailing margin, a failure logged and retried after its delay, 0 meaning
never."""
import os

from raftfast._kv import OP_SET, encode_commands
from raftfast.runtime.snapshot import load_snapshot
from raftfast.runtime.storage import Storage

from tests.support.simdriver import SimDrivers


def run_node(tmp_path, body, **knobs):
    """One node on a fresh data dir: run body(sim, driver, write, written),
    close; returns what body returned (the storage is closed)."""
    with SimDrivers(tmp_path, **knobs) as sim:
        d = sim.wait_leader()
        written = []  # (index, key, value) of every SET, in index order

        def write(lo, hi):
            answers = []
            cmds = [(OP_SET, [b"k%d" % (j % 150), b"v%d" % j]) for j in range(lo, hi)]
            last = d.propose(encode_commands(cmds), len(cmds), answers.append)
            for n, (_, (k, v)) in enumerate(cmds):
                written.append((last - len(cmds) + 1 + n, k, v))
            sim.loop.run_until(lambda: answers, 1.0, "the write's answer")

        return body(sim, d, write, written)


def state_at(written, index):
    return {k: v for i, k, v in written if i <= index}  # later SETs win


def test_snapshots_are_taken_and_the_log_compacted_behind_them(tmp_path):
    def body(sim, d, write, written):
        for lo in range(0, 600, 20):
            write(lo, lo + 20)
        sim.loop.run_until(lambda: d.snapshots.compactions >= 2, 5.0, "two compactions")
        return (d.snapshots.taken, d.core.snapshot_index, d.core.log.snap_index,
                d.snapshots.stats(), list(written))

    taken, snap, first, stats, written = run_node(
        tmp_path, body, snapshot_entries=100, snapshot_trailing=30)
    assert taken >= 2 and snap >= 200
    # The margin behind the snapshot stays in the log.
    assert 0 < first <= snap - 30
    assert stats["raftfast_snapshots_taken"] == taken and stats["raftfast_compactions"] >= 2
    # The newest snapshot file holds exactly the state at its index, and the
    # data dir recovers from it.
    with Storage.open(str(tmp_path / "n1"), 1, "raftfast") as st:
        path, meta = st.latest_snapshot()
        assert st.snap_index == meta.index >= snap
        kv, _ = load_snapshot(path)
        assert dict(kv.items()) == state_at(written, meta.index)
        # ... and the log after it.
        assert st.entry_log.first_index == meta.index + 1
        assert st.entry_log.last_index >= max(i for i, _, _ in written)


def test_a_failed_snapshot_is_logged_and_retried_after_its_delay(tmp_path, caplog):
    def body(sim, d, write, written):
        real = d.storage.snapshot_path
        d.storage.snapshot_path = lambda i: os.path.join(str(tmp_path), "no-such-dir", "x.snap")
        write(0, 60)
        failed_at = sim.loop.run_until(lambda: d.snapshots.failures >= 1, 1.0, "a failure")
        assert d.snapshots.taken == 0
        write(60, 80)  # the node goes on serving
        d.storage.snapshot_path = real
        sim.loop.advance(failed_at + d.snapshots.RETRY_S - 0.05 - sim.loop.now)
        assert d.snapshots.taken == 0 and d.snapshots.failures == 1  # not before the delay
        retried_at = sim.loop.run_until(lambda: d.snapshots.taken >= 1, 1.0, "the retry")
        assert retried_at >= failed_at + d.snapshots.RETRY_S
        return d.snapshots.failures, d.core.snapshot_index

    failures, snap = run_node(tmp_path, body, snapshot_entries=50, snapshot_trailing=0)
    assert failures == 1 and snap >= 50
    assert any("snapshot failed" in r.getMessage() for r in caplog.records)


def test_zero_means_never(tmp_path):
    def body(sim, d, write, written):
        for lo in range(0, 300, 50):
            write(lo, lo + 50)
        sim.loop.advance(10.0)  # every tick of ten seconds had its chance
        return d.snapshots.taken, d.core.snapshot_index, d.core.log.snap_index

    assert run_node(tmp_path, body, snapshot_entries=0) == (0, 0, 0)
    snap_dir = tmp_path / "n1" / "snap"
    assert not os.path.exists(snap_dir) or not [
        n for n in os.listdir(snap_dir) if n.endswith(".snap")]


def test_a_snapshot_chunk_from_a_member_that_is_not_the_leader_touches_no_disk(tmp_path):
    # A term has one leader: a chunk of the follower's term from anyone but
    # the leader it follows is dropped unanswered, and no file is written.
    from raftfast.core.messages import MSG_SNAPSHOT_CHUNK, Message

    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        follower, other = [d for d in sim.nodes.values() if d is not leader]
        term = follower.core.term
        assert follower.core.leader_id == leader.core.id
        snap_dir = tmp_path / f"n{follower.core.id}" / "snap"
        before = sorted(os.listdir(snap_dir)) if snap_dir.exists() else []
        sent = _snapshot_acks(follower)
        follower.step_read([Message(MSG_SNAPSHOT_CHUNK, to=follower.core.id,
                                    frm=other.core.id, term=term, log_term=term, **_CHUNK)])
        sim.loop.advance(0.05)
        assert follower.snapshots.chunks_dropped == 1
        assert follower.snapshots.receiver.cur is None and sent == []
        assert (sorted(os.listdir(snap_dir)) if snap_dir.exists() else []) == before
        # The leader's own chunk starts a transfer.
        follower.step_read([Message(MSG_SNAPSHOT_CHUNK, to=follower.core.id,
                                    frm=leader.core.id, term=term, log_term=term, **_CHUNK)])
        assert follower.snapshots.receiver.cur is not None
        assert [m.frm for m in sent] == [follower.core.id] and not sent[0].reject
        follower.snapshots.receiver.abort()


def test_a_snapshot_chunk_before_any_append_of_its_leader_is_received(tmp_path):
    # A restarted node behind a compacted log hears its leader's first chunk
    # before any append (the leader knows it must send a snapshot), and a
    # leader elected while it was away speaks a newer term: both start the
    # transfer at once instead of waiting for a resend a second later.
    from raftfast.core.messages import MSG_SNAPSHOT_CHUNK, Message

    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        follower = next(d for d in sim.nodes.values() if d is not leader)
        term = follower.core.term
        sent = _snapshot_acks(follower)
        follower.core.become_follower(term, 0)  # as recovered: its term, no leader yet
        follower.step_read([Message(MSG_SNAPSHOT_CHUNK, to=follower.core.id,
                                    frm=leader.core.id, term=term, log_term=term, **_CHUNK)])
        assert follower.snapshots.receiver.cur is not None
        assert [(m.term, m.commit, m.reject) for m in sent] == [(term, 100, False)]
        # A chunk of a newer term (its sender leads that term) replaces the
        # transfer of the older one; the core's term moves when it installs.
        follower.step_read([Message(MSG_SNAPSHOT_CHUNK, to=follower.core.id,
                                    frm=leader.core.id, term=term + 1, log_term=term, **_CHUNK)])
        assert follower.snapshots.receiver.cur.term == term + 1
        assert follower.snapshots.receiver.restarts == 1
        assert sent[-1].term == term + 1 and not sent[-1].reject
        assert follower.snapshots.chunks_dropped == 0 and follower.core.term == term
        follower.snapshots.receiver.abort()


_CHUNK = dict(index=10 ** 6, commit=0, hint=1 << 20, context=0, entries=b"x" * 100)


def _snapshot_acks(driver):
    """The snapshot acks `driver` sends, in a list (its other messages go
    on as usual)."""
    from raftfast.core.messages import MSG_SNAPSHOT_ACK

    sent = []
    real_send = driver.transport.send
    driver.transport.send = lambda m: (m.type == MSG_SNAPSHOT_ACK and sent.append(m)
                                       or real_send(m))
    return sent
