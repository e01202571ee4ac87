"""A soak run: a 5-node harness cluster under steady load for a long time,
with snapshots, voters replaced and rolling restarts, watched for growth.

  - load (tests/support/soak_load.py): raftfast.Client threads writing
    SET/INCR/APPEND and reading their own keys, a data set of fixed size;
  - a sampled history (tests/support/soak_history.py): the chaos run's
    workload clients on a few keys at a time, every operation recorded and
    checked for linearizability as the run goes;
  - the operator (tests/support/soak_ops.py): every `roll_minutes` a
    rolling restart, and halfway between two rolls the oldest voter
    replaced by a fresh node;
  - snapshots every `snapshot_entries` applied entries;
  - a sample every `sample_seconds` (tests/support/soak_report.py says what
    is in it and how growth is judged).

At the end: every key the load wrote is read back, what is left of the
history is checked, every node is stopped with SIGTERM and must exit 0,
and the nodes' logs (replaced nodes' too) must hold no ERROR, CRITICAL or
traceback.  tests/chaos/test_soak.py runs it behind the `slow` marker.
"""
import glob
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

from tests.support.chaos_workload import WorkloadClient
from tests.support.harness import Cluster
from tests.support.soak_history import GenerationKeyspace, HistoryChecker
from tests.support.soak_load import LoadClient, read_back
from tests.support.soak_ops import Operator
from tests.support.soak_report import (SoakReport, growth_verdicts, process_verdicts,
                                       roll_verdicts)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class SoakConfig:
    minutes: float = 60.0
    roll_minutes: float = 10.0      # a rolling restart this often; a replacement halfway between
    nodes: int = 5
    transport: str = "tcp"
    sample_seconds: float = 10.0
    load_clients: int = 4
    keys_per_client: int = 500
    value_bytes: int = 100
    history_clients: int = 3
    history_registers: int = 2      # register keys per generation of the sampled history
    history_appends: int = 2
    history_lifetime: float = 5.0   # seconds a generation of history keys is used
    snapshot_entries: int = 100000  # about a minute of entries at ~1600 ops/s
    snapshot_trailing: int = 10000
    heartbeat_ms: int = 100
    election_ms: int = 1000
    seed: int = 1


