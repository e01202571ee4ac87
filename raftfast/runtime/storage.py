"""A node's durable state: one data directory, locked while the node runs.

Data-dir layout::

    <data_dir>/
        LOCK      flock(2)ed exclusively while a node uses the dir (holds its pid, for operators)
        meta      JSON {"format": 1, "node_id": N, "cluster_id": "..."}; written once, atomically
        members   JSON {"voters": [...]}: the initial configuration, written once at
                  bootstrap (later configurations live in the log and snapshots);
                  {"voters": [], "join": true} for a node started with --join,
                  which begins outside the configuration and waits to be added
        wal/      the write-ahead log: hard state and entry batches (raftfast._logstore)
        snap/     snapshots of the state machine, snap-<index, 16 hex digits>.snap
                  (raftfast.runtime.snapshot's format); .<name>.<random>.tmp while one is written,
                  .snap-incoming.<random>.tmp while one is received from the leader

Storage wires these together and recovers the node's state at open.  It is
thin on purpose: the Raft core keeps its entries in memory (an EntryLog),
and Storage only makes the core's Ready durable:

    storage.append(first_index, block, count)   # per Ready entries batch
    storage.save_hard_state(hs)                  # when the Ready has one
    await loop.run_in_executor(None, storage.sync)  # GIL released while fsyncing

Snapshots and compaction (docs/snapshots.md): recovery loads the newest
snapshot (every byte verified) and replays the log after its index, so the
log may begin in a segment above 1.  compact(snap_index, trailing) drops
the WAL segments the snapshot covers (less a trailing margin) and the
older snapshot files.  A damaged newest snapshot is a refusal to start,
even if an older one and the log could stand in for it (see _load_snapshot).
install_snapshot(path, index, term) makes a snapshot received from the
leader the node's state: renamed into place, then a log reset record (the
log restarts after it) made durable; recovery finishes an install a crash
cut short between the two (see _stale_after_snapshot).

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
import logging
import os
import tempfile

from raftfast._entrylog import BlockError, EntryLog, block_count
from raftfast._logstore import (DEFAULT_SEGMENT_BYTES, LogCorruptError, LogStore, LogStoreError,
                                segment_name, segment_numbers)
from raftfast.core.messages import ConfigFormatError, HardState, decode_config
from raftfast.runtime.snapshot import SnapshotError, load_snapshot, read_snapshot_meta

__all__ = ["Storage", "StorageError", "LogStoreError", "LogCorruptError", "META_FORMAT",
           "snapshot_name"]

META_FORMAT = 1
LOCK_FILE = "LOCK"
META_FILE = "meta"
MEMBERS_FILE = "members"
WAL_DIR = "wal"
SNAP_DIR = "snap"
DEFAULT_KEEP_SNAPSHOTS = 2  # the newest, and the one before (may still be being sent)

_log = logging.getLogger("raftfast.storage")


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


def _listdir(path):
    """The names in a directory, none when it does not exist (yet)."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _wal_segments(data_dir):
    """Sequence numbers of the WAL segments present, sorted."""
    wal = os.path.join(data_dir, WAL_DIR)
    return segment_numbers(wal) if os.path.isdir(wal) else []


def snapshot_name(index):
    return "snap-%016x.snap" % index


def _snapshot_files(data_dir):
    """[(index, path)] of the snapshot files in <data_dir>/snap, oldest first."""
    snap = os.path.join(data_dir, SNAP_DIR)
    out = []
    for n in _listdir(snap):
        if len(n) == 26 and n.startswith("snap-") and n.endswith(".snap"):
            try:
                index = int(n[5:21], 16)
            except ValueError:
                continue
            if snapshot_name(index) == n:  # int() also takes "+", "_", spaces
                out.append((index, os.path.join(snap, n)))
    out.sort()
    return out


