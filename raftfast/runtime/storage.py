"""A node's durable state: one data directory, locked while the node runs
(its layout: raftfast.runtime.data_dir).

Storage locks and checks the dir (raftfast.runtime.data_dir) and recovers
the node's state at open (raftfast.runtime.recovery).  It is thin on
purpose: the Raft core keeps its entries in memory (an EntryLog),
and Storage only makes the core's Ready durable:

    storage.append(first_index, block, count)   # per Ready entries batch
    storage.save_hard_state(hs)                  # when the Ready has one
    await loop.run_in_executor(None, storage.sync)  # GIL released while fsyncing

Snapshots and compaction (docs/snapshots.md): recovery loads the newest
snapshot (every byte verified) and replays the log after its index, so the
log may begin in a segment above 1.  compact(snap_index, trailing) drops
the WAL segments the snapshot covers (less a trailing margin) and the
older snapshot files.  A damaged newest snapshot is a refusal to start,
even if an older one and the log could stand in for it (see
recovery.load_newest_snapshot).
install_snapshot(path, index, term) makes a snapshot received from the
leader the node's state: renamed into place, then a log reset record (the
log restarts after it) made durable; recovery finishes an install a crash
cut short between the two (see raftfast.runtime.recovery).

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
import logging
import os
import tempfile

from raftfast._logstore import DEFAULT_SEGMENT_BYTES, LogCorruptError, LogStore, LogStoreError
from raftfast.core.messages import ConfigFormatError, HardState, config_cluster_version, decode_config
from raftfast.runtime.data_dir import (MEMBERS_FILE, META_FORMAT, SNAP_DIR, WAL_DIR, StorageError,
                                       check_dir_access, check_files, check_meta, fsync_dir,
                                       lock_data_dir, make_private_dir,
                                       read_members, read_members_cluster_version,
                                       remove_snapshot_temps, snapshot_files,
                                       snapshot_name, write_members)
from raftfast.runtime.recovery import load_newest_snapshot, recover

_log = logging.getLogger("raftfast.storage")
from raftfast.runtime.snapshot import SnapshotError, read_snapshot_meta

__all__ = ["Storage", "StorageError", "LogStoreError", "LogCorruptError", "META_FORMAT",
           "snapshot_name"]

DEFAULT_KEEP_SNAPSHOTS = 2  # the newest, and the one before (may still be being sent)


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
        """Lock, check and recover data_dir (created 0700 if missing, with
        any missing parents); StorageError if refused, among others for a
        data dir other users can write to."""
        data_dir = os.path.abspath(os.fspath(data_dir))
        try:
            make_private_dir(data_dir)
        except OSError as e:
            raise StorageError(f"cannot create data dir {data_dir}: {e}") from None
        try:
            check_dir_access(data_dir, _log.warning)
        except OSError as e:
            raise StorageError(f"cannot open data dir {data_dir}: {e}") from None
        lock_fd = lock_data_dir(data_dir)
        log = None
        snap_path, snap_index = None, 0
        try:
            check_files(data_dir)
            check_meta(data_dir, node_id, cluster_id)
            snap_path, snap, kv = load_newest_snapshot(data_dir)
            snap_index = snap.index if snap is not None else 0
            snap_term = snap.term if snap is not None else 0
            # The store checks, before it repairs anything, that the log
            # reaches back to snap_index + 1.
            log = LogStore(os.path.join(data_dir, WAL_DIR), fsync=fsync, segment_bytes=segment_bytes,
                           snap_index=snap_index)
            hs, entries, finish_install = recover(log, snap_index, snap_term, snap_path)
            if finish_install:
                # Durable before anything is appended after the snapshot.
                log.reset_log(snap_index, snap_term)
                log.sync()
            remove_snapshot_temps(data_dir, fsync)
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
            os.mkdir(snap, 0o700)
            if self.fsync:
                fsync_dir(self.data_dir)
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
        stale (raftfast.runtime.recovery).

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
            fsync_dir(os.path.dirname(path))
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
        snaps = snapshot_files(self.data_dir)
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
        snaps = snapshot_files(self.data_dir)
        keep = max(1, keep_snapshots)
        for _, path in snaps[:max(0, len(snaps) - keep)]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
        if removed and self.fsync:
            fsync_dir(os.path.join(self.data_dir, SNAP_DIR))
        return dropped, removed

    def members(self):
        """The initial voters recorded at bootstrap (an empty list for a node
        that started with --join), or None before that."""
        return read_members(self.data_dir, self.is_new)

    def save_members(self, voters, join=False, cluster_version=1):
        """Record the initial voters (once, at bootstrap; atomically), or with
        join=True that this node starts outside the configuration.  The log
        is made durable first, so that members on disk imply a log on disk:
        a dir with members and no log is refused as damaged."""
        if join and voters:
            raise ValueError("a joining node records no voters")
        self._log.sync()
        write_members(self.data_dir, voters, join, cluster_version)

    def configuration(self):
        """(voters, learners, urls, cluster version): the configuration the
        core starts from.  The newest snapshot's (its meta is the
        configuration in effect at its index) when the dir holds one, else
        the members file's; the core itself then takes the latest
        configuration entry in its log.  StorageError when neither can be
        read."""
        if self.snapshot is not None:
            meta = self.snapshot.meta
            try:
                return (*decode_config(meta), config_cluster_version(meta))
            except ConfigFormatError as e:
                raise StorageError(f"{self.snapshot_file}: damaged snapshot, refusing to start: "
                                   f"its configuration is unreadable ({e})") from None
        voters = self.members()
        if voters is None:
            raise StorageError(f"{os.path.join(self.data_dir, MEMBERS_FILE)}: the data dir was "
                               "never bootstrapped (no members file)")
        return frozenset(voters), frozenset(), {}, read_members_cluster_version(self.data_dir)

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
