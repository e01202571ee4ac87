"""The least a replicated log in Python costs per SET on this machine.

Three uvloop processes do what any majority-replicated, fsync-always key
value store must do for a SET, with raftfast's own compiled pieces and as
little Python as can join them, and nothing else (no terms, no elections,
no flow control, no recovery):

- the leader's front door parses each read's SETs into one block of
  entries (the compiled RESP parser's KV path, as a raftfast node does);
- once per loop iteration the leader writes the iteration's block to its
  log file, sends it to both followers over Unix sockets and fdatasyncs;
- each follower, per read, writes what arrived, fdatasyncs, applies it to
  the compiled key-value store and answers with the last sequence number;
- the leader applies a block and answers its clients once it is on its
  own disk and on one follower's (two of three).

The same `redis-benchmark -t set` loads as the targets drive it, beside a
3-node raftfast cluster (`--fsync always`, Unix-socket peers, snapshots
off) and `redis-server --appendonly yes --appendfsync always`, in turns,
in one run.  Printed per load and system: SET/s, p50, p99 and the CPU per
SET of every server process (user and kernel, from /proc).  A raftfast
figure against this floor is what the Raft runtime costs on top of a
minimal replicated log; this floor against Redis is what three Python
processes that each fsync cost against one C process
(docs/benchmarks.md, "Why the missed targets stop there").

    python -m bench.python_replication_floor [--rounds R] [--value-size B] [--port PORT]
"""
import argparse
import asyncio
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
from collections import deque

from bench.python_server_floor import _wait_port
from raftfast.bench.floor import format_floor, measure_floor
from raftfast.bench.redis_benchmark import parse_csv
from raftfast.bench.stats import proc_cpu_times