def _snapshot_temps(data_dir):
    """Temporary files of snapshot writes that never finished (a crash)."""
    snap = os.path.join(data_dir, SNAP_DIR)
    return sorted(os.path.join(snap, n) for n in _listdir(snap)
                  if n.startswith(".snap-") and n.endswith(".tmp"))


def _check_files(data_dir):
    """Refuse a data dir whose files cannot belong together, before anything
    in it is written.

    Bootstrap writes meta, then the log's first segment (made durable), then
    members; so members imply a log, and a log implies meta.  Segments are
    numbered without gaps.  Without a snapshot the log starts at index 1,
    in segment 1; compaction drops old segments only once a snapshot covers
    them, so a log starting later needs a snapshot.  Whether the snapshot
    reaches far enough is checked by index when the log is opened.
    """
    wal = os.path.join(data_dir, WAL_DIR)
    seqs = _wal_segments(data_dir)
    snaps = _snapshot_files(data_dir)
    has_members = os.path.exists(os.path.join(data_dir, MEMBERS_FILE))
    if not os.path.exists(os.path.join(data_dir, META_FILE)) and (seqs or has_members or snaps):
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
    if seqs[0] != 1 and not snaps:
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


def _remove_snapshot_temps(data_dir, fsync):
    """Delete what snapshot writes cut short by a crash left (only once
    every check passed: a refused start changes nothing)."""
    temps = _snapshot_temps(data_dir)
    for path in temps:
        os.unlink(path)
    if temps and fsync:
        _fsync_dir(os.path.join(data_dir, SNAP_DIR))


def _why(e):
    """What a JSON or lookup error says, in words."""
    if isinstance(e, KeyError):
        return f"no {e.args[0]!r} field"
    if isinstance(e, TypeError):
        return "not a JSON object"
    return str(e) or type(e).__name__


def _load_snapshot(data_dir):
    """(path, SnapshotMeta, KVStore) of the newest snapshot, every byte
    verified, or (None, None, None) when there is none.

    A damaged newest snapshot is a refusal to start, naming the file, even
    when an older snapshot and the log would cover what it held.  It was
    complete and fsynced before it was renamed into place, so damage to it
    is not a crash's doing but a disk's (principle 5: only a torn last log
    record is repaired); and compaction keeps the log only from the newest
    snapshot's index less the trailing margin, so an older one rarely has
    the log it needs.  An operator who moves the damaged file out of snap/
    gets exactly that fallback, checked: the older snapshot is then the
    newest, and the log must reach back to it or the start is refused."""
    snaps = _snapshot_files(data_dir)
    if not snaps:
        return None, None, None
    index, path = snaps[len(snaps) - 1]
    try:
        kv, meta = load_snapshot(path)
    except SnapshotError as e:
        raise StorageError(f"damaged snapshot, refusing to start: {e} (an older snapshot is "
                           "not used in its place; see docs/faults.md)") from None
    if meta.index != index:
        raise StorageError(f"{path}: damaged snapshot, refusing to start: named for index "
                           f"{index}, its header says {meta.index}")
    return path, meta, kv


