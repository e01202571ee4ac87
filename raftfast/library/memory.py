"""maxmemory for a library node: what its state machine and its log in
memory use, against the node's limit and the limits its voters report.

The same rule as the server's (raftfast/server/memory.py), for a state
machine the runtime cannot look into: StateMachine.memory_used(), when
the state machine has one, says what its state costs; the log kept in
memory counts too.  On every tick the node reports its usage to the
leader on its heartbeat answers (the driver stamps them), and the leader
refuses new proposals while it, or a voter that reported within one
election timeout, is over its limit.  A library node cannot tell which
commands grow the state, so it refuses every proposal; reads go on.  A
node over its own limit snapshots at once, so the log it applied stops
counting.
"""

from raftfast.runtime.memory_reports import OOM_ERROR, a_voter_is_over

__all__ = ["MemoryLimit", "OOM_ERROR"]


class MemoryLimit:
    """driver: the node's RaftDriver; maxmemory: bytes (0: no limit)."""

    def __init__(self, driver, state_machine, maxmemory):
        self.driver = driver
        self.maxmemory = maxmemory
        self._measure = getattr(state_machine, "memory_used", None)
        self.used = 0
        self.refusing = False

    def check(self):
        driver = self.driver
        self.used = driver.core.log.entries.nbytes + (self._measure() if self._measure else 0)
        driver.memory_report = (self.used, self.maxmemory)
        over_here = bool(self.maxmemory) and self.used > self.maxmemory
        self.refusing = over_here or a_voter_is_over(driver)
        if over_here:
            driver.snapshots.compact_now()
