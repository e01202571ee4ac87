"""The C key-value store (raftfast._kv.KVStore) as the node's state machine.

Every call is one call into compiled code per block.  Snapshots are the
store's copy-on-write freeze, written and loaded in the snapshot module's
file format.
"""
from raftfast._kv import KVStore, SnapshotBusy
from raftfast.core.messages import config_cluster_version
from raftfast.runtime.snapshot import VERSION as SNAPSHOT_VERSION
from raftfast.runtime.snapshot import DEFAULT_STEP_KEYS, SnapshotLoader, SnapshotWriter

__all__ = ["KVStateMachine"]


class KVStateMachine:
    """store: the state to start from (recovered from the newest snapshot),
    or None for an empty one."""

    __slots__ = ("store",)

    def __init__(self, store=None):
        self.store = store if store is not None else KVStore()

    def apply(self, block):
        self.store.apply(block, False)

    def apply_replies(self, block):
        return self.store.apply_replies(block)

    @property
    def time_ms(self):
        """The state's cluster time (its last ENTRY_TIME, or its snapshot's):
        where a restarted node takes cluster time up when its log holds none."""
        return self.store.time

    def read(self, block, now_ms=0):
        """Serve reads at cluster time max(now_ms, the store's); nothing changes."""
        return self.store.read_replies(block, now_ms)

    def reply_sizes(self, block):
        return self.store.reply_sizes(block)

    def reply_bound(self, block):
        return self.store.reply_bound(block)

    def expired_keys(self, now_ms, budget):
        return self.store.expired_keys(now_ms, budget)

    @property
    def expires(self):
        return self.store.expires

    @property
    def largest_value(self):
        return self.store.largest_value

    @property
    def memory(self):
        return self.store.memory

    def snapshot_writer(self, path, index, term, meta):
        # While a member may run raftfast 0.1.0 (cluster version 1 in the
        # configuration at `index`), write the file format it reads.
        version = 1 if config_cluster_version(meta) == 1 else SNAPSHOT_VERSION
        try:
            return SnapshotWriter(self.store, path, index, term, meta=meta, version=version)
        except SnapshotBusy:
            # The last snapshot's overlay is still merging back; help it along.
            self.store.merge_step(DEFAULT_STEP_KEYS)
            return None

    def snapshot_loader(self, path):
        return SnapshotLoader(path)

    def restore(self, store):
        self.store = store

    def __len__(self):
        return len(self.store)
