"""Helpers shared by the bench/ suites (bench/conftest.py puts this
directory on sys.path).  Not a test module: pytest does not collect it."""
import os

VALUE_SIZE = 64   # bytes: every entry's data and every SET value in these suites
MB = 1e6          # MB/s means 10**6 bytes per second

rows = []  # (test id, rates) for the summary conftest prints at the end
_SINGULAR = {"entries": "entry", "commands": "command", "replies": "reply"}


def mean_seconds(benchmark):
    """The measured mean time of one call, or None when benchmarking is
    disabled (--benchmark-disable runs each test once, untimed)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    return stats.stats.mean


def report(benchmark, *, items=None, unit="entries", nbytes=None, **info):
    """Record throughput derived from the measured mean in
    benchmark.extra_info, so --benchmark-json and --benchmark-autosave carry
    it: `items` things of kind `unit` and `nbytes` bytes handled per call
    give `<unit>_per_s`, `ns_per_<one unit>` and `MB_per_s` from the mean
    (and `<unit>_per_s_at_median`).  Other keyword
    arguments are stored as they are (implementation, sizes, fsync mode...).
    Call it after benchmark(...) / benchmark.pedantic(...)."""
    extra = benchmark.extra_info
    extra.update(info)
    if items is not None:
        extra[unit] = items
    if nbytes is not None:
        extra["bytes"] = nbytes
    mean = mean_seconds(benchmark)
    if not mean:
        return
    median = benchmark.stats.stats.median
    rates = []
    if items is not None:
        extra[f"{unit}_per_s"] = round(items / mean, 1)
        # On a shared machine the median is less swayed by other jobs.
        extra[f"{unit}_per_s_at_median"] = round(items / median, 1)
        extra["ns_per_" + _SINGULAR.get(unit, unit)] = round(mean * 1e9 / items, 1)
        rates.append(f"{items / mean:>14,.0f} {unit}/s")
    if nbytes is not None:
        extra["MB_per_s"] = round(nbytes / mean / MB, 2)
        rates.append(f"{nbytes / mean / MB:>10,.1f} MB/s")
    rows.append((benchmark.fullname.split("::")[-1], "  ".join(rates)))


def planned_rounds(benchmark, one_call_seconds):
    """Rounds for benchmark.pedantic() that follow --benchmark-max-time and
    --benchmark-min-rounds the way benchmark(...) itself does, given an
    estimate of one call's duration.  (Reads the fixture's private
    _max_time/_min_rounds, which also reflect @pytest.mark.benchmark.)"""
    max_time = float(getattr(benchmark, "_max_time", 1.0))
    min_rounds = int(getattr(benchmark, "_min_rounds", 5))
    return max(min_rounds, int(max_time / max(one_call_seconds, 1e-9)) + 1)


def filesystem_of(path):
    """(mount point, filesystem type) holding path, from /proc/self/mounts,
    for the record: fsync on tmpfs costs nothing."""
    path = os.path.realpath(path)
    best = ("", "?")
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[0]):
                    best = (mnt, parts[2])
    except OSError:
        pass
    return best