def _recover(log, snap_index=0, snap_term=0, snap_path=None):
    """Replay the log after snap_index into (HardState, EntryLog,
    finish_install).

    The log store hands over only what follows its newest reset record
    (a snapshot installed from the leader: everything before it is void),
    skips records wholly below snap_index, and refuses a gap after it.
    Where a record still holds the entry at snap_index with another term
    than the snapshot's: refused if the hard state says it is committed;
    otherwise it is InstallSnapshot's crash window (the snapshot renamed
    into place, the reset record not yet written), the entries from
    snap_index on are stale and dropped (_stale_after_snapshot), and
    finish_install tells the caller to write the reset now."""
    entries = [EntryLog(snap_index + 1)]  # a list: the callbacks may start it afresh
    hs = HardState()
    seen_term = [None]  # the log's term at snap_index, where a kept record holds it
    reset = [None]

    def on_reset(index, term):
        # Replay starts here: nothing before it was handed over.
        reset[0] = (index, term)

    def on_entries(first, block, count):
        try:
            n = block_count(block)
        except BlockError as e:
            raise StorageError(f"log in {log.path}: bad entry block at index {first}: {e}") from None
        if n != count:
            raise StorageError(f"log in {log.path}: record at index {first} says {count} "
                               f"entries, its block holds {n}")
        last = first + count - 1
        if last < snap_index:
            # Cuts the log back below the snapshot (the store hands such a
            # record over only then): nothing above it is left.
            entries[0] = EntryLog(snap_index + 1)
            seen_term[0] = None
            return
        if first <= snap_index:
            # Holds the snapshot's index: keep only the entries after it.
            part = EntryLog(first)
            part.append(first, block)
            seen_term[0] = part.term(snap_index)
            if last == snap_index:
                entries[0] = EntryLog(snap_index + 1)
                return
            block, count = part.slice(snap_index + 1, last + 1)
            first = snap_index + 1
        top = entries[0].last_index
        if first > top + 1:
            raise StorageError(f"log in {log.path} skips from index {top} to {first}")
        entries[0].append(first, block)  # also cuts any suffix from `first` on

    def on_hard_state(term, vote, commit):
        hs.term, hs.vote, hs.commit = term, vote, commit

    log.replay(on_entries, on_hard_state, snap_index, on_reset)
    if reset[0] is not None and reset[0][0] == snap_index and reset[0][1] != snap_term:
        raise StorageError(f"log in {log.path} was reset to continue after index {snap_index} "
                           f"at term {reset[0][1]}, but snapshot {snap_path} says term {snap_term}")
    if seen_term[0] is not None and seen_term[0] != snap_term:
        if hs.commit >= snap_index:
            # The log's own entry at snap_index is committed: a snapshot
            # holds committed state only, and committed entries are never
            # overwritten, so the two disagree about committed state.
            raise StorageError(f"log in {log.path} has entry {snap_index} at term {seen_term[0]}, "
                               f"committed (commit index {hs.commit}), but snapshot {snap_path} "
                               f"says term {snap_term}")
        _stale_after_snapshot(log, entries[0], snap_index, snap_term, snap_path, seen_term[0])
        entries[0] = EntryLog(snap_index + 1)
        finish_install = True
    else:
        finish_install = False
    entries = entries[0]
    if hs.commit > entries.last_index:
        # Entries reach the log before the hard state that commits them, so
        # a log that ends below its commit index has lost its tail.
        raise StorageError(f"log in {log.path} ends at index {entries.last_index}, but its "
                           f"hard state says {hs.commit} entries are committed: "
                           "the end of the log is missing")
    return hs, entries, finish_install


def _stale_after_snapshot(log, entries, snap_index, snap_term, snap_path, log_term):
    """The log's entry at snap_index has another term than the snapshot,
    and no reset record says the log restarts there: InstallSnapshot's crash
    window (the snapshot renamed into place, the reset not yet durable).

    Every entry from snap_index on is stale and uncommitted, so it is
    dropped: the snapshot holds committed state, so the committed entry at
    snap_index has snap_term; were the log's entry at any index i >=
    snap_index committed, the committed log would hold that same entry,
    and by Log Matching two logs sharing an entry (index and term) agree
    on every entry before it -- so the log's term at snap_index would be
    snap_term.  It is not, so none of them is committed, and none ever will
    be: a leader holding one would hold the log's entry at snap_index too,
    which Leader Completeness rules out once snap_index is committed.
    Their acknowledgements counted for nothing that can commit.

    The caller then finishes the install (a reset record at the snapshot):
    the stale entry at snap_index stays in the WAL until compaction, and
    without the reset every later recovery would find it again and drop
    the good entries appended after it."""
    n = entries.last_index - snap_index
    _log.warning("log in %s has entry %d at term %d, but snapshot %s (installed from the leader, "
                 "its log reset not yet written) says term %d: entries %d..%d are stale and "
                 "uncommitted, dropped; the log now restarts after the snapshot "
                 "(docs/snapshots.md)", log.path, snap_index, log_term, snap_path, snap_term,
                 snap_index, snap_index + n)


