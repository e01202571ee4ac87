"""A node's durable state: one data directory, locked while the node runs.

Data-dir layout::

    <data_dir>/
        LOCK      flock(2)ed exclusively while a node uses the dir (holds its pid, for operators)
        meta      JSON {"format": 1, "node_id": N, "cluster_id": "..."}; written once, atomically
        members   JSON {"voters": [...]}: the initial configuration, written once at
                  bootstrap (later configurations live in the log and snapshots)
        wal/      the write-ahead log: hard state and entry batches (raftfast._logstore)
        snap/     (reserved) snapshots, once log compaction arrives

Storage wires these together and recovers the node's state at open.  It is
thin on purpose: the Raft core keeps its entries in memory (an EntryLog),
and Storage only makes the core's Ready durable:

    storage.append(first_index, block, count)   # per Ready entries batch
    storage.save_hard_state(hs)                  # when the Ready has one
    await loop.run_in_executor(None, storage.sync)  # GIL released while fsyncing

Errors: every refusal to start (locked dir, another node's or cluster's
dir, damaged log, unreadable meta or members, a missing file) is a
StorageError whose message is fit for the operator: one line naming the
file and what is wrong.  Refusals leave the data dir as they found it:
everything that can be checked before the log is opened (which may repair
a torn last record) is checked first.  docs/faults.md lists them all.

A failed write or fsync at run time raises LogStoreError (an OSError naming
the file and errno); the store then refuses every later call, because the
data may already be lost from the page cache.
"""
import fcntl
import json
import os

from raftfast._entrylog import BlockError, EntryLog, block_count
from raftfast._logstore import (DEFAULT_SEGMENT_BYTES, LogCorruptError, LogStore,
                                LogStoreError, segment_name)
from raftfast.messages import HardState

__all__ = ["Storage", "StorageError", "LogStoreError", "LogCorruptError", "META_FORMAT"]

META_FORMAT = 1
LOCK_FILE = "LOCK"
META_FILE = "meta"
MEMBERS_FILE = "members"
WAL_DIR = "wal"
SNAP_DIR = "snap"  # reserved for the snapshot store


