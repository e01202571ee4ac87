"""The seam between the runtime and what it replicates.

The runtime hands the state machine committed entries as whole blocks (one
call per block, never per entry), asks it to serve confirmed reads, and
has it write and load snapshots.  It never looks inside: the C key-value
store (kv_state_machine.KVStateMachine) is one implementation, and any
object with these methods is another.

A block is the entry log's format: entries of a 13-byte header (type,
length, term) and their data; a state machine skips the entries that are
not commands (no-op, configuration) but still gives them a reply slot.
"""
from typing import Optional, Protocol, Tuple

__all__ = ["StateMachine", "SnapshotWriting", "SnapshotLoading"]


class SnapshotWriting(Protocol):
    """One snapshot being written to a file, driven step by step from the
    event loop; the runtime runs flush_to_disk() and sync() in a worker
    thread, never at the same time as a step."""

    index: int   # the last entry the snapshot covers, and its term
    term: int
    count: int   # how many items it holds (for the log)
    bytes: int   # how many bytes are written so far

    def write_step(self, budget: int) -> bool:
        """Write up to `budget` items; True once everything is written (the
        state machine is then free to change again)."""

    @property
    def unflushed(self) -> int:
        """Bytes written since the last flush_to_disk()."""

    def flush_to_disk(self) -> None:
        """Make what was written so far durable (blocking)."""

    def sync(self) -> None:
        """Make the whole file durable under its final name (blocking)."""

    def merge_step(self, budget: int) -> bool:
        """Settle up to `budget` items changed while the snapshot was
        written; True once nothing is left."""

    def abort(self) -> None:
        """Give up: release the state machine, remove the partial file."""


class SnapshotLoading(Protocol):
    """A snapshot file being verified and loaded, a step at a time."""

    meta: object   # the snapshot's metadata: .index, .term, .count, .meta (configuration)
    store: object  # the loaded state, once step() returned True

    def step(self, max_chunks: int) -> bool:
        """Load up to max_chunks chunks; True once the whole file checked
        out.  Raises the snapshot module's SnapshotError on damage."""

    def close(self) -> None:
        """Give up (harmless after the end)."""


class StateMachine(Protocol):
    """What the runtime needs of the replicated state.

    apply() and apply_replies() are two methods rather than one with a
    flag: each maps onto one compiled call, with no branch in between,
    and they run once per committed block."""

    def apply(self, block) -> None:
        """Apply a block of committed entries; nobody waits for replies (a
        follower, or a leader whose clients are gone)."""

    def apply_replies(self, block) -> Tuple[bytes, memoryview]:
        """Apply a block of committed entries and return their replies,
        encoded for the client, as (replies, offsets): entry i's reply is
        replies[offsets[i]:offsets[i + 1]] (len(offsets) == count + 1)."""

    def read(self, block) -> Tuple[bytes, memoryview]:
        """Serve a block of read commands from the state as it stands, in
        apply_replies()'s format; changes nothing."""

    def snapshot_writer(self, path: str, index: int, term: int,
                        meta: bytes) -> Optional[SnapshotWriting]:
        """Start writing the state as of now (the log's `index` and `term`)
        to `path`, with `meta` (the configuration) in its header.  None
        when it cannot start yet (the last snapshot is still settling; the
        call did some of that work): the runtime asks again later."""

    def snapshot_loader(self, path: str) -> SnapshotLoading:
        """Open a received snapshot file for loading."""

    def restore(self, store) -> None:
        """Replace the whole state with a loader's `store`."""

    def __len__(self) -> int:
        """How many items the state holds."""
