"""How much of the log in memory a snapshot would let go, and how far to
compact so that what stays fits --snapshot-log-bytes: the byte side of the
snapshot policy (the count side is --snapshot-entries and
--snapshot-trailing), on a RaftLog whose EntryLog counts block bytes."""

__all__ = ["applied_bytes", "log_too_large", "trim_trailing"]


def applied_bytes(log):
    """Bytes of the entries in memory that are applied: what the next
    snapshot would cover."""
    entries = log.entries
    if log.applied < entries.first_index:
        return 0
    return entries.nbytes - entries.nbytes_from(log.applied + 1)


def log_too_large(log, limit):
    """Is the log in memory past `limit` bytes, with at least half of that
    applied?  A log held up by entries not applied yet is not helped by
    another snapshot."""
    return log.entries.nbytes >= limit and applied_bytes(log) >= limit // 2


def trim_trailing(entries, upto, most, keep):
    """The index to compact through: past `upto` (at most to `most`) as far
    as needed for the entries left after it to hold at most `keep` bytes.
    The trailing entries count toward the limit too, and large entries make
    a few of them enough to pass it."""
    if upto >= most or entries.nbytes_from(max(upto + 1, entries.first_index)) <= keep:
        return upto
    lo, hi = upto + 1, most  # the least index whose log after it fits `keep`
    while lo < hi:
        mid = (lo + hi) // 2
        if entries.nbytes_from(mid + 1) <= keep:
            hi = mid
        else:
            lo = mid + 1
    return lo
