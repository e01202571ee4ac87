"""Where a run's server cost goes: per node, per SET and per batch.

For every node over the measured window: CPU seconds (utime + stime of
/proc/<pid>/stat), voluntary and involuntary context switches (summed over
the threads in /proc/<pid>/task/*/status), the runtime's own counters from
INFO stats (Ready loop passes, wake-ups of the loop by the fsync thread,
socket reads from peers and clients, fsyncs, AppendEntries sent, entries
written) and, with a Tracer (raftfast.bench.syscalls), system calls by
kind.  Each is divided by the SETs answered and by the node's batches: a
proposal on the leader, a peer message received on a follower (at load,
almost all of them AppendEntries).
"""
import asyncio
import os

from raftfast import resp_client
from raftfast.bench import loadgen
from raftfast.bench import stats as bench_stats
from raftfast.bench.syscalls import SLOWDOWN_NOTE, Tracer, strace_path
from raftfast.stage_times import FIELD as STAGES_FIELD
from raftfast.stage_times import STAGES, parse_stages

__all__ = ["COUNTERS", "METRICS", "read_proc", "node_sample", "sample", "rows",
           "format_table", "format_syscalls", "measure_breakdown"]

# INFO stats field -> the breakdown's name for it
COUNTERS = {
    "raftfast_ready_passes": "ready_passes",
    "raftfast_fsync_wakeups": "fsync_wakeups",
    "raftfast_peer_reads": "peer_reads",
    "raftfast_peer_frames_received": "peer_frames",
    "raftfast_client_reads": "client_reads",
    "raftfast_proposals": "proposals",
    "raftfast_fsyncs": "fsyncs",
    "raftfast_appends_sent": "appends_sent",
    "raftfast_entries_written": "entries_written",
}
# (name, column heading, format), in table order
METRICS = (
    ("cpu_us", "CPU-us", ".1f"),
    ("syscalls", "syscalls", ".2f"),
    ("ctx_voluntary", "vol.cs", ".2f"),
    ("ctx_involuntary", "invol.cs", ".2f"),
    ("ready_passes", "Ready", ".2f"),
    ("fsync_wakeups", "fsync-wake", ".2f"),
    ("peer_frames", "peer-msg", ".2f"),
    ("peer_reads", "peer-rd", ".2f"),
    ("client_reads", "client-rd", ".2f"),
    ("fsyncs", "fsyncs", ".2f"),
    ("appends_sent", "appends", ".2f"),
    ("entries_written", "written", ".2f"),
)

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def read_proc(pid, root="/proc"):
    """{"cpu_s", "ctx_voluntary", "ctx_involuntary"} of a live process,
    the switches summed over its threads; None when it is gone."""
    base = os.path.join(root, str(pid))
    try:
        with open(os.path.join(base, "stat"), "rb") as f:
            data = f.read()
        tids = os.listdir(os.path.join(base, "task"))
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = data[data.rindex(b")") + 2:].split()
    out = {"cpu_s": (int(fields[11]) + int(fields[12])) / _CLK_TCK,
           "ctx_voluntary": 0, "ctx_involuntary": 0}
    for tid in tids:
        try:
            with open(os.path.join(base, "task", tid, "status")) as f:
                status = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                out["ctx_voluntary"] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                out["ctx_involuntary"] += int(line.split()[1])
    return out


def node_sample(info, proc):
    """One node's figures: the COUNTERS an INFO dict holds, and its /proc sample."""
    out = {}
    for field, name in COUNTERS.items():
        try:
            out[name] = float(info[field])
        except (KeyError, TypeError, ValueError):
            pass
    if proc is not None:
        out.update(proc)
    for stage, (ns, calls) in parse_stages(info.get(STAGES_FIELD) or "").items():
        out[f"stage_us:{stage}"] = ns / 1000
        out[f"stage_calls:{stage}"] = calls
    return out


async def sample(nodes):
    """{node id: figures} for nodes given as {node id: (client url, pid or None)}."""
    ids = list(nodes)
    infos = await asyncio.gather(*(resp_client.info(nodes[i][0], "stats", timeout=5.0)
                                   for i in ids))
    return {i: node_sample(info or {}, read_proc(nodes[i][1]) if nodes[i][1] else None)
            for i, info in zip(ids, infos)}


def rows(before, after, leader_id, sets, syscalls=None):
    """Per node, the leader first: {node, role, batches, totals, per_set,
    per_batch}.  totals holds each metric's difference over the window
    (cpu_us in µs, syscalls from {node id: {kind: calls}}); a metric a node
    does not report both times is left out; per_set/per_batch are None
    when there were no SETs or batches."""
    out = []
    for i in sorted(after, key=lambda i: (i != leader_id, i)):
        b, a = before.get(i, {}), after[i]
        totals = {k: a[k] - b[k] for k in a if k in b}
        if "cpu_s" in totals:
            totals["cpu_us"] = totals.pop("cpu_s") * 1e6
        if syscalls is not None and i in syscalls:
            totals["syscalls"] = sum(syscalls[i].values())
        leader = i == leader_id
        batches = totals.get("proposals" if leader else "peer_frames")
        out.append({"node": i, "role": "leader" if leader else "follower",
                    "batches": batches, "totals": totals,
                    "per_set": _per(totals, sets), "per_batch": _per(totals, batches)})
    return out


