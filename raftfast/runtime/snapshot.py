"""Point-in-time snapshots of the key-value state machine: the file format,
an incremental writer the event loop drives step by step, a verifying
loader, and a raw chunk reader for streaming a snapshot to a follower.

Scheme (docs/snapshots.md): KVStore.begin_snapshot() freezes the live dict
in O(1) as a read-only base; writes meanwhile go to an overlay that reads
consult first.  SnapshotWriter.step() encodes one bounded chunk of the
frozen base per call, so no call blocks the loop for more than a few ms;
after the last chunk the freeze ends, the file is fsynced and renamed into
place, and the overlay is merged back into the base in bounded steps.

File format, version 2 (written), all integers little-endian:

    header   8s  magic b"RFKVSNAP"
             u32 version (2)
             u32 header length (this whole header, meta and crc included)
             u64 last Raft index the snapshot covers
             u64 term of that entry
             u64 record count (keys and sessions)
             u64 the store's cluster time (ms) at that entry
             u64 the last client session id given out
             u32 meta length, then meta bytes (opaque to this module: the
                 membership configuration travels here)
             u32 CRC32C of every header byte before it
    chunks   u32 payload length (> 0), u32 record count (> 0),
             u32 CRC32C of (length, count, payload), payload: records, each
             a u8 kind then
               0  u32 key length, u32 value length, key, value
               1  u32 key length, u32 value length, i64 deadline (ms), key, value
               2  a session: u64 id, u64 last seq, i64 last used (ms),
                  u32 reply length, reply (RESP2 bytes; 0: none yet)
             keys first, then sessions
    end      u32 0, u32 0, u64 record count (again),
             u32 CRC32C of the whole file before this field

Version 1 has no time, session id or kinds: its header stops after the key
count (then meta), and every record is u32 key length, u32 value length,
key, value.  It is still read, and written while the cluster version is 1
(runtime/cluster_version.py: a member may run raftfast 0.1.0, which reads
only version 1; such a cluster has no deadlines and no sessions).

The per-chunk CRC locates damage; the whole-file CRC and the repeated key
count catch a chunk dropped, repeated or reordered.  Nothing may follow.
"""
import os
import struct
import tempfile
from dataclasses import dataclass

from raftfast._crc import crc32c
from raftfast._kv import KVStore, SnapshotBusy, decode_records, decode_records_v2

__all__ = ["MAGIC", "VERSION", "SnapshotBusy", "SnapshotError", "SnapshotMeta",
           "SnapshotWriter", "SnapshotLoader", "write_snapshot", "load_snapshot",
           "read_snapshot_meta", "read_chunks"]

MAGIC = b"RFKVSNAP"
VERSION = 2
READABLE = (1, 2)
_PREFIX = struct.Struct("<8sII")          # magic, version, header length
# index, term, record count, (v2: time, last session id,) meta length
_FIXED = {1: struct.Struct("<QQQI"), 2: struct.Struct("<QQQQQI")}
_U32 = struct.Struct("<I")
_FRAME = struct.Struct("<II")             # payload length, record count
_END = struct.Struct("<QI")               # key count, file crc
HEADER_MIN = {v: _PREFIX.size + f.size for v, f in _FIXED.items()}  # before meta and crc
HEADER_MAX = 1 << 24                               # meta is small (a member list)

# One step's default work: at 16-byte keys and values, 8192 records are
# 320 KB, well under a millisecond to encode and checksum.
DEFAULT_STEP_KEYS = 8192
DEFAULT_CHUNK_BYTES = 1 << 20


class SnapshotError(Exception):
    """A snapshot file that cannot be used, or could not be written; the
    message names the file and what is wrong."""


@dataclass(frozen=True)
class SnapshotMeta:
    index: int
    term: int
    count: int
    meta: bytes = b""
    version: int = VERSION
    time: int = 0           # the store's cluster time (ms)
    next_session: int = 0   # the last session id given out


