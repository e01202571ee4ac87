"""Server-side figures of a benchmark run, from the nodes' INFO before and after.

Each node reports running totals in `INFO stats` (and its raft_* fields in
`INFO raft`); a run's figures come from the differences, summed over the
nodes:

- entries per AppendEntries = entries sent / AppendEntries messages sent
- entries per fsync         = entries written to the log stores / fsyncs
- CPU s per million entries = CPU seconds of every node process / (entries
  committed / 1e6), entries committed being the leader's applied entries
  (or its commit index when the node does not report those)

A figure whose inputs a node does not report is None (printed "n/a").

With RAFTFAST_COUNT_CALLS=1 in its environment a node also reports
`raftfast_python_calls` (Python-level function calls, the `call` events of
sys.setprofile, in every thread) and `raftfast_python_calls_top` (the
functions called most, `file:function=count,...`); python_calls() turns
two snapshots into calls per committed entry for every node.
CPU time falls back to /proc/<pid>/stat when the nodes do not report it, so
that it is measured the same way for any process, PySyncObj's included.
The kernel's part of it (stime) always comes from there: server_sys_s is
the system CPU seconds of every node, None unless each one reported it.
"""
import asyncio
import os

from raftfast import resp_client

__all__ = ["STAT_FIELDS", "node_stats", "proc_cpu_seconds", "proc_cpu_times", "snapshot",
           "figures", "fmt", "CALLS_FIELD", "parse_calls_top", "python_calls",
           "format_python_calls"]

STAT_FIELDS = ("raftfast_appends_sent", "raftfast_entries_sent", "raftfast_fsyncs",
               "raftfast_entries_written", "raftfast_entries_applied",
               "raftfast_cpu_seconds", "raft_commit_index")
PROC_CPU = "proc_cpu_seconds"
PROC_SYS = "proc_sys_seconds"
CALLS_FIELD = "raftfast_python_calls"
CALLS_TOP_FIELD = "raftfast_python_calls_top"
CALLS_TOP = "python_calls_top"  # node_stats' key: {"file:function": count}

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100




def node_stats(info):
    """The STAT_FIELDS and the Python call count an INFO dict holds, as
    numbers (and the most-called functions as a dict under CALLS_TOP); the
    rest are left out."""
    out = {}
    for name in STAT_FIELDS + (CALLS_FIELD,):
        try:
            out[name] = float(info[name])
        except (KeyError, TypeError, ValueError):
            pass
    if info.get(CALLS_TOP_FIELD):
        out[CALLS_TOP] = parse_calls_top(info[CALLS_TOP_FIELD])
    return out


def parse_calls_top(text):
    """`file:function=count,...` as {"file:function": count}; bad items skipped."""
    out = {}
    for item in text.split(","):
        name, _, count = item.rpartition("=")
        try:
            out[name] = int(count)
        except ValueError:
            pass
    return out


