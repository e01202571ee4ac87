"""What a soak run measured and found: samples over time, the growth
verdicts on memory and file descriptors, and the text and JSON reports.

A sample (every few seconds) holds, per node address ("slot": the five
addresses stay the same for the whole run, whatever node holds them), the
node's id and pid, its process's age, RSS (VmRSS), open file descriptors,
connected clients, role and commit index; and the operations the clients
had answered since the previous sample.

No growth, defined, two ways (a process lives at most one roll period,
so growth can hide both in what outlives processes and within each one):

  - across the run: the run is cut in thirds; the first third is the
    warm-up (the data set fills, caches grow to size).  Per slot, the
    median of the last third may not exceed the median of the middle third
    by more than the margin;
  - within each process: the median of the second half of its settled
    samples may not exceed the median of the first half by more than the
    margin (processes with at least PROCESS_SAMPLES settled samples).

Margins: RSS by RSS_MARGIN (a fraction) or RSS_FLOOR_KB, whichever is
more.  The floor covers the log held in memory between two snapshots
(RSS climbs by it until a snapshot compacts the log, about 10 MB at the
soak's settings: 100,000 entries) and the allocator keeping the high-water
mark of a burst, such as a leader catching a new node up with the entries
after its snapshot.  File descriptors by FD_MARGIN; they are counted less
the node's connected clients (INFO clients), which follow the leader
around and are the clients' doing, not the node's.  A process is not
measured in its first WARMUP_AGE seconds (a restarted or fresh node
recovers or receives its state, and its RSS starts over): only settled
processes count, so a restart neither hides growth nor looks like it, and
the file descriptors of a node rolled in the middle third must come back
to their level for the last third to pass (roll_verdicts checks each roll).
"""
import json
import statistics
from dataclasses import asdict, dataclass, field

WARMUP_AGE = 30.0
RSS_MARGIN = 0.10
RSS_FLOOR_KB = 12 * 1024
FD_MARGIN = 4
PROCESS_SAMPLES = 8
TEXT_ANOMALIES = 25


def value(node, metric):
    return node["rss_kb"] if metric == "rss_kb" else node["fds"] - node["clients"]


def limit_for(metric, base):
    if metric == "rss_kb":
        return base + max(base * RSS_MARGIN, RSS_FLOOR_KB)
    return base + FD_MARGIN


def measured(samples, slot, metric, lo, hi):
    """The values of `metric` for `slot` in samples lo <= t < hi, from
    processes at least WARMUP_AGE old."""
    out = []
    for s in samples:
        node = s["nodes"].get(slot)
        if node is None or not lo <= s["t"] < hi or node["age"] < WARMUP_AGE:
            continue
        out.append(value(node, metric))
    return out


def growth_verdicts(samples, duration):
    """Per slot and metric (rss_kb, fds less clients): the middle and last
    thirds' medians, the limit, and whether the last stays within it."""
    slots = sorted({slot for s in samples for slot in s["nodes"]})
    third = duration / 3
    verdicts = []
    for slot in slots:
        for metric in ("rss_kb", "fds"):
            middle = measured(samples, slot, metric, third, 2 * third)
            last = measured(samples, slot, metric, 2 * third, duration + 1)
            v = {"slot": slot, "metric": metric, "middle_samples": len(middle),
                 "last_samples": len(last)}
            if not middle or not last:
                verdicts.append(v | {"ok": False, "why": "no settled samples in a third"})
                continue
            m, l = statistics.median(middle), statistics.median(last)
            limit = limit_for(metric, m)
            verdicts.append(v | {"middle": m, "last": l, "limit": limit, "ok": l <= limit})
    return verdicts