class Storage:
    """One node's data dir.  Use Storage.open(); close() releases the lock.

    Attributes after open:
        hard_state  HardState: recovered at open, then the last one saved
        entry_log   EntryLog: the recovered entries after the snapshot
                    (first_index == snap_index + 1), for the core to own
        snap_index, snap_term
                    what the newest snapshot covers (0, 0 without one):
                    Raft(cfg, entry_log, hard_state, snap_index, snap_term)
        snapshot    its SnapshotMeta (with .meta, the opaque bytes the
                    membership will travel in), or None
        snapshot_file  its path, or None
        kv          the KVStore loaded from it, or None (start empty); the
                    node takes it, and applies from snap_index + 1 (set at
                    open only: install_snapshot moves snap_index, snap_term,
                    snapshot and snapshot_file, the node swaps its own store)
        is_new      True when the dir held no Raft state (term, vote, commit
                    all 0, no entries, no snapshot): the node should bootstrap
    """

    def __init__(self, data_dir, node_id, cluster_id, lock_fd, log, hard_state, entry_log,
                 snapshot_file=None, snapshot=None, kv=None):
        self.data_dir = data_dir
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.hard_state = hard_state
        self.entry_log = entry_log
        self.snapshot_file = snapshot_file
        self.snapshot = snapshot
        self.snap_index = snapshot.index if snapshot is not None else 0
        self.snap_term = snapshot.term if snapshot is not None else 0
        self.kv = kv
        self.is_new = hard_state == HardState() and len(entry_log) == 0 and snapshot is None
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
        snap_path, snap_index = None, 0
        try:
            _check_files(data_dir)
            _check_meta(data_dir, node_id, cluster_id)
            snap_path, snap, kv = _load_snapshot(data_dir)
            snap_index = snap.index if snap is not None else 0
            snap_term = snap.term if snap is not None else 0
            # The store checks, before it repairs anything, that the log
            # reaches back to snap_index + 1.
            log = LogStore(os.path.join(data_dir, WAL_DIR), fsync=fsync, segment_bytes=segment_bytes,
                           snap_index=snap_index)
            hs, entries, finish_install = _recover(log, snap_index, snap_term, snap_path)
            if finish_install:
                # Durable before anything is appended after the snapshot.
                log.reset_log(snap_index, snap_term)
                log.sync()
            _remove_snapshot_temps(data_dir, fsync)
            return cls(data_dir, node_id, cluster_id, lock_fd, log, hs, entries, snap_path, snap, kv)
        except BaseException as e:
            if log is not None:
                log.close()
            os.close(lock_fd)
            if isinstance(e, LogCorruptError):
                covered = (f"; the newest snapshot, {snap_path}, covers up to index {snap_index}"
                           if snap_path else "; there is no snapshot")
                raise StorageError(f"damaged log, refusing to start: {e}{covered}") from None
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

    def _snap_dir(self):
        """<data-dir>/snap, created the first time (made durable in the data dir)."""
        snap = os.path.join(self.data_dir, SNAP_DIR)
        if not os.path.isdir(snap):
            os.mkdir(snap)
            if self.fsync:
                _fsync_dir(self.data_dir)
        return snap

    def snapshot_path(self, index):
        """Where the snapshot at `index` goes: hand it to SnapshotWriter(kv,
        path, index, term, meta), which writes a temporary file beside it
        and renames it into place once fsynced.  Creates snap/ the first
        time (made durable in the data dir)."""
        return os.path.join(self._snap_dir(), snapshot_name(index))

    def incoming_snapshot_path(self):
        """A fresh temporary path in snap/ for a snapshot being received
        from the leader (created empty, so no other caller gets it; open it
        with "wb").  Its name, .snap-incoming.<random>.tmp, is one recovery
        deletes: a transfer cut short by a crash leaves nothing behind.
        Write, fsync and check it (raftfast.runtime.snapshot), then install_snapshot;
        on an abandoned transfer, unlink it."""
        fd, path = tempfile.mkstemp(dir=self._snap_dir(), prefix=".snap-incoming.", suffix=".tmp")
        os.close(fd)
        return path

    def install_snapshot(self, received_path, index, term):
        """Make the snapshot received from the leader this node's state:
        the file at received_path (complete, fsynced and checked by the
        caller; from incoming_snapshot_path, so on the same filesystem) is
        renamed into place as snapshot_path(index), snap/ is fsynced, then
        the log is reset to continue after (index, term) and synced: the
        entries the log held before are void, whatever they were.  Then
        what is no longer needed goes: every WAL segment before the reset
        and the snapshot files but the newest two (compact(index)).
        Returns compact's (deleted segments, deleted snapshots).

        A crash between the rename and the durable reset leaves the new
        snapshot with the old log: recovery keeps the log after the
        snapshot only if its entry at `index` has `term`, else drops it as
        stale (_stale_after_snapshot).

        StorageError, changing nothing, when the file's header does not say
        (index, term), cannot be read, or the data dir already holds a
        snapshot at or after `index`.  A failed rename, write or fsync
        raises OSError (LogStoreError from the log): stop the node, as for
        any failed write.

        Blocking I/O on the caller's thread: a rename, three fsyncs of
        directories or the log (four when compaction deletes something),
        the unlinks -- a few milliseconds on an SSD, tens on a slow disk.
        The runtime calls it from the event loop for now (an install is
        rare: a follower too far behind), which stalls heartbeats for that
        long; moving it to a thread needs the loop to hold appends until it
        returns."""
        received_path = os.fspath(received_path)
        try:
            meta = read_snapshot_meta(received_path)
        except SnapshotError as e:
            raise StorageError(f"cannot install the snapshot received: {e}") from None
        if (meta.index, meta.term) != (index, term):
            raise StorageError(f"{received_path}: cannot install it as the snapshot at index "
                               f"{index}, term {term}: its header says index {meta.index}, "
                               f"term {meta.term}")
        if index <= self.snap_index:
            raise StorageError(f"cannot install the snapshot at index {index}: the data dir "
                               f"already holds one at index {self.snap_index} "
                               f"({self.snapshot_file})")
        path = self.snapshot_path(index)
        os.rename(received_path, path)
        if self.fsync:
            _fsync_dir(os.path.dirname(path))
        self._log.reset_log(index, term)
        self._log.sync()
        self.snap_index, self.snap_term = index, term
        self.snapshot, self.snapshot_file = meta, path
        return self.compact(index)

    def latest_snapshot(self):
        """(path, SnapshotMeta) of the newest snapshot file, its header
        checked (read_snapshot_meta), or None when there is none.  A damaged
        newest one raises StorageError naming it: an older one is not
        silently offered in its place (to send, or to compact against)."""
        snaps = _snapshot_files(self.data_dir)
        if not snaps:
            return None
        index, path = snaps[len(snaps) - 1]
        try:
            meta = read_snapshot_meta(path)
        except SnapshotError as e:
            raise StorageError(f"damaged snapshot: {e}") from None
        if meta.index != index:
            raise StorageError(f"{path}: damaged snapshot: named for index {index}, its header "
                               f"says {meta.index}")
        return path, meta

    def compact(self, snap_index, trailing=0, keep_snapshots=DEFAULT_KEEP_SNAPSHOTS):
        """After a snapshot at snap_index is durable (SnapshotWriter.sync()
        returned): delete the WAL segments whose entries are all at or
        below snap_index - trailing (the margin keeps entries for slow
        followers, so they need not get a snapshot), and every snapshot
        file but the newest keep_snapshots (the newest, for recovery; the
        one before, which a follower may still be receiving).

        Returns (deleted segment paths, deleted snapshot paths).  StorageError
        when no snapshot on disk covers snap_index (the log is not touched).
        Blocking file I/O: run it off the event loop (the log store is
        thread-safe; it may run while the loop appends; it syncs the log
        first).  Crash-safe at every step: segments go oldest first and the
        newest snapshot stays, so a restart finds the snapshot and a
        contiguous log after it.  Segments before a durable log reset count
        at most the reset's index (docs/snapshots.md)."""
        latest = self.latest_snapshot()
        if latest is None or latest[1].index < snap_index:
            raise StorageError(f"cannot compact the log up to index {snap_index}: no snapshot "
                               f"in {os.path.join(self.data_dir, SNAP_DIR)} covers it "
                               f"(newest: {latest[0] if latest else 'none'})")
        upto = snap_index - trailing if snap_index > trailing else 0
        dropped = self._log.compact(upto) if upto > 0 else []
        removed = []
        snaps = _snapshot_files(self.data_dir)
        keep = max(1, keep_snapshots)
        for _, path in snaps[:max(0, len(snaps) - keep)]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
        if removed and self.fsync:
            _fsync_dir(os.path.join(self.data_dir, SNAP_DIR))
        return dropped, removed

    def members(self):
        """The initial voters recorded at bootstrap (an empty list for a node
        that started with --join), or None before that."""
        path = os.path.join(self.data_dir, MEMBERS_FILE)
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read().decode("utf-8"))
            voters = doc["voters"]
            joining = doc.get("join", False)
        except FileNotFoundError:
            if not self.is_new:
                raise StorageError(f"{path}: members file missing, but the data dir holds "
                                   "Raft state") from None
            return None
        except OSError as e:
            raise StorageError(f"{path}: cannot read the members file: {e.strerror}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{path}: damaged members file ({_why(e)})") from None
        if joining is True:
            # Started with --join: no voters at all, by design.
            if voters != []:
                raise StorageError(f"{path}: damaged members file (a joining node records "
                                   "no voters)")
            return []
        if (joining is not False or not isinstance(voters, list) or not voters
                or not all(type(v) is int and 0 < v < 1 << 63 for v in voters)):
            raise StorageError(f"{path}: damaged members file (voters must be a non-empty "
                               "list of node ids)")
        return sorted(voters)

    def save_members(self, voters, join=False):
        """Record the initial voters (once, at bootstrap; atomically), or with
        join=True that this node starts outside the configuration.  The log
        is made durable first, so that members on disk imply a log on disk:
        a dir with members and no log is refused as damaged."""
        if join and voters:
            raise ValueError("a joining node records no voters")
        self._log.sync()
        doc = {"voters": sorted(voters)}
        if join:
            doc["join"] = True
        _write_atomically(os.path.join(self.data_dir, MEMBERS_FILE), json.dumps(doc).encode())

    def configuration(self):
        """(voters, learners, urls): the configuration the core starts from.
        The newest snapshot's (its meta is the configuration in effect at
        its index) when the dir holds one, else the members file's; the
        core itself then takes the latest configuration entry in its log.
        StorageError when neither can be read."""
        if self.snapshot is not None:
            try:
                return decode_config(self.snapshot.meta)
            except ConfigFormatError as e:
                raise StorageError(f"{self.snapshot_file}: damaged snapshot, refusing to start: "
                                   f"its configuration is unreadable ({e})") from None
        voters = self.members()
        if voters is None:
            raise StorageError(f"{os.path.join(self.data_dir, MEMBERS_FILE)}: the data dir was "
                               "never bootstrapped (no members file)")
        return frozenset(voters), frozenset(), {}

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
