"""Latency histograms with fixed buckets, for the operator's metrics.

One observe() per event that is already per batch (an fsync, a committed
proposal): a bisect over a dozen bounds and two additions, no allocation.
Whoever exports them reads `bounds`, `counts` and `total` when asked
(raftfast.metrics); nothing here formats or aggregates.
"""
from bisect import bisect_left

__all__ = ["LatencyHistogram", "FSYNC_BUCKETS", "COMMIT_BUCKETS"]

# Seconds.  An fsync on an SSD takes 0.1-2 ms, on a disk or a busy cloud
# volume 5-50 ms, and one of seconds is a stall worth seeing.
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0, 2.5)
# A commit takes at least a round trip and an fsync on a majority; past an
# election timeout or two something is wrong.
COMMIT_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                  0.5, 1.0, 2.5, 5.0)


class LatencyHistogram:
    """counts[i]: observations <= bounds[i] and above bounds[i-1];
    counts[-1]: those above every bound.  total: their sum (seconds)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, seconds):
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