def process_rss_fds_age(pid):
    """(VmRSS in kB, open fds, seconds since the process started) of a live pid."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19]) / CLOCK_TICKS
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return rss, fds, uptime - started


class Sampler(threading.Thread):
    """A sample every `interval` seconds until `stop` (see soak_report)."""

    def __init__(self, cluster, slots, operator, counters, interval, stop, started):
        super().__init__(name="soak-sampler", daemon=True)
        self.cluster, self.slots, self.operator = cluster, slots, operator
        self.counters, self.interval, self.stop = counters, interval, stop
        self.started = started
        self.samples = []
        self.errors = []
        self._reported = set()

    def run(self):
        try:
            last_t, last_acked = time.monotonic(), self.counters()
            while not self.stop.wait(self.interval):
                now, acked = time.monotonic(), self.counters()
                self.samples.append(self.sample(now, (acked - last_acked) / (now - last_t)))
                last_t, last_acked = now, acked
        except Exception as e:  # noqa: BLE001 - reported by the run, not lost in a thread
            self.errors.append(f"sampler: {type(e).__name__}: {e}")

    def sample(self, now, rate):
        nodes = {}
        for node in list(self.cluster.nodes.values()):
            proc = node.proc
            if proc is None or proc.poll() is not None:
                self._exited(node)
                continue
            try:
                rss, fds, age = process_rss_fds_age(proc.pid)
                info = node.info() or {}
                clients = int(node.raw_bulk("INFO", "clients").split("connected_clients:")[1]
                              .split()[0])
            except (OSError, ValueError, IndexError, StopIteration, AttributeError):
                continue  # stopped or restarted between the checks: the next sample has it
            nodes[self.slots[node.client_port]] = {
                "id": node.id, "pid": proc.pid, "age": round(age, 1), "rss_kb": rss,
                "fds": fds, "clients": clients, "role": info.get("raft_role"),
                "commit": int(info.get("raft_commit_index", 0))}
        return {"t": round(now - self.started, 1), "ops_per_s": round(rate, 1),
                "commit": max((n["commit"] for n in nodes.values()), default=0), "nodes": nodes}

    def _exited(self, node):
        if node.id in self.operator.busy or node.id in self._reported or node.proc is None:
            return
        self._reported.add(node.id)
        self.errors.append(f"node {node.id} exited on its own with {node.proc.returncode}:\n"
                           f"{node.log_tail(10)}")


def log_lines(root, *needles):
    """Lines of every node log under `root` (replaced nodes' included)
    holding all of `needles`."""
    found = []
    for path in sorted(glob.glob(os.path.join(root, "node*.log"))):
        with open(path, errors="replace") as f:
            found += [(os.path.basename(path), line.rstrip()) for line in f
                      if all(n in line for n in needles)]
    return found


def log_errors(root):
    found = []
    for path in sorted(glob.glob(os.path.join(root, "node*.log"))):
        with open(path, errors="replace") as f:
            found += [f"{os.path.basename(path)}: {line.rstrip()}" for line in f
                      if " ERROR " in line or " CRITICAL " in line
                      or line.startswith("Traceback")]
    return found


def snapshot_counts(root):
    return {"taken": len(log_lines(root, "snapshot at index", " taken ")),
            "sent": len(log_lines(root, "sending node", "the snapshot at index")),
            "installed": len(log_lines(root, "installed the snapshot at index"))}


def run_soak(cfg):
    """One soak run, start to finish: its SoakReport.  Never leaves a
    process behind; the directory (logs, data) is kept when it failed."""
    root = tempfile.mkdtemp(prefix="rfs")
    node_args = ["--snapshot-entries", str(cfg.snapshot_entries),
                 "--snapshot-trailing", str(cfg.snapshot_trailing)]
    cluster = Cluster(root, n=cfg.nodes, transport=cfg.transport, heartbeat_ms=cfg.heartbeat_ms,
                      election_ms=cfg.election_ms, extra_args=node_args)
    report = SoakReport(config=asdict(cfg))
    operator = Operator(cluster, node_args)
    stop = threading.Event()
    slots = {port: i for i, port in cluster.client_ports.items()}
    ports = dict(cluster.client_ports)          # slot -> client port, fixed for the run
    addrs = [f"127.0.0.1:{p}" for p in ports.values()]
    loads, writers, threads, checker = [], [], [], None
    duration = cfg.minutes * 60
    try:
        cluster.start()
        cluster.wait_leader(timeout=60)
        loads = [LoadClient(c, addrs, stop, cfg.keys_per_client, cfg.value_bytes, cfg.seed)
                 for c in range(1, cfg.load_clients + 1)]
        keyspace = GenerationKeyspace(cfg.history_registers, cfg.history_appends,
                                      cfg.history_lifetime)
        writers = [WorkloadClient(c, ports, keyspace, f"soak-{cfg.seed}-{c}", stop)
                   for c in range(1, cfg.history_clients + 1)]
        checker = HistoryChecker(keyspace, writers, ports, addrs, stop)

        def counters():
            return sum(c.acked for c in loads) + sum(c.outcomes["done"] for c in writers)

        started = time.monotonic()
        sampler = Sampler(cluster, slots, operator, counters, cfg.sample_seconds, stop, started)
        threads = [*loads, *writers, checker, sampler]
        for t in threads:
            t.start()
        operate(operator, cfg, started, duration, stop, report)
        stop.wait(max(0.0, started + duration - time.monotonic()))  # the run's planned length
        report.seconds = round(time.monotonic() - started, 1)
        stop.set()
        for t in threads:
            t.join(60)
            if t.is_alive():
                report.errors.append(f"{t.name} did not stop within 60 s")
        checker.finish()
        report.lost = read_back(loads, addrs)
        leader = cluster.wait_leader(timeout=60)
        report.load = {"writes": sum(c.writes for c in loads),
                       "reads": sum(c.reads for c in loads),
                       "gave_up": sum(c.gave_up for c in loads),
                       "uncertain_keys": sum(len(c.uncertain) for c in loads),
                       "keys": cluster.nodes[leader].keys()}
        report.samples = sampler.samples
        report.growth = growth_verdicts(sampler.samples, report.seconds)
        report.processes = process_verdicts(sampler.samples)
        report.rolls = roll_verdicts(sampler.samples, operator.events, report.seconds)
        report.errors += sampler.errors
    except Exception as e:  # noqa: BLE001 - a harness failure is a failed run, reported
        report.errors.append(f"{type(e).__name__}: {e}")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        for c in loads:
            report.errors += c.errors
            report.wrong_reads += c.wrong_reads
        for c in writers:
            report.errors += c.errors
        if checker is not None:
            report.history = checker.summary()
            report.findings = checker.findings
            report.errors += checker.errors
        report.events = operator.events
        codes = cluster.stop()
        report.errors += [f"node {i} exited with {code} on SIGTERM (a clean stop is 0)"
                          for i, code in sorted(codes.items()) if code != 0]
        report.errors += [f"node {i} exited with {code} on the operator's SIGTERM"
                          for i, code in operator.exit_codes if code != 0]
        report.snapshots = snapshot_counts(root)
        report.errors += log_errors(root)
        if report.clean:
            shutil.rmtree(root, ignore_errors=True)
        else:
            report.errors.append(f"node logs and data kept in {root}")
    return report


def operate(operator, cfg, started, duration, stop, report):
    """The operator's schedule: at every half roll period a replacement,
    at every whole one a rolling restart, none starting in the run's last
    half period.  An action that fails ends the schedule (reported); the
    load goes on to the end."""
    half = cfg.roll_minutes * 30
    k = 1
    while k * half < duration - 1:
        if stop.wait(max(0.0, started + k * half - time.monotonic())):  # the planned schedule
            return
        at = time.monotonic() - started
        try:
            if k % 2:
                operator.replace_oldest(at)
            else:
                operator.roll(at)
        except Exception as e:  # noqa: BLE001 - reported, and the run's checks still run
            report.errors.append(f"{'replacement' if k % 2 else 'roll'} at {at:.0f} s: "
                                 f"{type(e).__name__}: {e}")
            return
        k += 1
