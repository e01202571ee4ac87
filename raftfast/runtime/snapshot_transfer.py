"""Moving a snapshot file from a leader to one follower (InstallSnapshot,
streamed in chunks), and nothing else: the snapshot manager decides when
to start one, and what to do with the file once it is here.

The core asks for a snapshot with MSG_SNAPSHOT; the runtime streams the
file as MSG_SNAPSHOT_CHUNK messages (protocol v2, docs/protocol.md) and the
follower answers each with MSG_SNAPSHOT_ACK naming the next byte offset it
wants.  So nothing is matched by order: a lost, repeated or
reordered chunk is answered with the offset the follower still wants, and
the leader goes back to it.

    Sender      leader side, one per follower: a window of chunks in flight,
                resumes from the follower's offset when acks stop, gives up
                after a longer silence.  The file stays open, so compaction
                deleting it does not break a transfer in progress.
    Receiver    follower side: writes chunks at the expected offset into a
                temporary file in snap/, acks, and hands over the complete
                file as a ReceivedSnapshot.
    ReceivedSnapshot
                a complete file: sync() (in a thread), then load_step() from
                the loop (a million keys take ~0.5 s in all, in ~5 ms steps),
                then the snapshot manager steps it into the core, or discard().

Both classes are sans-IO apart from the file they own: they send through a
callable, and the caller passes the time in.  Chunks are modest (256 KiB)
and the window small, so a heartbeat written behind them on the same
connection waits a millisecond or so, never an election timeout.
"""
import logging
import os

from raftfast.core.messages import MSG_SNAPSHOT_ACK, MSG_SNAPSHOT_CHUNK, Message
from raftfast.runtime.snapshot import (SnapshotError, SnapshotLoader, read_chunks,
                                       read_snapshot_meta)

__all__ = ["Sender", "Receiver", "ReceivedSnapshot", "CHUNK_BYTES", "WINDOW"]

log = logging.getLogger("raftfast.snapshot")

CHUNK_BYTES = 256 << 10
# A snapshot is received only while it leaves this much of the disk free:
# the log and the node's other files must still be writable after it.
FREE_SPACE_MARGIN = 64 << 20
WINDOW = 4              # chunks in flight: 1 MiB, well inside the socket's buffer


