"""Recovery: a node's state rebuilt from its newest snapshot and the log
after it.

The newest snapshot is loaded with every byte verified; the write-ahead
log is replayed after its index into an EntryLog and a HardState.  Only a
torn last record is ever repaired (by the log store); everything else that
does not add up is a StorageError naming the file, and a crash inside
InstallSnapshot's window is finished rather than refused
(_stale_after_snapshot says why that is safe).
"""
import logging

from raftfast._entrylog import BlockError, EntryLog, block_count
from raftfast.core.messages import HardState
from raftfast.runtime.data_dir import StorageError, snapshot_files
from raftfast.runtime.snapshot import SnapshotError, load_snapshot

__all__ = ["load_newest_snapshot", "recover"]

_log = logging.getLogger("raftfast.storage")


def load_newest_snapshot(data_dir):
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
    snaps = snapshot_files(data_dir)
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


def recover(log, snap_index=0, snap_term=0, snap_path=None):
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