def _header(index, term, count, meta, time, next_session, version=VERSION):
    length = HEADER_MIN[version] + len(meta) + _U32.size
    fields = (index, term, count, time, next_session) if version == 2 else (index, term, count)
    body = _PREFIX.pack(MAGIC, version, length) + _FIXED[version].pack(*fields, len(meta)) + meta
    return body + _U32.pack(crc32c(body))


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SnapshotWriter:
    """Writes kv's state at this moment to `path`, a step at a time.

    The constructor freezes the store (KVStore.begin_snapshot; SnapshotBusy
    if another snapshot is frozen or still merging back) and opens a
    temporary file beside `path`.  Then, from the event loop:

        write_step(n)  one chunk of at most n keys (and chunk_bytes); True
                       once every chunk and the end are written, at which
                       point the freeze ends (writes go back to the base)
        sync()         flush, fsync, rename into place, fsync the directory;
                       touches no shared state, so the runtime may run it
                       in a thread (a slow disk must not stall the loop)
        merge_step(n)  merge up to n overlay entries back; True when done
        step(n)        all three in turn, inline; True when everything is
        run()          step until done (tests, start-up)
        abort()        give up: release the store, remove the temporary

    Any failure removes the temporary file, releases the store, and raises
    SnapshotError naming the file; `path` is only ever replaced by a
    complete, fsynced file.
    """

    def __init__(self, kv, path, index, term, meta=b"", chunk_bytes=DEFAULT_CHUNK_BYTES,
                 version=VERSION):
        self.kv = kv
        self.path = os.fspath(path)
        self.index, self.term, self.meta = index, term, bytes(meta)
        self.chunk_bytes = chunk_bytes
        self.written = False      # every byte is in the temporary file
        self.synced = False       # renamed into place, durable
        self.done = False
        self._snap = kv.begin_snapshot()
        if version == 1 and not self._snap.v1_possible:
            self._snap.release()
            raise SnapshotError(f"snapshot {self.path}: version 1 holds no deadlines or "
                                "sessions, and the store has some")
        self._snap.records_v1 = version == 1
        self.version = version
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, self.tmp_path = tempfile.mkstemp(
                dir=directory, prefix="." + os.path.basename(self.path) + ".", suffix=".tmp")
        except OSError as e:
            self._snap.release()
            raise SnapshotError(f"snapshot {self.path}: cannot create a temporary file "
                                f"in {directory}: {e}") from e
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._crc = 0
        self.bytes = 0
        self._written_back = 0    # bytes made durable by flush_to_disk so far
        self._write(_header(index, term, self._snap.count, self.meta, self._snap.time,
                            self._snap.next_session, version))

    @property
    def count(self):
        return self._snap.count

    def _write(self, data):
        try:
            self._file.write(data)
        except OSError as e:
            self._fail(f"writing {self.tmp_path} failed: {e}", e)
        self._crc = crc32c(data, self._crc)
        self.bytes += len(data)

    def _fail(self, what, cause=None):
        self.abort()
        raise SnapshotError(f"snapshot {self.path}: {what}") from cause

    def write_step(self, budget_keys=DEFAULT_STEP_KEYS):
        if self.written:
            return True
        if self._file is None:
            raise SnapshotError(f"snapshot {self.path}: the writer was aborted")
        chunk = self._snap.next_chunk(budget_keys, self.chunk_bytes)
        if chunk is not None:
            records, n = chunk
            frame = _FRAME.pack(len(records), n)
            self._write(frame + _U32.pack(crc32c(records, crc32c(frame))))
            self._write(records)
            return False
        end = _FRAME.pack(0, 0) + struct.pack("<Q", self._snap.count)
        self._write(end)
        self._write(_U32.pack(self._crc))
        self._snap.release()      # the point in time is all in the file
        self.written = True
        return True

    @property
    def unflushed(self):
        """Bytes written since the last flush_to_disk()."""
        return self.bytes - self._written_back

    def flush_to_disk(self):
        """fdatasync what was written so far.  For the runtime to call from
        a worker thread every few megabytes, never at the same time as
        write_step: left to the final fsync, tens of megabytes reach the
        disk at once, and every other fsync on that disk (the Raft log's,
        which clients' writes wait for) queues behind them.  Raises OSError;
        the caller aborts the writer (on its own thread)."""
        self._file.flush()
        os.fdatasync(self._file.fileno())
        self._written_back = self.bytes

    def sync(self):
        if self.synced:
            return
        if not self.written:
            raise SnapshotError(f"snapshot {self.path}: sync before every chunk was written")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.tmp_path, self.path)
        except OSError as e:
            self._fail(f"making {self.tmp_path} durable failed: {e}", e)
        try:
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except OSError as e:
            # The file is complete under its name; only the rename's
            # durability is in doubt.  Say so rather than pretend.
            raise SnapshotError(f"snapshot {self.path}: renamed into place, but fsync of "
                                f"its directory failed: {e}") from e
        self.synced = True

    def merge_step(self, budget_keys=DEFAULT_STEP_KEYS):
        return self.kv.merge_step(budget_keys)

    def step(self, budget_keys=DEFAULT_STEP_KEYS):
        if self.done:
            return True
        if not self.written:
            self.write_step(budget_keys)
            return False
        if not self.synced:
            self.sync()
            return False
        self.done = self.merge_step(budget_keys)
        return self.done

    def run(self, budget_keys=DEFAULT_STEP_KEYS):
        while not self.step(budget_keys):
            pass
        return SnapshotMeta(self.index, self.term, self._snap.count, self.meta, self.version,
                            self._snap.time, self._snap.next_session)

    def abort(self):
        """Stop: the store is released (its overlay merges back), the
        temporary file removed.  Harmless after success."""
        self._snap.release()
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if not self.synced:
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass


