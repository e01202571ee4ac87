"""Chaos runs against real node processes.

A schedule is one cluster (3 or 5 nodes, fsync always, short timeouts)
whose every directed peer link goes through a FaultProxy, a few redis-py
clients recording register and append operations, and a seeded nemesis
partitioning, blackholing, delaying, killing and pausing nodes.  At the end
everything is healed, the final value of every key is read, and the
history is checked:

  - linearizability of every key's history (tests/support/linearizability.py);
  - no acknowledged write lost: every acknowledged APPEND token is in the
    final value, and no register's final value comes from a write that had
    completed before an acknowledged write began;
  - no APPEND applied twice, and nothing in a value that no client wrote;
  - the replicas agree: once applied up to the same index, every node holds
    the same number of keys.

`run_chaos` runs schedules back to back for a given time and sums them up
into one report (see `Report`).  tests/chaos/test_chaos.py drives both the short
run of the default suite and the long one behind the `chaos` marker.
"""
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from tests.support.chaos_nemesis import Nemesis
from tests.support.chaos_workload import Keyspace, WorkloadClient, final_reads, is_append_key
from tests.support.faultproxy import FaultProxy
from tests.support.harness import Cluster, free_ports
from tests.support.linearizability import append_anomalies, check_history
from tests.support.node_info import info_stats

SEPARATOR = ";"
TEXT_ANOMALIES = 25  # anomalies listed in the printed report; the JSON has them all


class ProxiedCluster(Cluster):
    """A harness Cluster whose node i dials node j through the proxy's link
    i->j, so every direction of every node pair can fail on its own."""

    def __init__(self, root, n=3, transport="unix", **kw):
        super().__init__(root, n=n, transport=transport, **kw)
        self.proxy = FaultProxy(socket_dir=root)
        self._dial = {}
        self.links = [(i, j) for i in self.ids for j in self.ids if i != j]
        # Every port from one probe, so the proxy's listeners cannot land on
        # a port the nodes were given (separate probes may hand one out twice).
        ports = free_ports(2 * n + len(self.links))
        self.client_ports = dict(zip(self.ids, ports[:n]))
        self.peer_ports = dict(zip(self.ids, ports[n:2 * n]))
        self.link_ports = dict(zip(self.links, ports[2 * n:]))

    def dial_url(self, src, dst):
        return self._dial[src, dst]

    def start(self):
        if not self._dial:
            self.proxy.start()
            for src, dst in self.links:
                port = self.link_ports[src, dst] if self.transport != "unix" else 0
                self._dial[src, dst] = self.proxy.add_link(src, dst, self.peer_url(dst), port)
        return super().start()

    def stop(self):
        """Stop every node (a paused one is continued first, or SIGTERM
        would wait for it), then the proxy."""
        for node in self.nodes.values():
            if node.alive():
                node.proc.send_signal(signal.SIGCONT)
        try:
            return super().stop()
        finally:
            self.proxy.stop()


@dataclass
class ScheduleConfig:
    nodes: int = 3
    transport: str = "unix"
    seconds: float = 25.0
    seed: int = 0
    clients: int = 4
    registers: int = 4          # register keys per generation
    appends: int = 4            # append keys per generation
    key_lifetime: float = 3.0   # seconds before the clients move to fresh keys
    socket_timeout: float = 2.5
    heartbeat_ms: int = 50
    election_ms: int = 500
    read_mode: str = "readindex"  # the nodes' --read-mode
    # Small, so that snapshots, compaction and InstallSnapshot to nodes that
    # were killed, paused or cut off all happen under the faults.
    snapshot_entries: int = 500
    snapshot_trailing: int = 100


@dataclass
class ScheduleResult:
    config: dict
    faults: dict                # injected, by kind
    overlaps: int = 0           # nemesis rounds whose network and process faults overlapped
    ops_recorded: int = 0
    ops_ok: int = 0
    ops_unknown: int = 0
    ops_checked: int = 0
    keys: int = 0
    violations: list = field(default_factory=list)     # "key: the checker's explanation"
    inconclusive: list = field(default_factory=list)   # keys the checker's budget could not settle
    lost: list = field(default_factory=list)           # acknowledged writes not in the final state
    duplicated: list = field(default_factory=list)     # APPEND tokens applied more than once
    unexpected: list = field(default_factory=list)     # tokens no client appended
    unknown_applied: int = 0    # unknown APPENDs that did take effect (allowed)
    replicas_agree: bool = True
    snapshots: dict = field(default_factory=dict)      # INFO stats summed over the nodes
    seconds: float = 0.0        # the whole schedule, start to stop
    check_seconds: float = 0.0  # time the checks took (the checker is pure Python)
    errors: list = field(default_factory=list)         # client, nemesis or harness failures
    outcomes: dict = field(default_factory=dict)       # per attempt: done, unknown, redirected...
    fault_log: list = field(default_factory=list)

    @property
    def clean(self):
        return not (self.violations or self.inconclusive or self.lost or self.duplicated
                    or self.unexpected or self.errors or not self.replicas_agree)