def process_verdicts(samples):
    """Per process (pid) with at least PROCESS_SAMPLES settled samples, and
    metric: the medians of the first and second half of its settled life."""
    lives = {}
    for s in samples:
        for slot, node in s["nodes"].items():
            if node["age"] >= WARMUP_AGE:
                lives.setdefault(node["pid"], (slot, node["id"], []))[2].append(node)
    verdicts = []
    for pid, (slot, node_id, life) in sorted(lives.items()):
        if len(life) < PROCESS_SAMPLES:
            continue
        half = len(life) // 2
        for metric in ("rss_kb", "fds"):
            first = statistics.median(value(n, metric) for n in life[:half])
            second = statistics.median(value(n, metric) for n in life[half:])
            verdicts.append({"pid": pid, "slot": slot, "id": node_id, "metric": metric,
                             "samples": len(life), "first": first, "second": second,
                             "ok": second <= limit_for(metric, first)})
    return verdicts


def roll_verdicts(samples, events, duration):
    """Per rolling restart and slot: the file descriptors (less clients) of
    the settled processes between the previous action and the roll, and
    between the roll and the next action; after may not exceed before by
    more than FD_MARGIN (each rolled node's fds come back to their level)."""
    verdicts = []
    for n, e in enumerate(events):
        if e["action"] != "roll":
            continue
        before_lo = events[n - 1]["at"] + events[n - 1]["seconds"] if n else 0.0
        after_lo = e["at"] + e["seconds"]
        after_hi = events[n + 1]["at"] if n + 1 < len(events) else duration + 1
        for slot in sorted({slot for s in samples for slot in s["nodes"]}):
            before = measured(samples, slot, "fds", before_lo, e["at"])
            after = measured(samples, slot, "fds", after_lo, after_hi)
            v = {"roll_at": e["at"], "slot": slot}
            if not before or not after:
                verdicts.append(v | {"ok": False, "why": "no settled samples before or after"})
                continue
            b, a = statistics.median(before), statistics.median(after)
            verdicts.append(v | {"before": b, "after": a, "ok": a <= b + FD_MARGIN})
    return verdicts


