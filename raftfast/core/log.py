"""The core's view of its log: entries in memory (an EntryLog, whose C index
holds offsets and terms), the snapshot the log begins after, and the
markers that say how far entries are committed, applied, handed to storage
and known durable.

Invariants:
    snap_index <= applied <= committed <= last_index
    persisted <= written <= last_index
Entries above `written` have not yet been handed to storage in a Ready.
"""


class LogPanic(AssertionError):
    """Raised when a message would violate an invariant that Raft promises
    can never be violated (for example truncating a committed entry)."""


class RaftLog:
    __slots__ = ("entries", "snap_index", "snap_term", "committed", "applied",
                 "written", "persisted", "_slice_key", "_slice_val")

    def __init__(self, entries, snap_index=0, snap_term=0, committed=0):
        # `entries` begins at snap_index + 1 and was recovered from storage,
        # so everything in it is already written and durable.
        if entries.first_index != snap_index + 1:
            raise ValueError(f"entry log starts at {entries.first_index}, "
                             f"snapshot ends at {snap_index}")
        self.entries = entries
        self.snap_index = snap_index
        self.snap_term = snap_term
        last = entries.last_index
        self.committed = min(max(committed, snap_index), last)
        self.applied = snap_index
        self.written = last
        self.persisted = last
        # The last slice handed out, so that followers at the same point get
        # the very same block object (and the runtime encodes it once).
        self._slice_key = None
        self._slice_val = None

    @property
    def last_index(self):
        return self.entries.last_index

    def last_term(self):
        last = self.entries.last_index
        if last == self.snap_index:
            return self.snap_term
        return self.entries.term(last)

    def term(self, index):
        """Term of the entry at index, or None when unknown (compacted away
        or beyond the end)."""
        if index == self.snap_index:
            return self.snap_term
        if index < self.snap_index or index > self.entries.last_index:
            return None
        return self.entries.term(index)

    def match_term(self, index, term):
        return self.term(index) == term

    def is_up_to_date(self, last_index, last_term):
        """Would a candidate with this last entry be allowed our vote?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index)

    def append_proposal(self, block, term):
        first, last = self.entries.append_stamped(block, term)
        return first, last

    def maybe_append(self, prev_index, prev_term, commit, block, count):
        """Follower side of AppendEntries.  Returns the last index the
        leader's entries reach, or None when the consistency check fails."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + count
        if count:
            conflict, offset = self.entries.find_conflict(prev_index + 1, block)
            if conflict:
                if conflict <= self.committed:
                    raise LogPanic(f"entry {conflict} conflicts with committed "
                                   f"entry (committed={self.committed})")
                self._slice_key = None
                self.entries.append(conflict, memoryview(block)[offset:])
                if conflict <= self.written:
                    self.written = conflict - 1
                if conflict <= self.persisted:
                    self.persisted = conflict - 1
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index):
        if index > self.committed:
            if index > self.last_index:
                raise LogPanic(f"commit {index} beyond last index {self.last_index}")
            self.committed = index

    def conflict_hint(self, index, term):
        """The largest index <= index whose term <= term (etcd's
        findConflictByTerm): where a probe should try next."""
        if index > self.last_index:
            index = self.last_index
        if index <= self.snap_index:
            return index
        hint = self.entries.term_search(index, term)
        return max(hint, self.snap_index)

    def unwritten(self, max_bytes=0):
        """(first_index, block, count) of entries not yet handed to storage."""
        lo, hi = self.written + 1, self.last_index + 1
        if lo >= hi:
            return None
        block, count = self.entries.slice(lo, hi, max_bytes)
        return lo, block, count

    def unapplied(self, max_bytes=0):
        """(first_index, block, count) of committed entries not yet applied
        and already handed to storage."""
        hi = min(self.committed, self.written) + 1
        lo = self.applied + 1
        if lo >= hi:
            return None
        block, count = self.entries.slice(lo, hi, max_bytes)
        return lo, block, count

    def compact(self, index):
        """Drop the entries through `index` from memory: a snapshot of the
        state machine now covers them.  Only applied entries may go (the
        snapshot was taken from the applied state), and only entries
        already durable (storage must still be able to replay the rest).
        Compacting at or below the current snapshot changes nothing."""
        if index <= self.snap_index:
            return
        if index > self.applied:
            raise LogPanic(f"compacting through {index}, but only {self.applied} is applied")
        if index > self.persisted:
            raise LogPanic(f"compacting through {index}, but only {self.persisted} is durable")
        self.snap_term = self.entries.term(index)
        self.entries.compact(index)
        self.snap_index = index
        self._slice_key = None  # slices may have pointed into dropped entries

    def restore(self, index, term):
        """Start over after a snapshot at (index, term) received from the
        leader: whatever this log held is either covered by it or stale, so
        it empties and begins at index + 1.  The runtime makes the snapshot
        durable (and the stored log restart there) before anything this
        node says next, so it counts as written and durable."""
        if index <= self.committed:
            raise LogPanic(f"restoring a snapshot at {index}, but {self.committed} is committed")
        self.entries = type(self.entries)(index + 1)
        self.snap_index = index
        self.snap_term = term
        self.committed = self.applied = self.written = self.persisted = index
        self._slice_key = None

    def slice(self, lo, hi, max_bytes=0):
        # Entries at or below last_index never change without a truncation,
        # and a truncation resets the cache; so (lo, hi, max_bytes) names
        # the same bytes until then.
        key = (lo, hi, max_bytes)
        if key == self._slice_key:
            return self._slice_val
        val = self.entries.slice(lo, hi, max_bytes)
        self._slice_key, self._slice_val = key, val
        return val
