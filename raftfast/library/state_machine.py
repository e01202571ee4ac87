"""A state machine written in Python, on the runtime's block seam.

The runtime hands a state machine committed entries as whole blocks
(runtime/state_machine.py).  StateMachine is what a Python program
subclasses instead: apply() gets the commands of a block as a list of
bytes, with the index of the first and the cluster time they run at, and
returns one result each.  PythonSeam sits between the two: it cuts a block
at its ENTRY_TIME entries (every command of one apply() call runs at one
cluster time), calls apply() once per piece, and lines the results up
with the block's entries for the waiters.

Snapshots use the key-value store's snapshot file format, so the runtime
writes, checks, streams and installs them exactly as the server's: the
user's chunks are records keyed by their position, plus one record with
the cluster time the state was taken at.
"""
import os

from raftfast._entrylog import decode_entries
from raftfast._kv import KVStore
from raftfast.core.messages import ENTRY_NORMAL, ENTRY_TIME
from raftfast.runtime.cluster_time import time_of_entry
from raftfast.runtime.snapshot import SnapshotError, SnapshotLoader, write_snapshot

__all__ = ["StateMachine", "ApplyContext", "PythonSeam", "Raised"]

_TIME_KEY = b"t"
_CHUNK_KEY = b"c%016x"
# The largest record a user's chunk becomes; a larger chunk is cut (the
# file format's lengths are u32, and smaller records stream evenly).
_RECORD_BYTES = 1 << 20


class StateMachine:
    """Subclass it and give it to raftfast.Node.  raftfast calls these on
    the node's event loop, one at a time."""

    def apply(self, commands, ctx):
        """Apply committed commands (a list of bytes, in log order); return
        a list with one result each.  ctx.index is the log index of the
        first, ctx.time the cluster time (ms) they all run at.  An exception
        escaping apply() stops the node: a replica that skipped a command
        would differ from the others."""
        raise NotImplementedError

    def snapshot(self):
        """The whole state as bytes, or as an iterable of bytes chunks.  An
        iterable is consumed later, on another thread, while apply() goes
        on: it must read a copy, never the live state."""
        raise NotImplementedError

    def restore(self, chunks):
        """Replace the whole state with what snapshot() produced, given as
        an iterable of bytes chunks."""
        raise NotImplementedError

    # Optional: def memory_used(self) -> int, the bytes the state costs,
    # counted against the node's maxmemory (raftfast/library/memory.py).


class ApplyContext:
    """What apply() knows of its commands besides their bytes."""

    __slots__ = ("index", "time")

    def __init__(self, index, time):
        self.index = index  # log index of the first command
        self.time = time    # cluster time in ms, the same for every command of the call

    def __repr__(self):
        return f"ApplyContext(index={self.index}, time={self.time})"


class Raised:
    """An exception a command's apply chose to hand to its caller as the
    result (a replicated method's): raised to the caller by propose(), the
    same on every replica, and the node goes on."""

    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error


class _Writer:
    """A snapshot of a StateMachine being written; the SnapshotWriting the
    runtime drives.  The user's snapshot() runs at once (between two
    applies); everything else, consuming its chunks included, in sync(),
    which the runtime runs on a worker thread."""

    def __init__(self, path, index, term, meta, data, time_ms):
        self.path, self.index, self.term, self.meta = path, index, term, meta
        self._data = data
        self._time = time_ms
        self.count = 0
        self.bytes = 0
        self.unflushed = 0
        self._aborted = False

    def write_step(self, budget):
        return True  # nothing to do on the loop: sync() writes the file

    def flush_to_disk(self):
        pass

    def sync(self):
        data, self._data = self._data, None
        chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        records = {_TIME_KEY: self._time.to_bytes(8, "little")}
        for chunk in chunks:
            chunk = bytes(chunk)
            for at in range(0, len(chunk), _RECORD_BYTES):
                records[_CHUNK_KEY % (len(records) - 1)] = chunk[at:at + _RECORD_BYTES]
        if self._aborted:
            raise SnapshotError(f"snapshot {self.path}: aborted")
        meta = write_snapshot(KVStore.from_dict(records), self.path, self.index, self.term,
                              self.meta)
        self.count = meta.count - 1
        self.bytes = os.path.getsize(self.path)

    def merge_step(self, budget):
        return True

    def abort(self):
        self._aborted = True


class PythonSeam:
    """A StateMachine as the runtime's state machine (the block seam).

    log: the core's log, set by the node before the first apply (the index
    of a block's first entry is the log's applied index + 1 while it is
    applied)."""

    def __init__(self, user, store=None):
        self.user = user
        self.log = None
        self.time_ms = 0
        if store is not None:
            self.restore(store)

    def apply(self, block):
        self._run(block)

    def apply_replies(self, block):
        # The waiters take (replies, offsets) and hand back slices of
        # replies; a list of results per entry serves as well as bytes.
        return self._run(block), None

    def _run(self, block):
        entries = decode_entries(block)
        results = [None] * len(entries)
        first = self.log.applied + 1
        user = self.user
        commands, at = [], []
        for i, (_, etype, data) in enumerate(entries):
            if etype == ENTRY_NORMAL:
                commands.append(data)
                at.append(i)
            elif etype == ENTRY_TIME:
                if commands:
                    self._apply(user, commands, at, first, results)
                    commands, at = [], []
                self.time_ms = time_of_entry(data)
        if commands:
            self._apply(user, commands, at, first, results)
        return results

    def _apply(self, user, commands, at, first, results):
        out = user.apply(commands, ApplyContext(first + at[0], self.time_ms))
        if out is None or len(out) != len(commands):
            raise TypeError(f"{type(user).__name__}.apply returned "
                            f"{'None' if out is None else len(out)} results for "
                            f"{len(commands)} commands")
        for i, r in zip(at, out):
            results[i] = r

    def read(self, block):
        raise TypeError("a Python state machine serves reads through Node.read")

    def snapshot_writer(self, path, index, term, meta):
        return _Writer(path, index, term, meta, self.user.snapshot(), self.time_ms)

    def snapshot_loader(self, path):
        return SnapshotLoader(path)

    def restore(self, store):
        """Load the state a snapshot file held (a KVStore of its records)."""
        items = dict(store.items())
        time_ms = items.pop(_TIME_KEY, None)
        if time_ms is None:
            raise SnapshotError("not a snapshot of a Python state machine (no time record)")
        self.time_ms = int.from_bytes(time_ms, "little")
        self.user.restore(items[k] for k in sorted(items))

    def __len__(self):
        return 0
