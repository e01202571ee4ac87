"""Active expiry: the leader removes keys whose deadline has passed.

A read never shows an expired key (the store evaluates expiry at the
read's cluster time), but the key still takes memory until a write meets
it.  So, as Redis's active expire cycle does, the leader looks at a bounded
number of deadlines on every tick of its clock and proposes one entry
(OP_EXPIRE_DEL) naming the keys it found expired; every replica deletes
each key only if it is still expired at that entry's cluster time (a SET
or PERSIST in between keeps it), so the deletion is the same everywhere.
One such proposal is in flight at a time.
"""
import logging

from raftfast._kv import OP_EXPIRE_DEL, encode_commands
from raftfast.core import NotLeader, ProposalDropped, TransferInProgress

__all__ = ["ActiveExpiry"]

log = logging.getLogger("raftfast.expiry")

# Deadlines looked at per tick, and what one proposal may carry.
LOOK_PER_TICK = 512
MAX_KEYS = 256
MAX_BYTES = 1 << 20


class ActiveExpiry:
    def __init__(self, driver):
        self.driver = driver
        self.in_flight = False
        self.keys_proposed = 0   # INFO stats: expired_keys (proposed for deletion)

    def tick(self):
        """Once per tick of the node's clock."""
        driver = self.driver
        sm = driver.state_machine
        if self.in_flight or not driver.is_leader or not getattr(sm, "expires", 0):
            return
        keys = sm.expired_keys(driver.cluster_time(), LOOK_PER_TICK)
        if not keys:
            return
        taken, size = [], 0
        for key in keys[:MAX_KEYS]:
            size += len(key) + 4
            if taken and size > MAX_BYTES:
                break
            taken.append(key)
        try:
            driver.propose(encode_commands([(OP_EXPIRE_DEL, taken)]), 1, self._done)
        except (NotLeader, ProposalDropped, TransferInProgress):
            return   # the next leader, or the next tick, looks again
        self.in_flight = True
        self.keys_proposed += len(taken)

    def _done(self, result):
        self.in_flight = False