def lost_register_writes(final, ops):
    """Acknowledged SETs the final value contradicts outright: the final
    value is missing, or came from a write that completed before the
    acknowledged one was even sent (so it cannot have overwritten it)."""
    writes = [o for o in ops if o.kind == "set"]
    source = next((o for o in writes if o.arg == final), None)
    lost = []
    for w in writes:
        if w.ret is None or w is source:
            continue
        if source is None or (source.ret is not None and source.ret < w.call):
            lost.append(f"{w.key}={w.arg} (final {final!r})")
    return lost


def check(result, ops, finals):
    """Fill `result` with the verdicts on one schedule's history."""
    by_key = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    result.keys = len(by_key)
    for key in sorted(by_key):
        verdict = check_history(by_key[key])
        if verdict.explanation.startswith("inconclusive"):
            result.inconclusive.append(key)
        elif not verdict.ok:
            result.violations.append(f"{key}: {verdict.explanation}")
        else:
            result.ops_checked += verdict.ops_checked
        final = finals[key]
        if is_append_key(key):
            found = append_anomalies(final, by_key[key], sep=SEPARATOR)
            result.lost += [f"{key}: {t}" for t in found["lost"]]
            result.duplicated += [f"{key}: {t}" for t in found["duplicated"]]
            result.unexpected += [f"{key}: {t}" for t in found["unexpected"]]
            result.unknown_applied += found["unknown_applied"]
        else:
            result.lost += lost_register_writes(final, by_key[key])


def replicas_agree(cluster, timeout=30):
    """Once every node has applied what the leader committed, they hold the
    same keys (a count from INFO keyspace; followers cannot be read)."""
    leader = cluster.wait_leader(timeout=timeout)
    commit = int(cluster.nodes[leader].info()["raft_commit_index"])
    cluster.wait_applied(commit, timeout=timeout)
    return len({node.keys() for node in cluster.nodes.values()}) == 1


SNAPSHOT_COUNTERS = ("raftfast_snapshots_taken", "raftfast_snapshots_sent",
                     "raftfast_snapshots_installed")


def snapshot_counts(cluster):
    """Snapshots taken, sent and installed, summed over the nodes (INFO
    stats, which count since each node's last start; a node killed late
    in the schedule may have taken its snapshots before, so those taken are
    counted from the nodes' logs, which span every start)."""
    counts = Counter()
    for node in cluster.nodes.values():
        stats = info_stats(node)
        for name in SNAPSHOT_COUNTERS:
            if name in stats:
                counts[name.replace("raftfast_", "")] += int(stats[name])
    taken = 0
    for node in cluster.nodes.values():
        try:
            with open(node.log_path, errors="replace") as f:
                taken += sum(1 for line in f if "snapshot at index" in line and " taken " in line)
        except OSError:
            pass
    counts["snapshots_taken"] = max(counts["snapshots_taken"], taken)
    return dict(counts)


def node_log_errors(cluster, limit=10):
    """ERROR and CRITICAL lines and tracebacks from the nodes' logs: a node
    that hit one under faults it is built to survive has a bug, even when
    the clients saw nothing wrong."""
    found = []
    for node in cluster.nodes.values():
        try:
            with open(node.log_path, errors="replace") as f:
                found += [f"node {node.id} log: {line.rstrip()}" for line in f
                          if " ERROR " in line or " CRITICAL " in line
                          or line.startswith("Traceback")]
        except OSError:
            pass
    return found[:limit]


