"""Cluster time: one clock the whole cluster agrees on, in log order.

Every batch of entries carries a time T in milliseconds, written into the
log as an ENTRY_TIME entry ahead of the batch; the entries after it, up to
the next one, run at that T.  The leader picks

    T = max(its own wall clock, every T this node has seen)

where "seen" covers the entries it wrote, every read it confirmed, and
what its peers told it: a leader stamps its current T on AppendEntries and
heartbeats, and every node stamps the highest T it has seen on its vote
answers.  So T never decreases in log order, also across leader changes: a
read's T reached a majority with the heartbeat round that confirmed it, any
new leader's vote majority shares a member with that majority, and the new
leader starts at or above the highest T its voters report.

State machines see T only through the log (deterministic on every
replica); the runtime knows it as this object's `seen`.
"""
import struct
import time

from raftfast.core.messages import ENTRY_TIME

__all__ = ["ClusterClock", "recovered_time", "time_entry", "time_of_entry", "wall_ms"]

# An ENTRY_TIME entry: u32 data length 8, u64 term (0: the core stamps it),
# u8 type, then T.
_TIME_HEADER = struct.pack("<IQB", 8, 0, ENTRY_TIME)
_U64 = struct.Struct("<Q")


def wall_ms():
    """The machine's wall clock in whole milliseconds."""
    return time.time_ns() // 1_000_000


def time_entry(t):
    """A one-entry block (term 0) saying: from here on, cluster time is t."""
    return _TIME_HEADER + _U64.pack(t)


def time_of_entry(data):
    """T from an ENTRY_TIME entry's data."""
    return _U64.unpack(data)[0]


class ClusterClock:
    """One node's view of cluster time.  wall(): milliseconds (a skewed
    clock only moves T ahead, never back).  `seen` only grows."""

    __slots__ = ("wall", "seen", "stamped", "enabled")

    def __init__(self, wall=wall_ms, seen=0):
        self.wall = wall
        self.seen = seen
        self.stamped = 0  # the last T this node wrote as leader; 0 after every election
        # ENTRY_TIME may be written: the cluster version is 2 or more
        # (runtime/cluster_version.py); before, members may not read it.
        self.enabled = True

    def heard(self, t):
        """A peer reported T (on an append, a heartbeat, a vote answer)."""
        if t > self.seen:
            self.seen = t

    def advance(self):
        """The leader's T now: what its next entry or read runs at."""
        t = self.wall()
        if t < self.seen:
            t = self.seen
        self.seen = t
        return t

    def stamp_due(self):
        """The leader is about to propose: T to write ahead of the batch, or
        0 when the entries before it already carry this T (the same ms)
        or when the cluster does not read ENTRY_TIME yet."""
        t = self.advance()
        if t == self.stamped or not self.enabled:
            return 0
        self.stamped = t
        return t

    def new_term(self):
        """Leadership changed hands: the next batch is stamped in any case."""
        self.stamped = 0


def recovered_time(entry_log, state_machine, window=4096):
    """The highest cluster time this node's state shows at start: the last
    ENTRY_TIME in its log (searched from the end), else its state
    machine's (the snapshot's) time.  A node restarted as leader starts
    at or above it, so T stays monotone in its own log."""
    hi = entry_log.last_index + 1
    first = entry_log.first_index
    while hi > first:
        lo = max(first, hi - window)
        found = entry_log.find_type(lo, hi, ENTRY_TIME)
        if found:
            return time_of_entry(found[-1][1])
        hi = lo
    return getattr(state_machine, "time_ms", 0)
