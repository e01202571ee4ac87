"""RAFT.BACKUP: a consistent snapshot of the data set, streamed to the client
from the leader while writes go on.

    1. ReadIndex: the leader confirms it still leads and waits until it has
       applied every write committed before the command arrived (a
       linearizable read's barrier); `need` is its applied index then.
    2. A snapshot covering `need`: the newest one on disk if it does, else
       the snapshot manager takes one now (the store's copy-on-write
       freeze: writes go on while it is written).  Backups waiting at the
       same time share one snapshot.
    3. The file is opened at once (compaction may delete it later; the
       open descriptor keeps its bytes) and sent as one RESP bulk string of
       the file's length, a few chunks per loop iteration, and only while
       the connection's transport takes them (pause_writing stops the
       stream, resume_writing goes on): neither side holds the file in
       memory, and the --client-output-buffer-limit, which bounds replies
       built whole, does not apply.

A client that stops reading holds the file open (its disk space too, once
compaction deletes it) and its connection: a stream that has sent nothing
for --timeout seconds, or STALL_SECONDS when --timeout is 0, is cut off
(the connection closed, the backup counted as failed).

The bytes are a snapshot file (runtime/snapshot.py's format: versioned,
a CRC32C per chunk and one over the whole file), so `restore` verifies a
backup the same way a node verifies its own snapshots.

While a backup is under way, its connection reads nothing more: the
command holds what follows it (so no write sent after it can slip into
it), and it must be sent alone: a connection with earlier requests still
unanswered gets an error.  An error before the first byte of the bulk is an
error reply; a failure after it (a read error on the file) can only close
the connection, and the client sees the bulk cut short.
"""
import logging
import os

from raftfast._resp import ErrorReply
from raftfast.core import NotLeader
from raftfast.runtime.waiters import RequestFailed

__all__ = ["Backups"]

log = logging.getLogger("raftfast.backup")

CHUNK_BYTES = 256 << 10
CHUNKS_PER_PUMP = 4   # at most 1 MiB per loop iteration, however fast the client reads
# Reads happen on the loop: ask the kernel to read this far ahead of them,
# so an older snapshot no longer in the page cache does not stall the loop
# on the disk (a fresh one is still cached).
READ_AHEAD = 4 << 20
_advise = getattr(os, "posix_fadvise", None)
# Without --timeout, how long a backup may send nothing before it is cut off
# (as Redis gives a replica that stops reading its output a minute).
STALL_SECONDS = 60.0

NOT_ALONE = ErrorReply("ERR RAFT.BACKUP must be sent alone: earlier requests on this "
                       "connection are still unanswered")


class Backups:
    """The backups a node is serving.  `server` is the RespServer (its loop,
    driver, redirect and failure wording)."""

    def __init__(self, server):
        self.server = server
        self.waiting = []          # (applied index needed, BackupStream)
        self.active = set()        # every BackupStream not done yet
        self.served = 0            # INFO stats
        self.failed = 0
        self.bytes_sent = 0

    def stats(self):
        return {"raftfast_backups_served": self.served, "raftfast_backups_failed": self.failed,
                "raftfast_backup_bytes_sent": self.bytes_sent,
                "raftfast_backups_in_progress": len(self.active)}

    def start(self, conn):
        """RAFT.BACKUP on `conn`: answered with the redirect unless this
        node leads; else the connection is held until the stream is sent."""
        server = self.server
        if not server.driver.is_leader:
            conn.reply(server.redirect_error())
            return
        conn.flush()
        if conn.replies:
            conn.reply(NOT_ALONE)
            return
        server.driver.snapshots.on_taken = self._taken
        stream = BackupStream(self, conn)
        try:
            server.driver.read(0, stream.confirmed)
        except NotLeader:
            stream.finish(server.redirect_error())

    def tick(self):
        """Every tick: a snapshot the manager could not start yet is asked
        again, and a stream its client stopped reading is cut off."""
        if self.waiting:
            self.server.driver.snapshots.take_now()
        if self.active:
            self._cut_stalled()

    def _cut_stalled(self):
        server = self.server
        limit = server.cfg.timeout or STALL_SECONDS
        now = server.loop.time()
        for stream in list(self.active):
            if stream.fd >= 0 and now - stream.progress_at >= limit:
                log.warning("backup to client %d: nothing sent for %.0f s (at %d of %d "
                            "bytes); closing the connection", stream.conn.id, limit,
                            stream.offset, stream.size)
                self.failed += 1
                stream.abort()
                stream.conn.close_now()

    def covering(self, stream, need):
        """The state through `need` is applied: serve `stream` from a snapshot
        covering it, the newest on disk or a new one."""
        driver = self.server.driver
        index = driver.core.snapshot_index
        if index >= need:
            stream.send_file(driver.snapshots.storage.snapshot_path(index))
            return
        self.waiting.append((need, stream))
        driver.snapshots.take_now()

    def _taken(self, error, index, path):
        if not self.waiting:
            return
        if error is not None:
            waiting, self.waiting = self.waiting, []
            for _, stream in waiting:
                stream.finish(ErrorReply(f"ERR backup failed: the snapshot failed: {error}"))
            return
        ready = [s for need, s in self.waiting if need <= index]
        self.waiting = [(need, s) for need, s in self.waiting if need > index]
        for stream in ready:
            stream.send_file(path)
        if self.waiting:
            self.server.driver.snapshots.take_now()

    def forget(self, stream):
        self.active.discard(stream)
        self.waiting = [(need, s) for need, s in self.waiting if s is not stream]