def run_schedule(cfg, root=None):
    """One schedule, start to finish; never leaves a process behind."""
    root = root or tempfile.mkdtemp(prefix="rfc")  # short: unix socket paths are limited
    cluster = ProxiedCluster(root, n=cfg.nodes, transport=cfg.transport,
                             heartbeat_ms=cfg.heartbeat_ms, election_ms=cfg.election_ms,
                             extra_args=("--read-mode", cfg.read_mode,
                                         "--snapshot-entries", str(cfg.snapshot_entries),
                                         "--snapshot-trailing", str(cfg.snapshot_trailing)))
    result = ScheduleResult(config=asdict(cfg), faults={})
    started = time.monotonic()
    stop = threading.Event()
    clients, nemesis, ops = [], None, []
    try:
        cluster.start()
        cluster.wait_leader()
        keyspace = Keyspace(cfg.registers, cfg.appends, cfg.key_lifetime)
        clients = [WorkloadClient(c, cluster.client_ports, keyspace, f"{cfg.seed}-{c}", stop,
                                  cfg.socket_timeout) for c in range(1, cfg.clients + 1)]
        nemesis = Nemesis(cluster, cfg.seed, stop)
        for t in (*clients, nemesis):
            t.start()
        stop.wait(cfg.seconds)  # the schedule's length: clients and faults at work
        stop.set()
        for t in (*clients, nemesis):
            t.join(30)
            if t.is_alive():
                result.errors.append(f"{t.name} did not stop within 30 s")
        nemesis.heal_everything()
        cluster.wait_leader(timeout=60)
        last_reads = final_reads(cluster.client_ports, keyspace.used())
        finals = {op.key: op.result for op in last_reads}
        ops = [op for c in clients for op in c.ops] + last_reads
        result.ops_recorded = sum(len(c.ops) for c in clients)
        result.ops_unknown = sum(1 for c in clients for op in c.ops if op.ret is None)
        result.ops_ok = result.ops_recorded - result.ops_unknown
        checking = time.monotonic()
        check(result, ops, finals)
        result.check_seconds = round(time.monotonic() - checking, 2)
        result.replicas_agree = replicas_agree(cluster)
        result.snapshots = snapshot_counts(cluster)
    except Exception as e:  # noqa: BLE001 - a harness failure is a failed schedule, reported
        result.errors.append(f"{type(e).__name__}: {e}")
    finally:
        stop.set()
        for c in clients:
            result.errors += c.errors
            result.outcomes = dict(Counter(result.outcomes) + c.outcomes)
        if nemesis is not None:
            result.faults = dict(nemesis.counts)
            result.overlaps = nemesis.overlaps
            result.fault_log = nemesis.log
            result.errors += nemesis.errors
        exit_codes = cluster.stop()
        result.errors += [f"node {i} exited with {code} on SIGTERM (a clean stop is 0)"
                          for i, code in sorted(exit_codes.items()) if code != 0]
        result.errors += node_log_errors(cluster)
        result.seconds = round(time.monotonic() - started, 1)
        if result.clean:
            shutil.rmtree(root, ignore_errors=True)
        else:
            # Everything needed to look again: the history (rerun the checker
            # on it with check_history([Op(**o) for o in doc["ops"]])), the
            # faults, the nodes' logs and data.
            with open(os.path.join(root, "history.json"), "w") as f:
                json.dump({"ops": [asdict(op) for op in ops], "fault_log": result.fault_log,
                           "config": result.config}, f)
            result.errors.append(f"history, node logs and data kept in {root}")
    return result