def proc_cpu_times(pid):
    """(user, system) CPU seconds of a live process and all its threads
    (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def proc_cpu_seconds(pid):
    """User + system CPU seconds of a live process (Linux), or None."""
    times = proc_cpu_times(pid)
    return None if times is None else times[0] + times[1]


async def _info(url):
    merged = {}
    for section in ("stats", "raft"):
        merged.update(await resp_client.info(url, section, timeout=5.0) or {})
    return merged


async def snapshot(nodes):
    """{node id: stats} for nodes given as {node id: (client url, pid)}."""
    ids = list(nodes)
    infos = await asyncio.gather(*(_info(nodes[i][0]) for i in ids))
    out = {}
    for i, info in zip(ids, infos):
        st = node_stats(info)
        times = proc_cpu_times(nodes[i][1]) if nodes[i][1] else None
        if times is not None:
            st[PROC_CPU] = times[0] + times[1]
            st[PROC_SYS] = times[1]
        out[i] = st
    return out


def _delta(before, after, name):
    """{node: after - before} of one field, for the nodes that report it both times."""
    return {i: after[i][name] - before[i][name] for i in after
            if i in before and name in after[i] and name in before[i]}


def _ratio(num, den):
    return num / den if num is not None and den else None


def _total(before, after, name):
    d = _delta(before, after, name)
    return sum(d.values()) if d else None


def figures(before, after, leader_id=None):
    """The run's server-side figures from two snapshots (see the module doc)."""
    entries = None
    for name in ("raftfast_entries_applied", "raft_commit_index"):
        d = _delta(before, after, name)
        if leader_id in d:
            entries = d[leader_id]
        elif d:
            entries = max(d.values())
        if entries is not None:
            break
    cpu = _total(before, after, "raftfast_cpu_seconds")
    if cpu is None or len(_delta(before, after, "raftfast_cpu_seconds")) < len(after):
        cpu = _total(before, after, PROC_CPU)
    sys_d = _delta(before, after, PROC_SYS)
    sys_s = sum(sys_d.values()) if sys_d and len(sys_d) == len(after) else None
    appends = _total(before, after, "raftfast_appends_sent")
    fsyncs = _total(before, after, "raftfast_fsyncs")
    return {
        "entries": entries,
        "appends": appends,
        "fsyncs": fsyncs,
        "server_cpu_s": cpu,
        "server_sys_s": sys_s,
        "entries_per_append": _ratio(_total(before, after, "raftfast_entries_sent"), appends),
        "entries_per_fsync": _ratio(_total(before, after, "raftfast_entries_written"), fsyncs),
        "cpu_s_per_m_entries": _ratio(cpu, entries / 1e6 if entries else None),
    }


def python_calls(before, after, entries, leader_id=None, top=3):
    """Python-level calls per entry on every node between two snapshots:
    a list of {node, role, calls, entries, per_entry, top}, the leader first.
    `entries` is the run's denominator (entries committed, or SETs answered),
    the same for every node.  calls (and per_entry) is None for a node that
    did not report raftfast_python_calls both times; per_entry is None when
    entries is 0.  `top` lists the functions called most during the run, as
    (name, calls), from the nodes' running top lists (so only among the
    functions in the top list at the end; a function that entered it during
    the run counts from 0)."""
    rows = []
    for i in sorted(after, key=lambda i: (i != leader_id, i)):
        calls = _delta(before, after, CALLS_FIELD).get(i)
        t0 = before.get(i, {}).get(CALLS_TOP, {})
        t1 = after[i].get(CALLS_TOP, {})
        where = sorted(((k, v - t0.get(k, 0)) for k, v in t1.items()), key=lambda kv: -kv[1])
        rows.append({
            "node": i, "role": "leader" if i == leader_id else "follower",
            "calls": None if calls is None else int(calls), "entries": entries,
            "per_entry": _ratio(calls, entries),
            "top": [(k, v) for k, v in where[:top] if v > 0]})
    return rows


def format_python_calls(rows, unit="committed entry"):
    """One line per node (and one with its most-called functions)."""
    lines = [f"Python calls per {unit} (sys.setprofile call events, every thread):"]
    for r in rows:
        who = f"node {r['node']} ({r['role']})"
        if r["calls"] is None:
            lines.append(f"  {who:<20} n/a (the node does not report {CALLS_FIELD})")
            continue
        per = "n/a" if r["per_entry"] is None else f"{r['per_entry']:.6f}"
        lines.append(f"  {who:<20} {per:>10}  ({r['calls']:,} calls / "
                     f"{fmt(r['entries'], ',.0f')})")
        if r["top"]:
            lines.append("  " + " " * 21 + "most: " + ", ".join(f"{k} {v:,}"
                                                                  for k, v in r["top"]))
    return lines


def fmt(v, spec=",.1f"):
    """A figure for a table: "n/a" when missing."""
    return "n/a" if v is None else format(v, spec)
