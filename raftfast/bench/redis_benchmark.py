"""`redis-benchmark` as the load generator (`--loadgen redis-benchmark`):
the same client drives raftfast's leader and redis-server, so that their
figures differ only by the server.

A point runs `redis-benchmark -t set -c C -P P -d BYTES -n N -r 1000000
--csv` against the target's address and reads the one CSV row it prints
(requests/s, average, p50, p95, p99 and max latency in ms).  The tool counts
requests, not seconds: a calibration run (which is also the warm-up) grows
its request count until it lasts long enough to time, and the measured run
gets the count that lasts about the wanted seconds at the calibrated rate.

The tool's CPU is the client's, reported as the row's client CPU; the
server's CPU comes from the caller's snapshots of the server processes,
taken around the measured run.  redis-benchmark exits on the first error
reply (a MOVED from a node that lost its leadership, a TIMEOUT), which fails
the point with the server's words.
"""
import asyncio
import csv
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from raftfast import resp_client

__all__ = ["BINARY", "binary_path", "benchmark_argv", "parse_csv", "CsvFigures",
           "next_calibration_count", "requests_for", "RedisBenchmarkError",
           "RedisBenchmarkResult", "run_point", "KEYSPACE"]

BINARY = "redis-benchmark"
KEYSPACE = 1_000_000
MIN_CALIBRATION = 200       # requests of the first calibration run
CALIBRATION_TRIES = 6
MIN_REQUESTS_PER_CONNECTION = 4
CSV_FIELDS = {"rps": "rps", "avg_latency_ms": "avg", "min_latency_ms": "min",
              "p50_latency_ms": "p50", "p95_latency_ms": "p95", "p99_latency_ms": "p99",
              "max_latency_ms": "max"}


class RedisBenchmarkError(OSError):
    """redis-benchmark failed or printed no result."""


def binary_path():
    """The redis-benchmark on PATH, or None."""
    return shutil.which(BINARY)


def benchmark_argv(binary, url, clients, pipeline, value_size, requests):
    """The command line of one run against url (tcp://host:port or unix:///path)."""
    addr = resp_client.address(url)
    where = ["-s", addr.path] if addr.scheme == "unix" else ["-h", addr.host, "-p",
                                                             str(addr.port)]
    return [binary, *where, "-t", "set", "-c", str(clients), "-P", str(pipeline),
            "-d", str(value_size), "-n", str(requests), "-r", str(KEYSPACE), "--csv"]


@dataclass
class CsvFigures:
    """One test's row of redis-benchmark --csv: requests/s and latencies in ms."""
    test: str
    rps: float
    avg: float
    min: float
    p50: float
    p95: float
    p99: float
    max: float


def parse_csv(text, test="SET"):
    """The CsvFigures of `test` in redis-benchmark's --csv output (a header
    line, then one quoted line per test).  Lines that are not CSV rows of the
    header's shape (warnings, errors) are ignored.  Raises ValueError when
    the test's row is missing or a figure is not a number."""
    header = None
    for row in csv.reader(ln for ln in text.splitlines() if ln.startswith('"')):
        if row and row[0] == "test":
            header = row
            continue
        if header is None or not row or row[0] != test:
            continue
        values = dict(zip(header, row))
        try:
            figs = {CSV_FIELDS[k]: float(values[k]) for k in CSV_FIELDS}
        except (KeyError, ValueError) as e:
            raise ValueError(f"redis-benchmark CSV: bad {test} row {row!r}") from e
        return CsvFigures(test=test, **figs)
    raise ValueError(f"redis-benchmark CSV: no {test} row in {text.strip()[:200]!r}")


def next_calibration_count(count, elapsed, target):
    """The next calibration run's request count, or None when a run of
    `count` requests lasting `elapsed` s is long enough (>= target s) to give
    the rate.  A short run grows by the factor that would reach the target,
    between 2x and 16x (a run of a few ms says little about the rate)."""
    if elapsed >= target:
        return None
    factor = target / elapsed if elapsed > 0 else 16.0
    return int(count * min(16.0, max(2.0, factor * 1.2)))