def _per(totals, n):
    return {k: v / n for k, v in totals.items()} if n else None


def format_table(rs, sets):
    """The table: two lines per node (per SET, per batch)."""
    head = f"{'node':<13}{'per':<7}" + "".join(f"{h:>11}" for _, h, _ in METRICS)
    lines = [f"breakdown over {sets:,} SETs; a batch is a proposal on the leader, "
             "a peer message received on a follower", head]
    for r in rs:
        who = f"{r['role']} {r['node']}"
        batches = "n/a" if r["batches"] is None else f"{r['batches']:,.0f}"
        for unit, figs in (("SET", r["per_set"]), ("batch", r["per_batch"])):
            cells = "".join(f"{_cell(figs, name, spec):>11}" for name, _, spec in METRICS)
            lines.append(f"{who:<13}{unit:<7}{cells}")
            who = f"  ({batches})" if unit == "SET" else who
    lines.append("(batches in parentheses; CPU-us: CPU microseconds; vol./invol.cs: "
                 "context switches; Ready: Ready loop passes; fsync-wake: loop wake-ups by "
                 "the fsync thread; peer-msg: peer messages received; peer-rd, client-rd: "
                 "socket reads; appends: AppendEntries "
                 "sent; written: log entries written; syscalls: with --breakdown-syscalls)")
    return lines


def _cell(figs, name, spec):
    if figs is None or name not in figs:
        return "-"
    return format(figs[name], spec)


def format_syscalls(syscalls, rs, sets, top=10):
    """System calls per SET by kind, per node (the most frequent first)."""
    lines = ["system calls per SET by kind:"]
    for r in rs:
        counts = syscalls.get(r["node"])
        who = f"  {r['role']} {r['node']}:"
        if not counts or not sets:
            lines.append(f"{who} n/a")
            continue
        kinds = sorted(counts.items(), key=lambda kv: -kv[1])
        lines.append(f"{who} " + ", ".join(f"{k} {v / sets:.2f}" for k, v in kinds[:top]))
    return lines


def format_stages(rs):
    """Per node, the µs per batch in each stage and the µs per call
    (RAFTFAST_STAGE_TIMES=1 nodes only)."""
    lines = ["time in each stage, us per batch (us per call), nested stages overlap:"]
    for r in rs:
        t, per = r["totals"], r["per_batch"] or {}
        cells = []
        for s in STAGES:
            us, calls = t.get(f"stage_us:{s}"), t.get(f"stage_calls:{s}")
            if us is None:
                continue
            each = f"{us / calls:.1f}" if calls else "-"
            cells.append(f"{s} {per.get(f'stage_us:{s}', 0):.1f} ({each})")
        lines.append(f"  {r['role']} {r['node']}: " + (", ".join(cells) or "n/a"))
    return lines


async def measure_breakdown(target, seconds, clients, pipeline, value_size, rate=None,
                            syscalls=False, stages=False, warmup=None):
    """A load run with the breakdown around it: (Result, stats before,
    stats after, lines to print).  syscalls: trace the nodes with strace
    (skipped, with a note, when strace is missing or a pid is unknown).
    stages: print the nodes' stage times (they run with RAFTFAST_STAGE_TIMES=1)."""
    if warmup is None:
        warmup = min(seconds / 4, 1.0)
    if warmup > 0:
        await loadgen.run_async(target.url, warmup, clients, pipeline, value_size, rate=rate)
    notes, tracer = [], None
    pids = {i: pid for i, (_, pid) in target.nodes.items() if pid}
    if syscalls:
        exe = strace_path()
        if exe is None:
            notes.append("system calls: skipped, strace is not installed")
        elif len(pids) < len(target.nodes):
            notes.append("system calls: skipped, the nodes' pids are unknown (--target)")
        else:
            tracer = Tracer(pids, exe)
    try:
        if tracer is not None:
            try:
                await tracer.start()
            except (RuntimeError, OSError, asyncio.TimeoutError) as e:
                notes.append(f"system calls: skipped, strace could not attach ({e or 'timeout'})")
                tracer.close()
                tracer = None
        stats0, bd0 = await bench_stats.snapshot(target.nodes), await sample(target.nodes)
        result = await loadgen.run_async(target.url, seconds, clients, pipeline, value_size,
                                         rate=rate)
        bd1, stats1 = await sample(target.nodes), await bench_stats.snapshot(target.nodes)
        counts = await tracer.stop() if tracer is not None else None
    finally:
        if tracer is not None:
            tracer.close()
    rs = rows(bd0, bd1, target.leader_id, result.ops, counts)
    lines = format_table(rs, result.ops)
    if counts is not None:
        lines += format_syscalls(counts, rs, result.ops)
        notes.append(SLOWDOWN_NOTE)
    if stages:
        lines += format_stages(rs)
        notes.append("stages timed with a wrapper around each call, which slows the nodes: "
                     "only the shares between stages mean anything")
    if not pids:
        notes.append("CPU and context switches: n/a, the nodes' pids are unknown (--target)")
    return result, stats0, stats1, lines + notes