@dataclass
class SoakReport:
    config: dict
    seconds: float = 0.0                           # clients at work
    samples: list = field(default_factory=list)
    events: list = field(default_factory=list)     # rolls and replacements, with timings
    load: dict = field(default_factory=dict)       # writes, reads, gave up, data set
    history: dict = field(default_factory=dict)    # the sampled history's check
    snapshots: dict = field(default_factory=dict)
    growth: list = field(default_factory=list)
    rolls: list = field(default_factory=list)      # fds before and after each roll
    processes: list = field(default_factory=list)  # growth within each process's life
    lost: list = field(default_factory=list)       # acknowledged writes not read back
    wrong_reads: list = field(default_factory=list)
    findings: list = field(default_factory=list)   # the history checker's anomalies
    errors: list = field(default_factory=list)     # clients, nodes' exits and logs, harness

    @property
    def clean(self):
        return not (self.lost or self.wrong_reads or self.findings or self.errors
                    or self.load.get("gave_up") or not self.growth
                    or not self.processes
                    or not all(v["ok"] for v in self.growth + self.rolls + self.processes))

    def throughput(self):
        rates = [s["ops_per_s"] for s in self.samples if s["t"] > 0]
        if not rates:
            return {}
        return {"mean": round(statistics.mean(rates)), "min": round(min(rates)),
                "max": round(max(rates))}

    def text(self):
        cfg, h, ld = self.config, self.history, self.load
        lines = [
            f"soak: {cfg['nodes']} nodes over {cfg['transport']}, {self.seconds / 60:.1f} min "
            f"of load, a roll every {cfg['roll_minutes']:g} min and a replacement between "
            f"rolls ({len(self.events)} done)",
            f"  load: {ld.get('writes', 0)} writes and {ld.get('reads', 0)} reads answered, "
            f"{ld.get('gave_up', 0)} gave up; {ld.get('keys', 0)} keys in the data set; "
            f"throughput ops/s {self.throughput()}",
            f"  acknowledged writes lost {len(self.lost)}, reads missing the last acknowledged "
            f"write {len(self.wrong_reads)}",
            f"  sampled history: {h.get('ops_recorded', 0)} ops ({h.get('ops_unknown', 0)} "
            f"unknown) over {h.get('keys', 0)} keys in {h.get('generations', 0)} generations; "
            f"{h.get('ops_checked', 0)} proved linearizable in {h.get('check_seconds', 0)} s; "
            f"anomalies {h.get('findings', 0)}",
            "  snapshots " + ", ".join(f"{k} {v}" for k, v in sorted(self.snapshots.items())),
        ]
        for e in self.events:
            if e["action"] == "roll":
                steps = ", ".join(f"{s['node']} {s['seconds']:g} s" for s in e["steps"])
                lines.append(f"  - {e['at']:.0f} s: roll in {e['seconds']:g} s ({steps})")
            else:
                lines.append(f"  - {e['at']:.0f} s: node {e['removed']} replaced by node "
                             f"{e['added']} in {e['seconds']:g} s")
        lines.append("  no growth (median of the last third vs the middle third, settled "
                     "processes only):")
        for v in self.growth:
            if "middle" not in v:
                lines.append(f"    slot {v['slot']} {v['metric']}: {v['why']}")
                continue
            unit = (lambda x: f"{x / 1024:.1f} MB") if v["metric"] == "rss_kb" else \
                (lambda x: f"{x:g}")
            lines.append(f"    slot {v['slot']} {'RSS' if v['metric'] == 'rss_kb' else 'fds'}: "
                         f"{unit(v['middle'])} -> {unit(v['last'])} (limit {unit(v['limit'])})"
                         f" {'ok' if v['ok'] else 'GROWTH'}")
        for v in self.rolls:
            lines.append(f"    roll at {v['roll_at']:.0f} s, slot {v['slot']} fds: " + (
                f"{v['before']:g} -> {v['after']:g} {'ok' if v['ok'] else 'NOT BACK'}"
                if "before" in v else v["why"]))
        grew = [v for v in self.processes if not v["ok"]]
        lines.append(f"    within each process: {len({v['pid'] for v in self.processes})} "
                     f"processes with {PROCESS_SAMPLES}+ settled samples, "
                     f"{len(grew)} growing" + "".join(
                         f"; node {v['id']} (pid {v['pid']}) {v['metric']} {v['first']:g} -> "
                         f"{v['second']:g}" for v in grew))
        lines += self.table()
        anomalies = self.errors + self.lost + self.wrong_reads + self.findings
        lines += [f"  ! {a}" for a in anomalies[:TEXT_ANOMALIES]]
        if len(anomalies) > TEXT_ANOMALIES:
            lines.append(f"  ! ... and {len(anomalies) - TEXT_ANOMALIES} more (all in the JSON)")
        lines.append(f"  {'clean' if self.clean else 'FAILED'}")
        return "\n".join(lines)

    def table(self):
        """Samples over time: every one for a short run, one a minute for a long one."""
        if not self.samples:
            return []
        slots = sorted({slot for s in self.samples for slot in s["nodes"]})
        step = 1 if self.seconds <= 600 else max(1, round(60 / self.config["sample_seconds"]))
        head = "  t(s)   ops/s   commit  " + "  ".join(f"slot{sl}: id RSS(MB)/fds" for sl in slots)
        rows = [head]
        for s in self.samples[::step]:
            cells = []
            for sl in slots:
                n = s["nodes"].get(sl)
                cells.append(f"{n['id']:>8} {n['rss_kb'] / 1024:6.1f}/{n['fds']:<3}" if n
                             else f"{'down':>19}")
            rows.append(f"  {s['t']:5.0f} {s['ops_per_s']:7.0f} {s['commit']:8}  "
                        + "  ".join(cells))
        return rows

    def write_json(self, path):
        with open(path, "w") as f:
            json.dump(asdict(self) | {"clean": self.clean, "throughput": self.throughput()},
                      f, indent=1, default=str)