def requests_for(rps, seconds, clients, pipeline):
    """Requests that last about `seconds` at `rps`: at least a few pipelines
    per connection, so that every connection takes part."""
    floor = clients * pipeline * MIN_REQUESTS_PER_CONNECTION
    return max(floor, int(round(rps * seconds)))


@dataclass
class RedisBenchmarkResult:
    """A measured point, with the reading interface of loadgen.Result."""
    address: str
    seconds: float          # the run's length as redis-benchmark timed it (requests / rps)
    clients: int
    pipeline: int
    value_size: int
    ops: int
    figures: CsvFigures
    client_cpu: float = 0.0  # CPU seconds redis-benchmark used
    errors: dict = field(default_factory=dict)
    rate = None             # closed loop only

    @property
    def throughput(self):
        return self.figures.rps

    def latency_ms(self):
        f = self.figures
        return {"p50": f.p50, "p90": None, "p95": f.p95, "p99": f.p99, "p99.9": None,
                "max": f.max, "avg": f.avg}

    def describe_load(self):
        return f"{self.clients} clients x pipeline {self.pipeline} (redis-benchmark)"

    def format(self):
        f = self.figures
        lines = [f"target {self.address}: {self.describe_load()}, SET with "
                 f"{self.value_size}-byte values, {self.seconds:.1f} s",
                 f"throughput {self.throughput:,.0f} ops/s ({self.ops} ok)",
                 f"latency ms  avg {f.avg:.3f}  p50 {f.p50:.3f}  p95 {f.p95:.3f}  "
                 f"p99 {f.p99:.3f}  max {f.max:.3f}"]
        if self.seconds > 0:
            lines.append(f"load generator CPU {self.client_cpu / self.seconds:.0%} of a core "
                         f"(redis-benchmark)")
        return "\n".join(lines)


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run_blocking(argv, timeout):
    """(stdout, wall seconds, CPU seconds) of one redis-benchmark run.  Its
    CPU is the growth of this process's reaped children's CPU, which only
    it can add to while it runs (the servers are reaped when they stop)."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RedisBenchmarkError(f"redis-benchmark did not finish in {timeout:.0f} s") from e
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if p.returncode != 0:
        said = [ln for ln in p.stderr.splitlines() if not ln.startswith("WARNING")]
        raise RedisBenchmarkError(f"redis-benchmark exited with code {p.returncode}: "
                                  + ("; ".join(said) or p.stderr.strip())[:200])
    return p.stdout, wall, cpu


async def _run(argv, timeout):
    return await asyncio.get_running_loop().run_in_executor(None, _run_blocking, argv,
                                                            timeout)


async def run_point(url, seconds, clients, pipeline, value_size, between=None,
                    binary=None):
    """Calibrate, then one timed run against url: a RedisBenchmarkResult.

    `between` (an async callable) runs after the calibration and again after
    the timed run; its two results come back with the run:
    (result, before, after).  The caller snapshots the servers there."""
    binary = binary or binary_path()
    if not binary:
        raise RedisBenchmarkError("redis-benchmark is not installed")
    target_cal = min(seconds / 4, 1.0)
    count = max(MIN_CALIBRATION, clients * pipeline * 2)
    for _ in range(CALIBRATION_TRIES):
        out, wall, _ = await _run(benchmark_argv(binary, url, clients, pipeline, value_size,
                                                 count), timeout=60 + seconds)
        figs = parse_csv(out)
        nxt = next_calibration_count(count, wall, target_cal)
        if nxt is None:
            break
        count = nxt
    n = requests_for(figs.rps, seconds, clients, pipeline)
    before = await between() if between else None
    out, wall, cpu = await _run(benchmark_argv(binary, url, clients, pipeline, value_size, n),
                                timeout=60 + 10 * seconds)
    after = await between() if between else None
    figs = parse_csv(out)
    run_seconds = n / figs.rps if figs.rps > 0 else wall
    result = RedisBenchmarkResult(address=resp_client.show(resp_client.address(url)),
                                  seconds=run_seconds, clients=clients, pipeline=pipeline,
                                  value_size=value_size, ops=n, figures=figs, client_cpu=cpu)
    return result, before, after