LOADS = (("-P", "16", "-c", "50"), ("-P", "1", "-c", "50"), ("-P", "1", "-c", "1"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OK = b"+OK\r\n"
EMPTY_ARRAY = b"*0\r\n"  # the answer to anything but a KV command (redis-benchmark's CONFIG GET)
FRAME = struct.Struct("<QI")  # sequence number, payload bytes
ACK = struct.Struct("<Q")  # the last sequence number on the follower's disk


# ------------------------------------------------------------------ leader

class Leader:
    """Batches the iteration's SETs, logs and replicates them, answers once
    two of three copies are on disk."""

    def __init__(self, loop, log_fd, store):
        self.loop = loop
        self.log_fd = log_fd
        self.store = store
        self.followers = []  # their transports
        self.acked = []  # per follower, the last sequence number it acknowledged
        self.block = bytearray()  # this iteration's entries
        self.clients = []  # this iteration's (transport, entries)
        self.seq = 0
        self.flush_due = False
        self.unanswered = deque()  # (seq, block, clients), oldest first

    def add(self, transport, count):
        self.clients.append((transport, count))
        if not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self.flush)  # after every read of this iteration

    def flush(self):
        self.flush_due = False
        self.seq += 1
        block = bytes(self.block)
        self.block.clear()
        frame = FRAME.pack(self.seq, len(block)) + block
        for follower in self.followers:
            follower.write(frame)  # the followers' writes start before ours
        os.write(self.log_fd, block)
        os.fdatasync(self.log_fd)
        self.unanswered.append((self.seq, block, self.clients))
        self.clients = []
        self.answer()

    def on_ack(self, i, seq):
        self.acked[i] = seq
        self.answer()

    def answer(self):
        # Our own copy is on disk for every batch in `unanswered` (flush
        # syncs before it queues): one follower's makes two of three.
        durable = max(self.acked)
        while self.unanswered and self.unanswered[0][0] <= durable:
            _, block, clients = self.unanswered.popleft()
            self.store.apply(block, False)
            for transport, count in clients:
                transport.write(OK * count)


class ClientProtocol(asyncio.Protocol):
    def __init__(self, leader):
        from raftfast._resp import RespParser
        self.leader = leader
        self.parser = RespParser()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        parser = self.parser
        parser.feed(data)
        while True:
            count, other = parser.parse_kv(self.leader.block, False)
            if count:
                self.leader.add(self.transport, count)
            if other is None:
                return
            self.transport.write(EMPTY_ARRAY)


class AckProtocol(asyncio.Protocol):
    """The leader's end of one follower's connection: its acknowledgements."""

    def __init__(self, leader, i):
        self.leader = leader
        self.i = i
        self.buf = b""

    def data_received(self, data):
        buf = self.buf + data
        whole = len(buf) - len(buf) % ACK.size
        if whole:
            self.leader.on_ack(self.i, ACK.unpack_from(buf, whole - ACK.size)[0])
        self.buf = buf[whole:]


# ---------------------------------------------------------------- follower

class FollowerProtocol(asyncio.Protocol):
    """Writes, fdatasyncs, applies and acknowledges each read's whole frames."""

    def __init__(self, log_fd, store):
        self.log_fd = log_fd
        self.store = store
        self.buf = bytearray()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        buf = self.buf
        buf += data
        blocks, pos, last = [], 0, None
        while len(buf) - pos >= FRAME.size:
            seq, size = FRAME.unpack_from(buf, pos)
            end = pos + FRAME.size + size
            if end > len(buf):
                break
            blocks.append(bytes(buf[pos + FRAME.size:end]))
            pos, last = end, seq
        if last is None:
            return
        del buf[:pos]
        os.writev(self.log_fd, blocks)
        os.fdatasync(self.log_fd)
        for block in blocks:
            self.store.apply(block, False)
        self.transport.write(ACK.pack(last))


# ----------------------------------------------------------------- running

def _log_fd(directory, name):
    return os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


async def _until_terminated():
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    print("ready", flush=True)
    await stop


def serve_follower(directory, i):
    import uvloop
    from raftfast._kv import KVStore

    async def main():
        loop = asyncio.get_running_loop()
        fd, store = _log_fd(directory, f"follower{i}.log"), KVStore()
        server = await loop.create_unix_server(lambda: FollowerProtocol(fd, store),
                                               os.path.join(directory, f"follower{i}.sock"))
        await _until_terminated()
        server.close()

    uvloop.run(main())


def serve_leader(directory, port):
    import uvloop
    from raftfast._kv import KVStore

    async def main():
        loop = asyncio.get_running_loop()
        leader = Leader(loop, _log_fd(directory, "leader.log"), KVStore())
        for i in range(2):
            transport, _ = await loop.create_unix_connection(
                lambda i=i: AckProtocol(leader, i), os.path.join(directory, f"follower{i}.sock"))
            leader.followers.append(transport)
            leader.acked.append(0)
        server = await loop.create_server(lambda: ClientProtocol(leader), "127.0.0.1", port)
        await _until_terminated()
        server.close()

    uvloop.run(main())


class _Processes:
    """Server processes started in order, each once it said "ready" (or,
    without a ready line, once `port` answers); ended by PID in reverse."""

    def __init__(self):
        self.procs = []

    def start(self, argv, ready_line=True):
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        if ready_line and proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{argv} did not start")
        return proc

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def close(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if "raftfast.cluster" in proc.args else
                                 signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_floor(procs, directory, port):
    for i in range(2):
        procs.start([sys.executable, "-m", "bench.python_replication_floor", "--follower",
                     str(i), "--dir", directory])
    procs.start([sys.executable, "-m", "bench.python_replication_floor", "--leader",
                 "--dir", directory, "--port", str(port)])
    return port, procs.pids


def start_raftfast(procs, directory, base_port):
    """A 3-node cluster; (the leader's client port, the node PIDs)."""
    cluster = procs.start([sys.executable, "-m", "raftfast.cluster", "--nodes", "3", "--fsync",
                           "always", "--base-port", str(base_port), "--snapshot-entries", "0",
                           "--data-dir", directory], ready_line=False)
    while True:
        line = cluster.stdout.readline()
        if not line:
            raise RuntimeError("the raftfast cluster exited before it had a leader")
        if " leader " in f" {line} ":
            fields = line.split()
            port = int(next(f for f in fields if f.startswith("tcp://")).rsplit(":", 1)[1])
            break
    children = open(f"/proc/{cluster.pid}/task/{cluster.pid}/children").read().split()
    return port, [int(p) for p in children]


def start_redis(procs, directory, port):
    procs.start(["redis-server", "--port", str(port), "--save", "", "--appendonly", "yes",
                 "--appendfsync", "always", "--dir", directory], ready_line=False)
    _wait_port(port)
    return port, [procs.procs[-1].pid]


def measure(pids, port, load, requests, value_size):
    """SET/s, p50 and p99 ms, user and kernel µs per SET over `pids`, and
    (user, kernel) µs per SET of each of them."""
    bench = ["redis-benchmark", "-p", str(port), "-t", "set", "-r", "1000000", "-d",
             str(value_size), *load, "--csv"]
    before = [proc_cpu_times(p) for p in pids]
    out = subprocess.run(bench + ["-n", str(requests)], check=True, capture_output=True,
                         text=True).stdout
    after = [proc_cpu_times(p) for p in pids]
    figs = parse_csv(out)
    per_process = [((a[0] - b[0]) * 1e6 / requests, (a[1] - b[1]) * 1e6 / requests)
                   for a, b in zip(after, before)]
    user = sum(u for u, _ in per_process)
    kernel = sum(k for _, k in per_process)
    return figs.rps, figs.p50, figs.p99, user, kernel, per_process


def requests_for(load, scale):
    return {"16": 100_000, "1": 30_000}[load[1]] * scale // (1 if load[3] == "50" else 6)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=int, default=1, help="requests per run, times this")
    ap.add_argument("--value-size", type=int, default=64, help="SET value bytes")
    ap.add_argument("--port", type=int, default=7380)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--leader", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--follower", type=int, help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns.leader:
        serve_leader(ns.dir, ns.port)
        return 0
    if ns.follower is not None:
        serve_follower(ns.dir, ns.follower)
        return 0
    missing = [b for b in ("redis-benchmark", "redis-server") if not shutil.which(b)]
    if missing:
        print(f"not installed: {', '.join(missing)}", file=sys.stderr)
        return 1
    systems = (("python floor, 3 procs", start_floor, ns.port),
               ("raftfast, 3 nodes", start_raftfast, ns.port + 10),
               ("redis, fsync always", start_redis, ns.port + 1))
    results = {}  # (system, load) -> [figures per round]
    with tempfile.TemporaryDirectory() as top:
        floor = measure_floor(ns.value_size, directory=top)
        procs = _Processes()
        try:
            started = []
            for name, start, port in systems:
                directory = os.path.join(top, name.split()[0].strip(","))
                os.mkdir(directory)
                started.append((name, *start(procs, directory, port)))
            for load in LOADS:
                n = requests_for(load, ns.scale)
                for name, port, pids in started:  # warm-up
                    measure(pids, port, load, max(1000, n // 10), ns.value_size)
                for _ in range(ns.rounds):
                    for name, port, pids in started:
                        results.setdefault((name, load), []).append(
                            measure(pids, port, load, n, ns.value_size))
        finally:
            procs.close()
    print(format_floor(floor))
    print(f"{ns.value_size} B values, {ns.rounds} rounds in turns, medians; CPU per SET is every "
          "server process's user + kernel; x: against Redis in the same run")
    print(f"{'system':24} {'load':12} {'SET/s':>9} {'x':>5} {'p50 ms':>7} {'p99 ms':>7} {'x':>5} "
          f"{'user us':>8} {'kernel us':>9} {'CPU us':>8} {'x':>5}")
    for load in LOADS:
        medians = {name: [statistics.median(r[k] for r in results[(name, load)])
                          for k in range(5)] for name, _, _ in systems}
        redis = medians[systems[-1][0]]
        for name, _, _ in systems:
            rate, p50, p99, user, kernel = medians[name]
            print(f"{name:24} {' '.join(load):12} {rate:>9,.0f} {rate / redis[0]:>5.2f} "
                  f"{p50:>7.3f} {p99:>7.3f} {p99 / redis[2]:>5.2f} {user:>8.1f} {kernel:>9.1f} "
                  f"{user + kernel:>8.1f} {(user + kernel) / (redis[3] + redis[4]):>5.2f}")
    print("one client, user / kernel us per SET by process (medians; the floor's and "
          "raftfast's leader is the one using most):")
    for name, _, _ in systems:
        rows = results[(name, LOADS[-1])]
        per = [(statistics.median(r[5][i][0] for r in rows),
                statistics.median(r[5][i][1] for r in rows)) for i in range(len(rows[0][5]))]
        print(f"  {name:24} " + ", ".join(f"{u:.0f} / {k:.0f}" for u, k in per))
    one = {name: statistics.median(r[1] for r in results[(name, LOADS[-1])])
           for name, _, _ in systems}
    print("one client's p50 above the floor: " + ", ".join(
        f"{name} {p50 - floor['one_client_ms']:+.3f} ms" for name, p50 in one.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