def write_snapshot(kv, path, index, term, meta=b"", budget_keys=DEFAULT_STEP_KEYS):
    """Write a snapshot to completion (tests, tools)."""
    return SnapshotWriter(kv, path, index, term, meta).run(budget_keys)


def _read_exact(f, n, path, what, offset):
    data = f.read(n)
    if len(data) != n:
        raise SnapshotError(f"snapshot {path}: truncated: {what} at offset {offset} needs "
                            f"{n} bytes, the file has {len(data)} left")
    return data


def _read_header(f, path):
    prefix = f.read(_PREFIX.size)
    if len(prefix) < 8 and MAGIC.startswith(prefix):
        raise SnapshotError(f"snapshot {path}: truncated: {len(prefix)} bytes, not even a header")
    if len(prefix) < 8 or prefix[:8] != MAGIC:
        raise SnapshotError(f"snapshot {path}: not a raftfast snapshot (magic "
                            f"{prefix[:8]!r}, expected {MAGIC!r})")
    if len(prefix) < _PREFIX.size:
        raise SnapshotError(f"snapshot {path}: truncated inside the header")
    _, version, length = _PREFIX.unpack(prefix)
    if version not in READABLE:
        raise SnapshotError(f"snapshot {path}: format version {version}; this build reads "
                            f"versions {', '.join(map(str, READABLE))}")
    header_min = HEADER_MIN[version]
    if not header_min + _U32.size <= length <= HEADER_MAX:
        raise SnapshotError(f"snapshot {path}: implausible header length {length}")
    rest = _read_exact(f, length - _PREFIX.size, path, "the header", _PREFIX.size)
    body, (crc,) = prefix + rest[:-4], _U32.unpack(rest[-4:])
    if crc32c(body) != crc:
        raise SnapshotError(f"snapshot {path}: header checksum mismatch (stored {crc:#010x}, "
                            f"computed {crc32c(body):#010x})")
    if version == 1:
        index, term, count, meta_len = _FIXED[1].unpack_from(body, _PREFIX.size)
        time = next_session = 0
    else:
        index, term, count, time, next_session, meta_len = _FIXED[2].unpack_from(body,
                                                                                 _PREFIX.size)
    if header_min + meta_len + 4 != length:
        raise SnapshotError(f"snapshot {path}: meta length {meta_len} does not fit a header "
                            f"of {length} bytes")
    return (SnapshotMeta(index, term, count, bytes(body[header_min:]), version, time,
                         next_session), body + rest[-4:])


