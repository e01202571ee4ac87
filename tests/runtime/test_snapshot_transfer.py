"""raftfast.runtime.snapshot_transfer: a leader's Sender and a follower's Receiver
moving a snapshot file through a fake transport that encodes and decodes
every message with the real codec (so each one is a valid v2 frame), with
chunks lost, repeated, reordered, from stale or newer terms, and silences.
Time is passed in by the test; nothing here sleeps."""
import os

import pytest

from raftfast import _codec
from raftfast._kv import KVStore
from raftfast.core.messages import MSG_SNAPSHOT_ACK, MSG_SNAPSHOT_CHUNK
from raftfast.runtime.snapshot import SnapshotError, read_chunks, write_snapshot
from raftfast.runtime import snapshot_transfer
from raftfast.runtime.snapshot_transfer import Receiver, Sender

LEADER, FOLLOWER = 1, 2
CHUNK = 1000
WINDOW = 3
RESEND, GIVE_UP = 1.0, 10.0


def wire(m):
    """m as the peer receives it: encoded, decoded, `to` filled in."""
    dec = _codec.FrameDecoder()
    dec.feed(_codec.encode_message(m))
    _, got = dec.next()
    got.to = m.to
    return got


class Link:
    """One direction of a connection: what was sent, in order, and whether
    the socket takes more."""

    def __init__(self):
        self.queue = []
        self.writable = True

    def send(self, m):
        if not self.writable:
            return False
        self.queue.append(wire(m))
        return True

    def take(self):
        q, self.queue = self.queue, []
        return q


def snapshot_file(tmp_path, n=300, index=50, term=3, name="snap-leader.snap"):
    data = {b"key-%05d" % i: b"value-%d" % i * 3 for i in range(n)}
    path = str(tmp_path / name)
    write_snapshot(KVStore.from_dict(data), path, index, term, meta=b"members")
    return path, data


class Pair:
    """A Sender on the leader and a Receiver on the follower."""

    def __init__(self, tmp_path, path, index=50, snap_term=3, term=7):
        self.tmp_path = tmp_path
        self.to_follower = Link()
        self.to_leader = Link()
        self.now = 100.0
        self.made = []
        self.receiver = Receiver(FOLLOWER, self.new_path)
        self.core_term = term
        self.committed = 0
        self.done = None
        self.sender = self.new_sender(path, index, snap_term, term)

    def new_sender(self, path, index=50, snap_term=3, term=7):
        return Sender(LEADER, FOLLOWER, term, index, snap_term, path, self.to_follower.send,
                      lambda: self.to_follower.writable, self.now, chunk_bytes=CHUNK,
                      window=WINDOW, resend_after=RESEND, give_up_after=GIVE_UP)

    def new_path(self):
        p = str(self.tmp_path / f".snap-{len(self.made)}.tmp")
        self.made.append(p)
        return p

    def open_window(self):
        """The first chunk goes alone; once the follower answered it, a
        window of them.  Returns that window (taken off the link)."""
        self.sender.pump()
        (first,) = self.to_follower.take()
        assert first.commit == 0
        self.deliver([first])
        self.acks_back()
        return self.to_follower.take()

    def deliver(self, chunks):
        for m in chunks:
            ack, done = self.receiver.on_chunk(m, self.core_term, self.committed, self.now)
            if ack is not None:
                self.to_leader.send(ack)
            if done is not None:
                self.done = done

    def acks_back(self, sender=None):
        sender = sender or self.sender
        for a in self.to_leader.take():
            sender.on_ack(a, self.now)

    def run(self, sender=None, rounds=1000):
        """Deliver everything both ways until nothing moves."""
        sender = sender or self.sender
        for _ in range(rounds):
            chunks = self.to_follower.take()
            if not chunks and not self.to_leader.queue:
                return
            self.deliver(chunks)
            self.acks_back(sender)
        raise AssertionError("the transfer did not settle")


def loaded(done):
    done.sync()
    while not done.load_step(4):
        pass
    return done.store


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_whole_file_arrives_in_windows_and_loads(tmp_path):
    path, data = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.sender.pump()
    assert [m.commit for m in p.to_follower.queue] == [0]  # alone until the follower answers
    window = p.open_window()
    assert [m.commit for m in window] == [CHUNK, 2 * CHUNK, 3 * CHUNK]  # the window, no more
    assert all(m.type == MSG_SNAPSHOT_CHUNK and m.term == 7 and m.index == 50
               and m.log_term == 3 and m.hint == p.sender.size for m in window)
    p.deliver(window)
    p.acks_back()
    p.run()
    assert p.sender.result is True
    assert p.done is not None and p.receiver.cur is None
    assert (p.done.leader, p.done.term, p.done.index, p.done.snap_term) == (LEADER, 7, 50, 3)
    assert file_bytes(p.done.path) == file_bytes(path)
    store = loaded(p.done)
    assert dict(store.items()) == data and p.done.meta.meta == b"members"
    assert p.sender.bytes_sent == p.sender.size and p.sender.resends == 0


