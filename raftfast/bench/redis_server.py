"""Redis as a yardstick for `bench compare --against redis`: one
redis-server on loopback at its most durable setting (append-only file,
fsync before every reply), driven by the same load generator as raftfast,
and the ratio of every raftfast row to Redis's row at the same load.
"""
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time

from raftfast import resp_client
from raftfast.bench import stats as bench_stats
from raftfast.bench.measure import Target, measure_snapshots

__all__ = ["SYSTEM", "SETTINGS_NOTE", "redis_server_path", "server_argv", "RedisServer",
           "redis_points", "measure_redis", "add_redis_ratios", "load_key", "load_order",
           "RATIOS"]

SYSTEM = "redis"
SETTINGS_NOTE = "appendonly yes, appendfsync always (its most durable setting)"
READY_TIMEOUT = 10.0


def redis_server_path():
    """The redis-server on PATH, or None."""
    return shutil.which("redis-server")


def server_argv(binary, port, data_dir):
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes",
            "--appendfsync", "always", "--save", "", "--dir", data_dir]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """async with RedisServer() as r: one redis-server in a fresh directory,
    answering PING at r.url; stopped by its PID and its directory removed
    on exit."""

    def __init__(self, binary=None, port=None):
        self.binary = binary or redis_server_path()
        self.port = port
        self.proc = None
        self.dir = None

    @property
    def url(self):
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def pid(self):
        return self.proc.pid

    async def __aenter__(self):
        if not self.binary:
            raise OSError("redis-server is not installed")
        self.port = self.port or _free_port()
        self.dir = tempfile.mkdtemp(prefix="raftfast-bench-redis-")
        self.proc = subprocess.Popen(server_argv(self.binary, self.port, self.dir),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc):
        self.stop()

    async def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise OSError(f"redis-server exited with code {self.proc.returncode}")
            try:
                if await resp_client.call(self.url, "PING", timeout=1.0) == "PONG":
                    return
            except (OSError, asyncio.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise asyncio.TimeoutError(f"redis-server not answering on {self.url}")
            await asyncio.sleep(0.05)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def redis_points(points):
    """One Redis configuration with every load of the sweep."""
    loads = set()
    for _, ls in points:
        loads.update(ls)
    p = dict(system=SYSTEM, nodes=1, transport="tcp", fsync="always", max_batch_entries=None,
             batch_linger_us=None, max_inflight=None)
    return [(p, tuple(sorted(loads, key=load_order)))]


def load_order(load):
    """Loads (clients, pipeline, rate[, value size]) from the lightest."""
    clients, pipeline = load[0], load[1] or 1
    return (clients * pipeline, clients, load[2] or 0, load[3] if len(load) > 3 else 0)


async def measure_redis(server, seconds, clients, pipeline, value_size, rate=None,
                        loadgen_name="python"):
    """One load run against a RedisServer: (Result, figures), the server's
    CPU (utime + stime from /proc) per SET answered."""
    target = Target(server.url, {0: (server.url, server.pid)}, 0)
    result, before, after = await measure_snapshots(target, seconds, clients, pipeline,
                                                    value_size, rate,
                                                    loadgen_name=loadgen_name)
    figs = bench_stats.figures(before, after, 0)
    figs["entries"] = result.ops
    cpu = figs.get("server_cpu_s")
    figs["cpu_s_per_m_entries"] = cpu / (result.ops / 1e6) if cpu is not None and result.ops \
        else None
    return result, figs


def load_key(row):
    return (row.get("clients"), row.get("pipeline"), row.get("rate"), row.get("value_size"))


# (row field, the figure it is the ratio of)
RATIOS = (("ratio_to_redis", "throughput"), ("p50_ratio_to_redis", "p50_ms"),
          ("p99_ratio_to_redis", "p99_ms"), ("cpu_ratio_to_redis", "cpu_us_per_op"))


def _ratio(num, den):
    return round(num / den, 3) if num is not None and den else None


def add_redis_ratios(rows):
    """Set every raftfast row's ratios to the Redis row at the same load
    (clients, pipeline, rate, value size): throughput, p50, p99 and server
    CPU per op, each raftfast's figure over Redis's (RATIOS).  None where
    there is no measured Redis row at that load or a figure is missing."""
    redis = {load_key(r): r for r in rows if r.get("system") == SYSTEM and r.get("throughput")}
    for r in rows:
        if r.get("system") != "raftfast":
            continue
        base = redis.get(load_key(r))
        for name, figure in RATIOS:
            r[name] = _ratio(r.get(figure), base.get(figure)) if base else None
    return rows