class StorageError(Exception):
    """The data dir cannot be used; the message says why (node exit code 1)."""


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path, data):
    # tmp + fsync + rename + fsync(dir): the file is either absent or whole.
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _lock(data_dir):
    path = os.path.join(data_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StorageError(f"cannot lock data dir {data_dir}: {e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % os.getpid())
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"data dir {data_dir} is locked by another running node") from None
    except OSError as e:
        os.close(fd)
        raise StorageError(f"cannot lock data dir {data_dir}: {e}") from None
    return fd


def _wal_segments(data_dir):
    """Sequence numbers of the WAL segments present, sorted."""
    wal = os.path.join(data_dir, WAL_DIR)
    try:
        names = os.listdir(wal)
    except FileNotFoundError:
        return []
    return sorted(int(n[:16]) for n in names
                  if len(n) == 20 and n.endswith(".wal") and n[:16].isdigit())


def _check_files(data_dir):
    """Refuse a data dir whose files cannot belong together, before anything
    in it is written.

    Bootstrap writes meta, then the log's first segment (made durable), then
    members; so members imply a log, and a log implies meta.  With no
    snapshots yet, the log starts at index 1, in segment 1, and segments
    are numbered without gaps.  (Once compaction drops old segments, a log
    may start later: then a snapshot must cover what it dropped.)
    """
    wal = os.path.join(data_dir, WAL_DIR)
    seqs = _wal_segments(data_dir)
    has_members = os.path.exists(os.path.join(data_dir, MEMBERS_FILE))
    if not os.path.exists(os.path.join(data_dir, META_FILE)) and (seqs or has_members):
        raise StorageError(f"{os.path.join(data_dir, META_FILE)}: no meta file, but the data dir "
                           "holds Raft state; refusing to guess whose it is")
    if not seqs:
        if has_members:
            raise StorageError(f"{wal}: the log is missing (no segment), but the data dir was "
                               "bootstrapped; starting afresh could make this node vote twice")
        return
    last = seqs[len(seqs) - 1]  # compiled with wraparound off: no negative indexes
    for want, have in enumerate(seqs, seqs[0]):
        if want != have:
            raise StorageError(f"{os.path.join(wal, segment_name(want))}: log segment missing "
                               f"(the log has segments {seqs[0]}..{want - 1} and {have}..{last})")
    if seqs[0] != 1:
        raise StorageError(f"{os.path.join(wal, segment_name(1))}: log segment missing (the log "
                           f"starts at segment {seqs[0]}, and no snapshot covers what is before)")


def _check_meta(data_dir, node_id, cluster_id):
    """Verify the dir's identity, or write it on first use."""
    path = os.path.join(data_dir, META_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        # _check_files refused a dir holding state without its meta.
        meta = {"format": META_FORMAT, "node_id": node_id, "cluster_id": cluster_id}
        _write_atomically(path, json.dumps(meta, sort_keys=True).encode() + b"\n")
        return
    try:
        meta = json.loads(raw.decode("utf-8"))
        fmt, stored_id, stored_cluster = meta["format"], meta["node_id"], meta["cluster_id"]
    except (ValueError, TypeError, KeyError) as e:
        raise StorageError(f"{path}: damaged meta file ({_why(e)})") from None
    if fmt != META_FORMAT:
        raise StorageError(f"{path}: data dir format {fmt!r}, this raftfast reads {META_FORMAT}")
    if stored_cluster != cluster_id or stored_id != node_id:
        raise StorageError(f"data dir {data_dir} belongs to node {stored_id} of cluster "
                           f"{stored_cluster!r}, not node {node_id} of cluster {cluster_id!r}")


def _why(e):
    """What a JSON or lookup error says, in words."""
    if isinstance(e, KeyError):
        return f"no {e.args[0]!r} field"
    if isinstance(e, TypeError):
        return "not a JSON object"
    return str(e) or type(e).__name__


def _recover(log):
    """Replay the log into (HardState, EntryLog)."""
    # When snapshots arrive, the EntryLog starts after the snapshot's index
    # and records wholly below it are skipped.
    entries = EntryLog(1)
    hs = HardState()

    def on_entries(first, block, count):
        last = entries.last_index
        if first > last + 1:
            raise StorageError(f"log in {log.path} skips from index {last} to {first}")
        try:
            n = block_count(block)
        except BlockError as e:
            raise StorageError(f"log in {log.path}: bad entry block at index {first}: {e}") from None
        if n != count:
            raise StorageError(f"log in {log.path}: record at index {first} says {count} "
                               f"entries, its block holds {n}")
        entries.append(first, block)  # also cuts any suffix from `first` on

    def on_hard_state(term, vote, commit):
        hs.term, hs.vote, hs.commit = term, vote, commit

    log.replay(on_entries, on_hard_state)
    if hs.commit > entries.last_index:
        # Entries reach the log before the hard state that commits them, so
        # a log that ends below its commit index has lost its tail.
        raise StorageError(f"log in {log.path} ends at index {entries.last_index}, but its "
                           f"hard state says {hs.commit} entries are committed: "
                           "the end of the log is missing")
    return hs, entries


class Storage:
    """One node's data dir.  Use Storage.open(); close() releases the lock.

    Attributes after open:
        hard_state  HardState: recovered at open, then the last one saved
        entry_log   EntryLog: the recovered entries, for the core to own
        is_new      True when the dir held no Raft state (term, vote, commit
                    all 0 and no entries): the node should bootstrap
    """

    def __init__(self, data_dir, node_id, cluster_id, lock_fd, log, hard_state, entry_log):
        self.data_dir = data_dir
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.hard_state = hard_state
        self.entry_log = entry_log
        self.is_new = hard_state == HardState() and len(entry_log) == 0
        self._lock_fd = lock_fd
        self._log = log

    @classmethod
    def open(cls, data_dir, node_id, cluster_id, fsync=True, segment_bytes=DEFAULT_SEGMENT_BYTES):
        """Lock, check and recover data_dir (created if missing); StorageError if refused."""
        data_dir = os.path.abspath(os.fspath(data_dir))
        try:
            if not os.path.isdir(data_dir):
                os.makedirs(data_dir)
                _fsync_dir(os.path.dirname(data_dir))
        except OSError as e:
            raise StorageError(f"cannot create data dir {data_dir}: {e}") from None
        lock_fd = _lock(data_dir)
        log = None
        try:
            _check_files(data_dir)
            _check_meta(data_dir, node_id, cluster_id)
            log = LogStore(os.path.join(data_dir, WAL_DIR), fsync=fsync, segment_bytes=segment_bytes)
            hs, entries = _recover(log)
            return cls(data_dir, node_id, cluster_id, lock_fd, log, hs, entries)
        except BaseException as e:
            if log is not None:
                log.close()
            os.close(lock_fd)
            if isinstance(e, LogCorruptError):
                raise StorageError(f"damaged log, refusing to start: {e}") from None
            if isinstance(e, OSError):
                raise StorageError(f"cannot open data dir {data_dir}: {e}") from None
            raise

    @property
    def fsync(self):
        return self._log.fsync

    def append(self, first_index, block, count):
        """Persist one batch (page cache; durable after sync()).  A
        first_index at or below the last stored index replaces the stored
        suffix from there on."""
        self._log.append_entries(first_index, block, count)

    def save_hard_state(self, hs):
        self._log.save_hard_state(hs.term, hs.vote, hs.commit)
        self.hard_state = hs

    def sync(self):
        """Make everything appended and saved so far durable.  Thread-safe
        and GIL-free while waiting on the disk: meant for run_in_executor."""
        self._log.sync()

    def members(self):
        """The initial voters recorded at bootstrap, or None before that."""
        path = os.path.join(self.data_dir, MEMBERS_FILE)
        try:
            with open(path, "rb") as f:
                voters = json.loads(f.read().decode("utf-8"))["voters"]
        except FileNotFoundError:
            if not self.is_new:
                raise StorageError(f"{path}: members file missing, but the data dir holds "
                                   "Raft state") from None
            return None
        except OSError as e:
            raise StorageError(f"{path}: cannot read the members file: {e.strerror}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{path}: damaged members file ({_why(e)})") from None
        if (not isinstance(voters, list) or not voters
                or not all(isinstance(v, int) and 0 < v < 1 << 63 for v in voters)):
            raise StorageError(f"{path}: damaged members file (voters must be a non-empty "
                               "list of node ids)")
        return sorted(voters)

    def save_members(self, voters):
        """Record the initial voters (once, at bootstrap; atomically).  The
        log is made durable first, so that members on disk imply a log on
        disk: a dir with members and no log is refused as damaged."""
        self._log.sync()
        _write_atomically(os.path.join(self.data_dir, MEMBERS_FILE),
                          json.dumps({"voters": sorted(voters)}).encode())

    def close(self):
        """Close the log and release the data-dir lock.  Does not sync."""
        if self._lock_fd is None:
            return
        try:
            self._log.close()
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