def test_last_chunk_carries_the_last_flag(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    sent = []
    for _ in range(100):
        p.sender.pump()
        chunks = p.to_follower.take()
        if not chunks:
            break
        sent += chunks
        p.deliver(chunks)
        p.acks_back()
    assert [m.context for m in sent] == [0] * (len(sent) - 1) + [1]
    assert sent[-1].commit + len(sent[-1].entries) == p.sender.size


def test_lost_chunk_is_resent_from_the_follower_offset_after_a_silence(tmp_path):
    path, data = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    chunks = p.open_window()
    del chunks[1]                       # lost
    p.deliver(chunks)
    acks = p.to_leader.queue
    assert [a.commit for a in acks] == [2 * CHUNK, 2 * CHUNK]  # the third is out of order
    p.acks_back()
    assert p.sender.acked == 2 * CHUNK and p.sender.result is None
    p.run()                             # nothing more moves: the window waits
    assert p.sender.result is None
    p.now += RESEND / 2
    p.sender.tick(p.now)
    assert p.to_follower.queue == []    # not silent long enough yet
    p.now += RESEND
    p.sender.tick(p.now)
    assert p.to_follower.queue[0].commit == 2 * CHUNK
    p.run()
    assert p.sender.result is True and p.sender.resends == 1
    assert dict(loaded(p.done).items()) == data


def test_duplicate_chunk_is_written_once(tmp_path):
    path, data = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    chunks = p.open_window()
    p.deliver([chunks[0], chunks[0], chunks[1], chunks[0], chunks[2]])
    assert [a.commit for a in p.to_leader.queue] == [2 * CHUNK, 2 * CHUNK, 3 * CHUNK,
                                                     3 * CHUNK, 4 * CHUNK]
    p.acks_back()
    p.run()
    assert p.sender.result is True
    assert file_bytes(p.done.path) == file_bytes(path)


def test_reordered_chunks_are_asked_for_again(tmp_path):
    path, data = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    c0, c1, c2 = p.open_window()
    p.deliver([c0, c2, c1])
    assert [a.commit for a in p.to_leader.queue] == [2 * CHUNK, 2 * CHUNK, 3 * CHUNK]
    p.acks_back()
    p.now += RESEND
    p.sender.tick(p.now)                # c2 went missing for the follower: resend it
    p.run()
    assert p.sender.result is True
    assert dict(loaded(p.done).items()) == data


def test_chunk_of_a_stale_term_is_refused_and_the_sender_gives_up(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.core_term = 8                     # the follower has seen a newer term
    p.sender.pump()
    p.deliver(p.to_follower.take())
    acks = p.to_leader.queue
    assert acks and all(a.type == MSG_SNAPSHOT_ACK and a.reject and a.term == 8 for a in acks)
    assert p.receiver.cur is None and p.made == []  # nothing was written
    p.acks_back()
    assert p.sender.result is False and "refused" in p.sender.why


def test_snapshot_already_covered_by_the_commit_index_is_acked_as_whole(tmp_path):
    # Say it was installed already, and the sender had missed the last ack.
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.committed = 50
    p.sender.pump()
    p.deliver(p.to_follower.take())
    assert {a.commit for a in p.to_leader.queue} == {p.sender.size}
    p.acks_back()
    assert p.sender.result is True and p.made == [] and p.done is None


def test_new_snapshot_mid_transfer_restarts_and_deletes_the_partial_file(tmp_path):
    old_path, _ = snapshot_file(tmp_path, index=50)
    new_path, new_data = snapshot_file(tmp_path, n=200, index=90, name="snap-newer.snap")
    p = Pair(tmp_path, old_path)
    p.sender.pump()
    p.deliver(p.to_follower.take())
    partial = p.receiver.cur.path
    assert os.path.exists(partial)
    newer = p.new_sender(new_path, index=90, snap_term=3)
    newer.pump()
    p.to_leader.take()                  # acks for the abandoned transfer
    p.run(sender=newer)
    assert not os.path.exists(partial)
    assert p.receiver.restarts == 1 and newer.result is True and p.done.index == 90
    assert dict(loaded(p.done).items()) == new_data


def test_newer_term_restarts_the_same_snapshot(tmp_path):
    # Another leader's file for the same index may hold the keys in another
    # order: its bytes cannot continue the first one's.
    path, data = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.sender.pump()
    p.deliver(p.to_follower.take())
    p.to_leader.take()
    p.core_term = 8
    second = p.new_sender(path, term=8)
    second.pump()
    p.run(sender=second)
    assert p.receiver.restarts == 1 and second.result is True and p.done.term == 8
    assert len(p.made) == 2 and not os.path.exists(p.made[0])
    assert dict(loaded(p.done).items()) == data


def test_chunk_of_an_older_term_than_the_transfer_in_progress_is_refused(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path, term=8)
    p.sender.pump()
    p.deliver(p.to_follower.take())
    p.to_leader.take()
    old = p.new_sender(path, term=7)
    p.core_term = 7                     # the core has not heard of term 8 yet
    old.pump()
    p.deliver(p.to_follower.take())
    acks = p.to_leader.take()
    assert acks and all(a.reject and a.term == 8 for a in acks)
    assert p.receiver.cur is not None and p.receiver.cur.term == 8  # kept


def test_gives_up_after_a_long_silence(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.sender.pump()
    p.to_follower.take()                # the follower is gone
    for _ in range(int(GIVE_UP / RESEND)):
        p.now += RESEND
        p.sender.tick(p.now)
        p.to_follower.take()
        if p.sender.result is not None:
            break
    assert p.sender.result is False and "no progress" in p.sender.why
    assert p.sender.resends >= 1
    p.sender.pump()                     # finished: the file is released, nothing goes
    assert p.to_follower.queue == []


def test_progress_keeps_a_slow_transfer_alive(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.sender.pump()
    rounds = 0
    while p.sender.result is None:
        p.now += GIVE_UP * 0.6          # each round trip slow, but each one moves
        p.deliver(p.to_follower.take())
        p.acks_back()
        p.sender.tick(p.now)
        rounds += 1
    assert p.sender.result is True and rounds > 2


def test_no_chunk_goes_while_the_peer_is_not_writable(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.to_follower.writable = False
    p.sender.pump()
    p.sender.tick(p.now + RESEND)
    assert p.to_follower.queue == [] and p.sender.sent == 0
    p.to_follower.writable = True
    assert len(p.open_window()) == WINDOW  # the driver pumps when the peer is writable
    p.sender.on_peer_lost()             # (the test dropped that window)
    p.sender.pump()
    p.run()
    assert p.sender.result is True


def test_connection_loss_resends_from_the_last_ack_at_once(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.sender.pump()
    chunks = p.to_follower.take()
    p.deliver(chunks[:1])
    p.acks_back()                       # CHUNK acked; it sent one more
    p.to_follower.take()                # what was in the socket is gone with it
    p.sender.on_peer_lost()
    p.sender.pump()
    assert p.to_follower.queue[0].commit == CHUNK
    p.run()
    assert p.sender.result is True and file_bytes(p.done.path) == file_bytes(path)


def test_a_new_sender_continues_where_the_follower_is(tmp_path):
    # The leader gave up (say, a long pause) and the core asked again: the
    # follower still has the first part, and says so.
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    for _ in range(3):
        p.sender.pump()
        p.deliver(p.to_follower.take())
        p.acks_back()
    have = p.receiver.cur.offset
    assert have >= 3 * CHUNK
    second = p.new_sender(path)
    second.pump()
    p.run(sender=second)
    assert second.result is True and second.bytes_sent < second.size - have + WINDOW * CHUNK
    assert file_bytes(p.done.path) == file_bytes(path)


def test_a_follower_that_lost_its_partial_file_is_resent_from_the_start(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.deliver(p.open_window())
    p.acks_back()
    p.to_follower.take()                # lost with the follower's process
    p.receiver.abort()                  # a restarted follower
    p.now += RESEND
    p.sender.tick(p.now)                # silence: resend from its last word, 4 chunks in
    assert p.to_follower.queue[0].commit == 4 * CHUNK
    p.deliver(p.to_follower.take())     # mid-file chunks: it wants offset 0
    assert {a.commit for a in p.to_leader.queue} == {0}
    p.acks_back()
    assert p.sender.acked == 0 and p.to_follower.queue[0].commit == 0  # at once, no timer
    p.run()
    assert p.sender.result is True and file_bytes(p.done.path) == file_bytes(path)


def test_chunks_of_a_finished_transfer_are_acked_as_whole(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.sender.pump()
    sent = []
    while p.to_follower.queue:
        chunks = p.to_follower.take()
        sent += chunks
        p.deliver(chunks)
        p.acks_back()
    assert p.done is not None
    p.deliver(sent[-1:])                # as if the sender had missed our last ack
    assert [a.commit for a in p.to_leader.take()] == [p.sender.size]
    p.receiver.forget_done()            # installed or dropped: a new transfer may begin
    p.deliver(sent[:1])
    assert p.receiver.cur is not None and p.receiver.cur.offset == CHUNK


def test_the_sender_holds_its_file_through_compaction(tmp_path):
    path, data = snapshot_file(tmp_path)
    original = file_bytes(path)
    p = Pair(tmp_path, path)
    p.sender.pump()
    os.unlink(path)                     # compaction deleted it
    p.to_follower.take()
    p.sender.on_peer_lost()             # and a resume must read it again
    p.run()
    assert p.to_follower.queue == []
    p.sender.pump()
    p.run()
    assert p.sender.result is True and file_bytes(p.done.path) == original


def test_sender_refuses_a_file_of_another_snapshot(tmp_path):
    path, _ = snapshot_file(tmp_path, index=50, term=3)
    with pytest.raises(SnapshotError):
        Sender(LEADER, FOLLOWER, 7, 51, 3, path, None, None, 0.0)
    with pytest.raises(SnapshotError):
        Sender(LEADER, FOLLOWER, 7, 50, 3, str(tmp_path / "missing.snap"), None, None, 0.0)


def test_a_damaged_file_fails_to_load_and_is_deleted(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.sender.pump()
    while p.to_follower.queue:
        chunks = p.to_follower.take()
        for c in chunks:
            if c.commit == CHUNK:
                # flip a byte in flight (the frame CRC would catch this on
                # the wire; here the file's checks must)
                c.entries = bytes([c.entries[0] ^ 1]) + c.entries[1:]
        p.deliver(chunks)
        p.acks_back()
        p.sender.pump()
    done = p.done
    done.sync()
    with pytest.raises(SnapshotError):
        while not done.load_step(4):
            pass
    done.discard()
    assert not os.path.exists(done.path)


def test_an_ack_for_another_snapshot_is_ignored(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.sender.pump()
    chunks = p.to_follower.take()
    p.deliver(chunks[:1])
    (ack,) = p.to_leader.take()
    ack.index = 49
    p.sender.on_ack(ack, p.now)
    assert p.sender.acked == 0
    ack.index, ack.commit = 50, p.sender.size + 1    # past the end: not trusted
    p.sender.on_ack(ack, p.now)
    assert p.sender.acked == 0 and p.sender.result is None


def test_read_chunks_from_a_held_descriptor(tmp_path):
    path, _ = snapshot_file(tmp_path)
    good = file_bytes(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        assert b"".join(read_chunks(path, 333, fd=fd)) == good
        assert b"".join(read_chunks(path, 100, offset=250, fd=fd)) == good[250:]
    finally:
        os.close(fd)


def test_asked_again_while_the_follower_loads_it_costs_one_chunk(tmp_path):
    # The leader reported success, probed, and the follower (still loading
    # the file) could not answer from its log yet: the core asks again.
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.sender.pump()
    p.run()
    assert p.sender.result is True and p.done is not None
    again = p.new_sender(path)
    again.pump()
    p.run(sender=again)
    assert again.result is True and again.chunks_sent == 1


def test_the_ack_is_repeated_when_the_connection_to_the_leader_comes_up(tmp_path):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    p.sender.pump()
    p.deliver(p.to_follower.take())
    p.to_leader.take()                  # dropped: our connection was not up yet
    assert p.receiver.ack_again(3) is None   # not the leader of this transfer
    again = p.receiver.ack_again(LEADER)
    assert (again.type, again.to, again.commit, again.index) == (MSG_SNAPSHOT_ACK, LEADER,
                                                                 CHUNK, 50)
    p.sender.on_ack(wire(again), p.now)
    assert len(p.to_follower.queue) == WINDOW  # the window opens without a resend timer


def test_a_snapshot_larger_than_the_free_disk_is_refused_unwritten(tmp_path, monkeypatch):
    path, _ = snapshot_file(tmp_path)
    p = Pair(tmp_path, path)
    real = os.statvfs

    class Full:
        def __init__(self, d):
            st = real(d)
            self.f_frsize = st.f_frsize
            # Room for the snapshot, but not for the spare the log needs.
            self.f_bavail = (p.sender.size + snapshot_transfer.FREE_SPACE_MARGIN - 1) // st.f_frsize
    monkeypatch.setattr(snapshot_transfer.os, "statvfs", Full)
    p.sender.pump()
    p.deliver(p.to_follower.take())
    (ack,) = p.to_leader.take()
    assert ack.reject and ack.commit == 0 and p.receiver.cur is None
    assert not any(os.path.exists(m) for m in p.made)  # nothing written, nothing left
    monkeypatch.setattr(snapshot_transfer.os, "statvfs", real)
    p.sender = p.new_sender(path)
    p.sender.pump()
    p.run()
    assert p.done is not None and file_bytes(p.done.path) == file_bytes(path)
    assert os.stat(p.done.path).st_mode & 0o777 == 0o600