def read_snapshot_meta(path):
    """The header of a snapshot file (checked, but not the chunks)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return _read_header(f, path)[0]
    except OSError as e:
        raise SnapshotError(f"snapshot {path}: cannot read: {e}") from e


class SnapshotLoader:
    """Reads and verifies a snapshot file into a new KVStore, a bounded
    number of chunks per step() (a follower installing a snapshot can run
    it from its loop); load_snapshot() runs it through.  Every check fails
    with SnapshotError naming the file, the offset and what is wrong."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")
            self.size = os.fstat(self._file.fileno()).st_size
            self.meta, header = _read_header(self._file, self.path)
        except OSError as e:
            self.close()
            raise SnapshotError(f"snapshot {self.path}: cannot read: {e}") from e
        except SnapshotError:
            self.close()
            raise
        self._crc = crc32c(header)
        self._offset = len(header)
        self._data = {}
        self._expires = {}
        self._sessions = []
        self._records = 0
        self._chunk = 0
        self.store = None

    def close(self):
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
            self._file = None

    def _bad(self, what):
        self.close()
        raise SnapshotError(f"snapshot {self.path}: {what}")

    def step(self, max_chunks=1):
        """Verify and load up to max_chunks chunks; True once the whole file
        checked out (then .store is the KVStore)."""
        if self.store is not None:
            return True
        try:
            for _ in range(max_chunks):
                if self._next_chunk():
                    return True
            return False
        except OSError as e:
            self._bad(f"cannot read: {e}")

    def _next_chunk(self):
        f, at = self._file, self._offset
        frame = _read_exact(f, _FRAME.size, self.path, f"chunk {self._chunk}", at)
        length, n = _FRAME.unpack(frame)
        if length == 0 and n == 0:
            return self._finish(frame, at)
        if length == 0 or n == 0 or length > self.size - at - 12:
            self._bad(f"chunk {self._chunk} at offset {at}: implausible frame (payload "
                      f"{length} bytes, {n} records, {self.size - at - 12} bytes left)")
        crc_bytes = _read_exact(f, 4, self.path, f"chunk {self._chunk}", at)
        payload = _read_exact(f, length, self.path, f"chunk {self._chunk}", at)
        (stored,) = _U32.unpack(crc_bytes)
        computed = crc32c(payload, crc32c(frame))
        if stored != computed:
            self._bad(f"chunk {self._chunk} at offset {at}: checksum mismatch (stored "
                      f"{stored:#010x}, computed {computed:#010x})")
        if self._records + n > self.meta.count:
            self._bad(f"chunk {self._chunk} at offset {at}: more records than the "
                      f"{self.meta.count} the header announces")
        try:
            if self.meta.version == 1:
                decode_records(payload, n, self._data)
            else:
                decode_records_v2(payload, n, self._data, self._expires, self._sessions)
        except ValueError as e:
            self._bad(f"chunk {self._chunk} at offset {at}: {e}")
        self._records += n
        self._crc = crc32c(payload, crc32c(crc_bytes, crc32c(frame, self._crc)))
        self._offset += 12 + length
        self._chunk += 1
        return False

    def _finish(self, frame, at):
        rest = _read_exact(self._file, _END.size, self.path, "the end record", at)
        count, stored = _END.unpack(rest)
        computed = crc32c(rest[:8], crc32c(frame, self._crc))
        if stored != computed:
            self._bad(f"file checksum mismatch at the end record (offset {at}): stored "
                      f"{stored:#010x}, computed {computed:#010x}")
        if count != self.meta.count or self._records != count:
            self._bad(f"record count mismatch: header {self.meta.count}, end record {count}, "
                      f"records {self._records}")
        if self._file.read(1):
            self._bad(f"bytes after the end record (offset {at + 8 + _END.size})")
        self.close()
        try:
            self.store = KVStore.from_parts(self._data, self._expires, self._sessions,
                                            self.meta.time, self.meta.next_session)
        except ValueError as e:
            self._bad(str(e))
        self._data = self._expires = self._sessions = None
        return True


def load_snapshot(path):
    """(KVStore, SnapshotMeta) from a snapshot file, every byte verified;
    SnapshotError with a message naming the file and the damage."""
    loader = SnapshotLoader(path)
    while not loader.step(64):
        pass
    return loader.store, loader.meta


def read_chunks(path, chunk_bytes, offset=0, fd=None):
    """The raw bytes of a snapshot file, chunk_bytes at a time from offset
    (InstallSnapshot streams these; a lost chunk resumes from its offset).
    The file is opened once: a newer snapshot renamed over `path` meanwhile
    does not change what this generator yields (POSIX keeps the old inode
    until it is closed), so a snapshot being sent stays valid until sent.

    With fd, an open descriptor of that file which the caller keeps (and
    closes), the bytes come from it (os.pread, so several generators over
    one descriptor do not disturb each other) and `path` only names it in
    errors: a sender holding the descriptor resumes at any offset, however
    often, even after compaction deleted the file."""
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be at least 1")
    path = os.fspath(path)
    if fd is not None:
        return _pread_chunks(path, fd, chunk_bytes, offset)
    return _file_chunks(path, chunk_bytes, offset)


def _pread_chunks(path, fd, chunk_bytes, offset):
    while True:
        try:
            data = os.pread(fd, chunk_bytes, offset)
        except OSError as e:
            raise SnapshotError(f"snapshot {path}: cannot read at offset {offset}: {e}") from e
        if not data:
            return
        offset += len(data)
        yield data


def _file_chunks(path, chunk_bytes, offset):
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SnapshotError(f"snapshot {path}: cannot read: {e}") from e
    with f:
        f.seek(offset)
        while True:
            data = f.read(chunk_bytes)
            if not data:
                return
            yield data