class BackupStream:
    """One RAFT.BACKUP: its reply slot, then the file's bytes."""

    def __init__(self, backups, conn):
        self.backups = backups
        self.conn = conn
        self.slot = conn.pending()
        self.fd = -1
        self.size = 0
        self.offset = 0
        self.progress_at = 0.0  # loop time the file's bytes last moved
        self.done = False
        backups.active.add(self)
        # Nothing after the command is parsed until the stream is complete
        # (connection._parse_buffered stops at a held connection).
        conn.held = True
        conn.reads_in_flight += 1
        conn.transport.pause_reading()

    def confirmed(self, outcome):
        """driver.read's answer: the barrier passed (None), or a failure."""
        if self.done:
            return
        if isinstance(outcome, RequestFailed):
            self.finish(self.backups.server.failure_reply(outcome))
            return
        if self.conn.closing:
            self.abort()
            return
        self.backups.covering(self, self.backups.server.driver.core.log.applied)

    def send_file(self, path):
        if self.done:
            return
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self.size = os.fstat(self.fd).st_size
            if _advise is not None:
                _advise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError as e:
            self.finish(ErrorReply(f"ERR backup failed: cannot read the snapshot {path}: "
                                   f"{e.strerror}"))
            return
        log.info("backup to client %d: snapshot %s (%d bytes)", self.conn.id, path, self.size)
        conn = self.conn
        conn.stream = self
        self.progress_at = self.backups.server.loop.time()
        # The slot stays pending: replies to what follows wait behind it.
        conn.transport.write(b"$%d\r\n" % self.size)
        self.pump()

    def pump(self):
        """Write the next chunks while the transport takes them; resume_writing
        calls it again after a pause, and it calls itself again after a
        few chunks, so a fast client does not keep the loop to itself."""
        conn = self.conn
        transport = conn.transport
        if self.done or self.fd < 0:
            return
        if _advise is not None and self.offset < self.size:
            _advise(self.fd, self.offset, READ_AHEAD, os.POSIX_FADV_WILLNEED)
        for _ in range(CHUNKS_PER_PUMP):
            if transport.is_closing():
                self.abort()
                return
            if conn.paused_by_client:
                return
            if self.offset >= self.size:
                self._complete()
                return
            try:
                data = os.pread(self.fd, min(CHUNK_BYTES, self.size - self.offset), self.offset)
            except OSError as e:
                data = None
                why = e.strerror
            else:
                why = "the file ended early"
            if not data:
                log.error("backup to client %d: reading the snapshot at offset %d failed (%s); "
                          "closing the connection", conn.id, self.offset, why)
                self.backups.failed += 1
                self.abort()
                conn.close_now()
                return
            transport.write(data)
            self.progress_at = self.backups.server.loop.time()
            self.offset += len(data)
            self.backups.bytes_sent += len(data)
        self.backups.server.loop.call_soon(self.pump)

    def _complete(self):
        self.backups.served += 1
        log.info("backup to client %d: %d bytes sent", self.conn.id, self.size)
        self.finish(b"\r\n", raw=True)

    def finish(self, value, raw=False):
        """Fill the reply slot (an error, or the bulk's closing line) and let
        the connection go on."""
        if self.done:
            return
        if isinstance(value, ErrorReply):
            self.backups.failed += 1
        self._release()
        conn = self.conn
        self.slot.value = value
        self.slot.raw = raw
        conn.reads_served(1)

    def abort(self):
        """The connection is gone (or going): stop, free the file."""
        if not self.done:
            self._release()

    def _release(self):
        self.done = True
        if self.conn.stream is self:
            self.conn.stream = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.backups.forget(self)
