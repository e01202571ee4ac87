"""The physical floor of one client's write, measured on the machine that runs
the benchmark: what no implementation of a 3-node cluster sharing one disk
can go below.

- fsync: three threads each append a value-sized record to its own file in
  the directory the nodes' data go to and fdatasync it, all three starting
  together; a write is durable on a majority once two of the three are done.
  The figures are the median and the 99th percentile, over a few hundred
  rounds, of the time from the common start to the second completion.  The
  files are preallocated first (fallocate), as the nodes' log segments are.
- fsync CPU: the median CPU time of one writer's append+fdatasync (the
  kernel's work for it, on this thread).  Every node of a cluster pays it
  for every batch, so at one client three nodes spend at least three of
  them per write, where one server with fsync spends one.
- round trip: the median time of a small request and its reply over a
  loopback connection, Unix socket and TCP, to an echo thread.

The one-client floor is the fsync figure plus the TCP round trip (a client
reaches the leader over TCP); the peers' hop is counted as free, so the
floor is a bound, not an estimate.
"""
import os
import socket
import statistics
import tempfile
import threading
import time

from raftfast.bench.histogram import Histogram

__all__ = ["kth_completion", "median_kth_completion", "kth_completions", "p99", "FsyncFloor",
           "measure_fsync", "measure_round_trip", "measure_floor", "floor_dir", "format_floor"]

FSYNC_WRITERS = 3
FSYNC_MAJORITY = 2
FSYNC_ROUNDS = 300
ROUND_TRIPS = 2000
MESSAGE = b"x" * 32


def floor_dir():
    """Where the nodes' temporary data directories go (LocalCluster's rule)."""
    return "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()


def kth_completion(start, ends, k=FSYNC_MAJORITY):
    """The time from `start` until the k-th of the concurrent calls that ended
    at `ends` completed."""
    if not 1 <= k <= len(ends):
        raise ValueError(f"k={k} of {len(ends)} calls")
    return sorted(ends)[k - 1] - start


def kth_completions(rounds, k=FSYNC_MAJORITY):
    """The time to the k-th completion of every round, each (start, [end of
    every call]), sorted."""
    return sorted(kth_completion(s, ends, k) for s, ends in rounds)


def median_kth_completion(rounds, k=FSYNC_MAJORITY):
    """The median over rounds, each (start, [end of every call]), of the time
    to the k-th completion."""
    return statistics.median(kth_completions(rounds, k))


def p99(values):
    """The 99th percentile of integer values, as every figure of the
    benchmarks reads one (Histogram: nearest rank, within 0.4%)."""
    h = Histogram()
    for v in values:
        h.record(v)
    return h.percentile(99)


class FsyncFloor:
    """Rounds of `writers` threads appending `size` bytes to their own file
    and fdatasync-ing it, started together by a barrier."""

    def __init__(self, directory, size, writers=FSYNC_WRITERS):
        self.directory, self.size, self.writers = directory, max(1, size), writers
        self.record = os.urandom(self.size)
        self.cpu_ns = []  # CPU time of each append+fdatasync, every writer, after run()

    def run(self, rounds):
        """[(start_ns, [end_ns of each writer])] of every round."""
        d = tempfile.mkdtemp(prefix="rf-floor-", dir=self.directory)
        fds = [os.open(os.path.join(d, f"w{i}"), os.O_WRONLY | os.O_CREAT)
               for i in range(self.writers)]
        for fd in fds:
            try:
                os.posix_fallocate(fd, 0, rounds * self.size)
                os.fsync(fd)
            except OSError:
                pass  # a filesystem that cannot reserve: plain appends, as the nodes do there
        starts, ends = [], [[0] * self.writers for _ in range(rounds)]
        cpu = [[] for _ in range(self.writers)]
        # The barrier's action runs once all writers are waiting, just before
        # it lets them go: that instant is the round's common start.
        go = threading.Barrier(self.writers,
                               action=lambda: starts.append(time.perf_counter_ns()))

        def writer(i):
            fd, record, size, mine = fds[i], self.record, self.size, cpu[i]
            for r in range(rounds):
                go.wait()
                c = time.thread_time_ns()
                os.pwrite(fd, record, r * size)
                os.fdatasync(fd)
                ends[r][i] = time.perf_counter_ns()
                mine.append(time.thread_time_ns() - c)
        try:
            threads = [threading.Thread(target=writer, args=(i,)) for i in range(self.writers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for fd in fds:
                os.close(fd)
            for i in range(self.writers):
                os.unlink(os.path.join(d, f"w{i}"))
            os.rmdir(d)
        self.cpu_ns = [c for mine in cpu for c in mine]
        return list(zip(starts, ends))


def measure_fsync(directory, size, rounds=FSYNC_ROUNDS):
    """(median ms, p99 ms) until 2 of 3 concurrent append+fdatasync calls
    complete, and the median CPU ms of one of them."""
    floor = FsyncFloor(directory, size)
    times = kth_completions(floor.run(rounds))
    return (statistics.median(times) / 1e6, p99(times) / 1e6,
            statistics.median(floor.cpu_ns) / 1e6)


def _echo(listener):
    conn, _ = listener.accept()
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def measure_round_trip(family, trips=ROUND_TRIPS):
    """Median ms of a small request and its reply over loopback: family is
    "unix" or "tcp"."""
    with tempfile.TemporaryDirectory(prefix="rf-floor-") as d:
        if family == "unix":
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(os.path.join(d, "s"))
        else:
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
        with listener:
            listener.listen(1)
            echo = threading.Thread(target=_echo, args=(listener,), daemon=True)
            echo.start()
            client = socket.socket(listener.family)
            with client:
                client.connect(listener.getsockname())
                if family == "tcp":
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                times = []
                for _ in range(trips):
                    t = time.perf_counter_ns()
                    client.sendall(MESSAGE)
                    got = 0
                    while got < len(MESSAGE):
                        got += len(client.recv(4096))
                    times.append(time.perf_counter_ns() - t)
            echo.join(5)
    return statistics.median(times) / 1e6


def measure_floor(size, directory=None, rounds=None, trips=None):
    """{fsync_2of3_ms, fsync_2of3_p99_ms, fsync_cpu_us, rtt_unix_ms,
    rtt_tcp_ms, one_client_ms, value_size, directory}: the run's floor (see
    the module doc); FSYNC_ROUNDS and ROUND_TRIPS unless told."""
    directory = directory or floor_dir()
    fsync, fsync_p99, fsync_cpu = measure_fsync(directory, size, rounds or FSYNC_ROUNDS)
    trips = trips or ROUND_TRIPS
    unix, tcp = measure_round_trip("unix", trips), measure_round_trip("tcp", trips)
    return {"fsync_2of3_ms": round(fsync, 4), "fsync_2of3_p99_ms": round(fsync_p99, 4),
            "fsync_cpu_us": round(fsync_cpu * 1000, 1), "rtt_unix_ms": round(unix, 4),
            "rtt_tcp_ms": round(tcp, 4), "one_client_ms": round(fsync + tcp, 4),
            "value_size": size, "directory": directory}


def format_floor(f):
    return (f"floor ({f['value_size']} B, {f['directory']}): 2 of 3 concurrent "
            f"append+fdatasync {f['fsync_2of3_ms']:.3f} ms (median; p99 "
            f"{f['fsync_2of3_p99_ms']:.3f} ms), CPU {f['fsync_cpu_us']:.0f} us each; loopback "
            f"round trip unix {f['rtt_unix_ms']:.3f} ms, tcp {f['rtt_tcp_ms']:.3f} ms; one "
            f"client >= {f['one_client_ms']:.3f} ms")
