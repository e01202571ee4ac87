"""Several rounds of one sweep as one row per point: the median of every
figure, so that one noisy run does not decide a comparison.

The sweep runs every point once per round, the systems in the same order
each round (raftfast, then the others), so that whatever slows the machine
down for a while falls on both sides of a ratio.  Ratios are taken after
this, between the medians.
"""
import statistics

from raftfast.bench.report import FIGURES, SETTINGS

__all__ = ["point_key", "median_rows"]


def point_key(row):
    """What identifies a point across rounds: the system, its settings, the
    load and the value size."""
    return (row.get("system"),) + tuple(row.get(k) for k in SETTINGS) + tuple(
        row.get(k) for k in ("clients", "pipeline", "rate", "value_size"))


def _median(values):
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    m = statistics.median(vs)
    return round(m, 4) if isinstance(m, float) else m


def median_rows(rounds):
    """One row per point from a list of rounds (each a list of rows), in the
    order of the first round that has the point.  A figure is the median
    over the rounds that measured the point (`rounds` says how many); errors
    are summed; a point that failed in some rounds says so in its note."""
    groups = {}
    for rows in rounds:
        for r in rows:
            groups.setdefault(point_key(r), []).append(r)
    out = []
    for rs in groups.values():
        measured = [r for r in rs if r.get("throughput") is not None]
        if not measured:
            out.append(dict(rs[0], rounds=0))
            continue
        row = dict(measured[0])
        for name in FIGURES:
            row[name] = _median(r.get(name) for r in measured)
        row["rounds"] = len(measured)
        row["errors"] = _sum_errors(r.get("errors") for r in measured)
        unmeasured = [r for r in rs if r.get("throughput") is None]
        if unmeasured:
            note = f"{len(unmeasured)} of {len(rs)} rounds {unmeasured[0].get('note') or 'failed'}"
            row["note"] = "; ".join(n for n in (row.get("note"), note) if n)
        out.append(row)
    return out


def _sum_errors(texts):
    """"kind=count;..." strings summed kind by kind."""
    total = {}
    for text in texts:
        for item in filter(None, (text or "").split(";")):
            kind, _, n = item.rpartition("=")
            total[kind] = total.get(kind, 0) + int(n)
    return ";".join(f"{k}={v}" for k, v in sorted(total.items()))