class Sender:
    """Streams the snapshot at (index, snap_term), the file at `path`, to
    `peer` in `term`.  The snapshot manager calls pump() when the peer may be written
    to, on_ack() for each MSG_SNAPSHOT_ACK, on_peer_lost() when the
    connection dropped, tick(now) now and then; `result` becomes True once
    the follower acknowledged the last byte, False once the transfer was
    abandoned (then `why` says why).  close() releases the file.

    send(msg) -> bool (False: dropped), can_send() -> bool: the transport's.
    Raises SnapshotError when the file is missing or is not that snapshot."""

    def __init__(self, me, peer, term, index, snap_term, path, send, can_send, now,
                 chunk_bytes=CHUNK_BYTES, window=WINDOW, resend_after=1.0, give_up_after=10.0):
        self.me, self.peer, self.term = me, peer, term
        self.index, self.snap_term = index, snap_term
        self.path = os.fspath(path)
        self._send, self._can_send = send, can_send
        self.chunk_bytes, self.window = chunk_bytes, window
        self.resend_after, self.give_up_after = resend_after, give_up_after
        meta = read_snapshot_meta(self.path)
        if (meta.index, meta.term) != (index, snap_term):
            raise SnapshotError(f"snapshot {self.path}: holds index {meta.index} term "
                                f"{meta.term}, not index {index} term {snap_term}")
        try:
            # Held open to the end: compaction may delete the file meanwhile
            # (the inode lives on), and every resume reads from it.
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise SnapshotError(f"snapshot {self.path}: cannot open: {e}") from e
        self.size = os.fstat(self._fd).st_size
        self.acked = 0          # the offset the follower last said it wants
        self.sent = 0           # the offset of the next chunk to send
        self._reader = None     # read_chunks from `sent`, made on demand
        self._heard = False     # an ack came from the follower
        self._progress_at = now  # when `acked` last moved forward
        self._rewound_at = now
        self.result = None
        self.why = ""
        self.bytes_sent = 0
        self.chunks_sent = 0
        self.resends = 0

    def pump(self):
        """Send chunks while the window has room and the peer can take them.
        Until the follower's first ack, one chunk only: it may have all or
        part of the file already (a transfer asked for again while it was
        still loading the last one), and says so in that ack."""
        limit = self.chunk_bytes if self._heard is False else self.window * self.chunk_bytes
        while (self.result is None and self.sent < self.size
               and self.sent - self.acked < limit and self._can_send()):
            if self._reader is None:
                self._reader = read_chunks(self.path, self.chunk_bytes, self.sent, fd=self._fd)
            try:
                data = next(self._reader, b"")
            except SnapshotError as e:
                self._finish(False, str(e))
                return
            if not data:
                self._finish(False, f"snapshot {self.path} ended at {self.sent} of "
                                    f"{self.size} bytes while being sent")
                return
            end = self.sent + len(data)
            m = Message(MSG_SNAPSHOT_CHUNK, to=self.peer, frm=self.me, term=self.term,
                        index=self.index, log_term=self.snap_term, commit=self.sent,
                        hint=self.size, context=1 if end == self.size else 0, entries=data)
            if not self._send(m):
                self._reader = None  # this chunk goes again, from `sent`
                return
            self.sent = end
            self.bytes_sent += len(data)
            self.chunks_sent += 1

    def on_ack(self, m, now):
        """A MSG_SNAPSHOT_ACK from the peer."""
        if self.result is not None or m.index != self.index or m.log_term != self.snap_term:
            return  # for another transfer (an earlier one to this peer)
        if m.reject or m.term > self.term:
            self._finish(False, f"node {self.peer} refused the snapshot at {self.index} "
                                f"(its term {m.term}, ours {self.term})")
            return
        if m.commit > self.size:
            return  # no follower wants bytes past the end; ignore rather than trust it
        self._heard = True
        if m.commit == self.size:
            self.acked = self.size
            self._finish(True, "")
            return
        if m.commit > self.acked:
            self._progress_at = now
        elif m.commit < self.acked:
            # Acks come in order on one connection, so a lower one is no
            # straggler: the follower lost its partial file (a restart) or
            # dropped it.  Go back to what it wants now.
            self.acked = m.commit
            self._rewind()
        self.acked = m.commit
        if self.sent < self.acked:
            # It already had more (kept from an earlier transfer of this
            # snapshot): skip ahead.
            self.sent = self.acked
            self._reader = None
        self.pump()

    def on_peer_lost(self):
        """The connection to the peer dropped: what was in it may be gone."""
        self._rewind()

    def tick(self, now):
        """Resend from the follower's offset when acks stopped for a while
        (a chunk was lost); give up after a longer silence."""
        if self.result is not None:
            return
        silent = now - self._progress_at
        if silent >= self.give_up_after:
            self._finish(False, f"no progress from node {self.peer} for {silent:.1f} s "
                                f"(at {self.acked} of {self.size} bytes)")
            return
        if (self.sent > self.acked and silent >= self.resend_after
                and now - self._rewound_at >= self.resend_after):
            self._rewound_at = now
            self._rewind()
        self.pump()

    def _rewind(self):
        if self.sent != self.acked:
            self.resends += 1
            log.info("snapshot at %d to node %d: resending from offset %d of %d", self.index,
                     self.peer, self.acked, self.size)
        self.sent = self.acked
        self._reader = None

    def _finish(self, ok, why):
        self.result = ok
        self.why = why
        self.close()

    def close(self):
        self._reader = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ReceivedSnapshot:
    """A whole snapshot file received from `leader` in `term`: make it
    durable (sync(), blocking: run it in a thread), then load it step by
    step from the loop (load_step(), until True; then .store is the
    KVStore and .meta its SnapshotMeta), or discard() it."""

    def __init__(self, leader, term, index, snap_term, size, path, fd):
        self.leader, self.term = leader, term
        self.index, self.snap_term = index, snap_term
        self.size, self.path = size, path
        self._fd = fd
        self._loader = None
        self.store = None
        self.meta = None
        # While sync() runs in a thread it owns the descriptor: the caller
        # must not discard() until it returned.
        self.syncing = False

    def sync(self, fsync=True):
        """fsync (unless told not to: --fsync never) and close the file;
        blocking, for a worker thread."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def load_step(self, max_chunks=1, open_loader=SnapshotLoader):
        """Verify and load up to max_chunks of the file's chunks (each at
        most a few ms); True once the store is ready.  SnapshotError when
        the file is damaged or is not the snapshot the leader announced.
        open_loader(path): the state machine's loader for the file."""
        if self._loader is None:
            self._loader = open_loader(self.path)
            meta = self._loader.meta
            if (meta.index, meta.term) != (self.index, self.snap_term):
                self._loader.close()
                raise SnapshotError(f"snapshot {self.path}: holds index {meta.index} term "
                                    f"{meta.term}, but the leader sent it as index "
                                    f"{self.index} term {self.snap_term}")
        if not self._loader.step(max_chunks):
            return False
        self.store, self.meta = self._loader.store, self._loader.meta
        return True

    def discard(self):
        """Give the file up: close and delete it (harmless twice)."""
        if self._loader is not None:
            self._loader.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self.path)
        except OSError:
            pass


class _Incoming:
    __slots__ = ("leader", "term", "index", "snap_term", "size", "path", "fd", "offset",
                 "last_at")

    def key(self):
        return (self.leader, self.term, self.index, self.snap_term, self.size)