@dataclass
class Report:
    """What a chaos run did and found, summed over its schedules."""
    schedules: int = 0
    chaos_seconds: float = 0.0                        # under faults, with clients at work
    seconds: float = 0.0                              # wall time, start-up and checks included
    faults: dict = field(default_factory=dict)        # injected, by kind
    overlapping: int = 0                              # network and process faults at once
    ops_recorded: int = 0
    ops_ok: int = 0
    ops_unknown: int = 0
    ops_checked: int = 0                              # proved linearizable, final reads included
    keys_checked: int = 0
    violations: int = 0                               # keys whose history is not linearizable
    inconclusive: int = 0                             # keys the checker's budget did not settle
    lost: int = 0                                     # acknowledged writes lost
    duplicated: int = 0                               # APPENDs applied twice
    unexpected: int = 0
    unknown_applied: int = 0
    replica_disagreements: int = 0
    snapshots: dict = field(default_factory=dict)     # taken, sent, installed
    errors: list = field(default_factory=list)
    findings: list = field(default_factory=list)      # every anomaly, with its schedule
    runs: list = field(default_factory=list)          # a line per schedule

    def add(self, r):
        cfg = r.config
        self.schedules += 1
        self.chaos_seconds += cfg["seconds"]
        self.seconds += r.seconds
        self.faults = dict(Counter(self.faults) + Counter(r.faults))
        self.overlapping += r.overlaps
        self.ops_recorded += r.ops_recorded
        self.ops_ok += r.ops_ok
        self.ops_unknown += r.ops_unknown
        self.ops_checked += r.ops_checked
        self.keys_checked += r.keys
        self.violations += len(r.violations)
        self.inconclusive += len(r.inconclusive)
        self.lost += len(r.lost)
        self.duplicated += len(r.duplicated)
        self.unexpected += len(r.unexpected)
        self.unknown_applied += r.unknown_applied
        self.replica_disagreements += not r.replicas_agree
        self.snapshots = dict(Counter(self.snapshots) + Counter(r.snapshots))
        where = (f"{cfg['nodes']} nodes/{cfg['transport']}/{cfg.get('read_mode', 'readindex')} "
                 f"seed {cfg['seed']}")
        self.errors += [f"{where}: {e}" for e in r.errors]
        for label, items in (("violation", r.violations), ("inconclusive", r.inconclusive),
                             ("lost", r.lost),
                             ("duplicated", r.duplicated), ("unexpected", r.unexpected)):
            self.findings += [f"{where}: {label}: {item}" for item in items]
        if not r.clean:
            self.findings += [f"{where}: fault log: {r.fault_log}"]
        self.runs.append(f"{where}: {sum(r.faults.values())} faults, {r.ops_recorded} ops "
                         f"({r.ops_unknown} unknown), {r.keys} keys checked in "
                         f"{r.check_seconds:.1f} s, "
                         f"{'clean' if r.clean else 'FAILED'}")

    @property
    def clean(self):
        return self.schedules > 0 and not (
            self.violations or self.inconclusive or self.lost or self.duplicated
            or self.unexpected or self.replica_disagreements or self.errors)

    def summary(self):
        return {k: v for k, v in asdict(self).items() if k != "runs"} | {"clean": self.clean}

    def text(self):
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        lines = [
            f"chaos: {self.schedules} schedules, {self.chaos_seconds:.0f} s under faults "
            f"({self.seconds:.0f} s in all)",
            f"  faults injected ({sum(self.faults.values())}, {self.overlapping} times a "
            f"network and a process fault at once): {faults}",
            f"  operations recorded {self.ops_recorded} (ok {self.ops_ok}, unknown "
            f"{self.ops_unknown}); checked {self.ops_checked} over {self.keys_checked} keys",
            f"  violations {self.violations}, acknowledged writes lost {self.lost}, "
            f"appends applied twice {self.duplicated}, unexpected values {self.unexpected}, "
            f"replica disagreements {self.replica_disagreements}",
            f"  keys the checker could not settle {self.inconclusive}, "
            f"unknown appends that took effect {self.unknown_applied}",
            "  snapshots " + ", ".join(f"{k} {v}" for k, v in sorted(self.snapshots.items())),
            *(f"  - {line}" for line in self.runs),
        ]
        anomalies = self.errors + self.findings
        lines += [f"  ! {line}" for line in anomalies[:TEXT_ANOMALIES]]
        if len(anomalies) > TEXT_ANOMALIES:
            lines.append(f"  ! ... and {len(anomalies) - TEXT_ANOMALIES} more (all of them in "
                         "the JSON report)")
        return "\n".join(lines)

    def write_json(self, path):
        with open(path, "w") as f:
            json.dump(asdict(self) | {"clean": self.clean}, f, indent=2, default=str)


def run_chaos(seconds, sizes=((3, "unix", "readindex"), (5, "tcp", "readindex"),
                              (3, "unix", "lease"), (3, "tls", "readindex")),
              schedule_seconds=60.0, seed=1, **config):
    """Schedules back to back, cycling through `sizes`, until `seconds` of
    chaos (faults and clients at work; start-up and checks not counted) have
    run.  Each schedule gets its own seed: seed, seed+1, ..."""
    report = Report()
    i = 0
    while report.chaos_seconds < seconds - 1:
        nodes, transport, read_mode = sizes[i % len(sizes)]
        left = seconds - report.chaos_seconds
        cfg = ScheduleConfig(nodes=nodes, transport=transport, read_mode=read_mode, seed=seed + i,
                             seconds=max(10.0, min(schedule_seconds, left)), **config)
        report.add(run_schedule(cfg))
        i += 1
    return report


def report_path():
    """Where RAFTFAST_CHAOS_REPORT asks for the report as JSON, or None."""
    return os.environ.get("RAFTFAST_CHAOS_REPORT") or None
