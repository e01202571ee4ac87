"""A log-linear latency histogram for the load generator and the benchmarks."""
import math
from fractions import Fraction

__all__ = ["Histogram", "PERCENTILES"]


class Histogram:
    """Counts of non-negative integers in log-linear buckets.

    Values below 2**SUB_BITS are counted exactly; above, each power of two
    is split into 2**SUB_BITS buckets, so a bucket is at most 1/128 of the
    values in it wide.  A percentile is reported as its bucket's midpoint:
    within 1/256 (0.4%) of the exact value.  Min, max and mean are exact.
    """

    SUB_BITS = 7
    SUB = 1 << SUB_BITS

    __slots__ = ("counts", "total", "sum", "min", "max")

    def __init__(self):
        self.counts = [0] * (2 * self.SUB)
        self.total = 0
        self.sum = 0
        self.min = None
        self.max = 0

    @classmethod
    def bucket_of(cls, v):
        if v < cls.SUB:
            return v
        shift = v.bit_length() - cls.SUB_BITS - 1
        return ((shift + 1) << cls.SUB_BITS) + (v >> shift) - cls.SUB

    @classmethod
    def bucket_range(cls, i):
        """[lo, hi) of the values counted in bucket i."""
        if i < cls.SUB:
            return i, i + 1
        shift = (i >> cls.SUB_BITS) - 1
        m = (i & (cls.SUB - 1)) + cls.SUB
        return m << shift, (m + 1) << shift

    def record(self, v, n=1):
        """Count the value v, n times (one call for a whole pipelined batch
        sent at the same instant and answered in the same read)."""
        v = int(v)
        if v < 0:
            raise ValueError(f"histogram values are >= 0, got {v}")
        if n < 1:
            return
        i = self.bucket_of(v)
        counts = self.counts
        if i >= len(counts):
            counts.extend([0] * (i + 1 - len(counts)))
        counts[i] += n
        self.total += n
        self.sum += v * n
        if self.min is None or v < self.min:
            self.min = v
        if v > self.max:
            self.max = v

    def merge(self, other):
        if len(other.counts) > len(self.counts):
            self.counts.extend([0] * (len(other.counts) - len(self.counts)))
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.total += other.total
        self.sum += other.sum
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        self.max = max(self.max, other.max)

    @property
    def mean(self):
        return self.sum / self.total if self.total else 0.0

    def percentile(self, p):
        """The nearest-rank p-th percentile (0 < p <= 100), 0 when empty."""
        if not self.total:
            return 0
        if p >= 100:
            return self.max
        # Fraction(str(p)): 99.9 must mean 999/1000, not the float just above it.
        rank = max(1, math.ceil(Fraction(str(p)) * self.total / 100))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                lo, hi = self.bucket_range(i)
                mid = (lo + hi - 1) / 2
                # The exact min and max bound every percentile.
                return min(max(mid, self.min), self.max)
        return self.max

    def summary_ms(self):
        """p50, p90, p99, p99.9 and max of microsecond values, in milliseconds."""
        out = {name: self.percentile(p) / 1000.0 for name, p in PERCENTILES}
        out["max"] = self.max / 1000.0
        return out


# (name, percentile) of every figure the benchmarks report.
PERCENTILES = (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