class Receiver:
    """The follower end: one snapshot being received at a time.

    on_chunk(m, core_term, committed, now) returns (ack, done): the ack to
    send back (or None), and a ReceivedSnapshot once the last byte is in.
    new_path() names a fresh temporary file in snap/ (recovery deletes
    leftovers).  A chunk of a new (index, term), a new size, or from a newer
    term restarts the transfer; one of a term older than the node's core is
    refused with reject.  One of a snapshot that brings nothing (its index
    is committed here) is acked as complete: this node has all it holds."""

    def __init__(self, me, new_path, stall_after=30.0):
        self.me = me
        self._new_path = new_path
        self.stall_after = stall_after
        self.cur = None
        self.done_key = None     # the key of the last transfer handed over
        self.bytes_received = 0
        self.chunks_received = 0
        self.restarts = 0

    def _ack(self, m, term, offset, reject=False):
        return Message(MSG_SNAPSHOT_ACK, to=m.frm, frm=self.me, term=term, index=m.index,
                       log_term=m.log_term, commit=offset, reject=reject)

    def on_chunk(self, m, core_term, committed, now):
        if m.term < core_term:
            return self._ack(m, core_term, 0, reject=True), None
        key = (m.frm, m.term, m.index, m.log_term, m.hint)
        if key == self.done_key:
            return self._ack(m, m.term, m.hint), None  # all here already: it lost our ack
        cur = self.cur
        if cur is not None and cur.key() != key:
            if m.term < cur.term:
                return self._ack(m, cur.term, 0, reject=True), None
            self.abort()  # a newer term, or another snapshot: start over
            self.restarts += 1
            cur = None
        if cur is None:
            if m.index <= committed:
                # We hold everything it covers already (installed meanwhile,
                # or caught up from the log): say the whole file is here.
                return self._ack(m, m.term, m.hint), None
            if m.commit != 0:
                return self._ack(m, m.term, 0), None  # it must start from the beginning
            cur = self._start(m, now)
            if cur is None:
                return self._ack(m, core_term, 0, reject=True), None
        cur.last_at = now
        data = m.entries or b""
        if m.commit != cur.offset:
            return self._ack(m, m.term, cur.offset), None  # out of order or repeated
        try:
            _write_all(cur.fd, data)
        except OSError as e:
            log.error("snapshot from node %d: writing %s failed: %s; the transfer is dropped",
                      m.frm, cur.path, e)
            self.abort()
            return self._ack(m, core_term, 0, reject=True), None
        cur.offset += len(data)
        self.bytes_received += len(data)
        self.chunks_received += 1
        if cur.offset < cur.size:
            return self._ack(m, m.term, cur.offset), None
        self.cur = None
        self.done_key = key
        done = ReceivedSnapshot(cur.leader, cur.term, cur.index, cur.snap_term, cur.size,
                                cur.path, cur.fd)
        return self._ack(m, m.term, cur.size), done

    def _start(self, m, now):
        try:
            # The storage may create the file empty, to own the name.
            path = self._new_path()
            st = os.statvfs(os.path.dirname(path))
            free = st.f_bavail * st.f_frsize
            if free < m.hint + FREE_SPACE_MARGIN:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                log.warning("snapshot from node %d: %d bytes do not fit in the %d free on "
                            "this disk (keeping %d spare); refused", m.frm, m.hint, free,
                            FREE_SPACE_MARGIN)
                return None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            log.error("snapshot from node %d: cannot create a file for it: %s", m.frm, e)
            return None
        cur = _Incoming()
        cur.leader, cur.term, cur.index, cur.snap_term, cur.size = (m.frm, m.term, m.index,
                                                                    m.log_term, m.hint)
        cur.path, cur.fd, cur.offset, cur.last_at = path, fd, 0, now
        self.cur = cur
        log.info("receiving the snapshot at index %d (term %d, %d bytes) from node %d",
                 m.index, m.log_term, m.hint, m.frm)
        return cur

    def ack_again(self, peer):
        """The ack of the transfer from `peer` in progress, again (the
        connection to it just came up: the last one may have been dropped,
        as happens to the first ack of a node that just started), or None."""
        cur = self.cur
        if cur is None or cur.leader != peer:
            return None
        return Message(MSG_SNAPSHOT_ACK, to=peer, frm=self.me, term=cur.term, index=cur.index,
                       log_term=cur.snap_term, commit=cur.offset)

    def tick(self, now):
        """Drop a transfer the leader stopped sending (it gave up, or lost
        its leadership): its file would otherwise stay until a restart."""
        if self.cur is not None and now - self.cur.last_at >= self.stall_after:
            log.info("snapshot from node %d at index %d stalled at %d of %d bytes; dropped",
                     self.cur.leader, self.cur.index, self.cur.offset, self.cur.size)
            self.abort()

    def forget_done(self):
        """The handed-over snapshot is gone (installed or discarded): a chunk
        of it now starts a new transfer rather than being acked as whole."""
        self.done_key = None

    def abort(self):
        cur, self.cur = self.cur, None
        if cur is None:
            return
        try:
            os.close(cur.fd)
        except OSError:
            pass
        try:
            os.unlink(cur.path)
        except OSError:
            pass


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
