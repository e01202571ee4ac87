"""Closed-loop RESP load generator: C connections, each keeping P SETs of
random keys in flight, with per-request latency in a log-linear histogram.

Used by `python -m raftfast.cluster --bench` and `python -m raftfast.bench`.
It speaks raw RESP over asyncio Protocols so that the client's own cost per
request stays small next to the server's.
"""
import asyncio
import math
import random
import time
from dataclasses import dataclass, field
from fractions import Fraction

import uvloop

__all__ = ["Histogram", "Result", "run", "run_async", "RespReplyParser"]


class Histogram:
    """Counts of non-negative integers in log-linear buckets.

    Values below 2**SUB_BITS are counted exactly; above, each power of two
    is split into 2**SUB_BITS buckets, so a bucket is at most 1/128 of the
    values in it wide.  A percentile is reported as its bucket's midpoint:
    within 1/256 (0.4%) of the exact value.  Min, max and mean are exact.
    """

    SUB_BITS = 7
    SUB = 1 << SUB_BITS

    __slots__ = ("counts", "total", "sum", "min", "max")

    def __init__(self):
        self.counts = [0] * (2 * self.SUB)
        self.total = 0
        self.sum = 0
        self.min = None
        self.max = 0

    @classmethod
    def bucket_of(cls, v):
        if v < cls.SUB:
            return v
        shift = v.bit_length() - cls.SUB_BITS - 1
        return ((shift + 1) << cls.SUB_BITS) + (v >> shift) - cls.SUB

    @classmethod
    def bucket_range(cls, i):
        """[lo, hi) of the values counted in bucket i."""
        if i < cls.SUB:
            return i, i + 1
        shift = (i >> cls.SUB_BITS) - 1
        m = (i & (cls.SUB - 1)) + cls.SUB
        return m << shift, (m + 1) << shift

    def record(self, v):
        v = int(v)
        if v < 0:
            raise ValueError(f"histogram values are >= 0, got {v}")
        i = self.bucket_of(v)
        counts = self.counts
        if i >= len(counts):
            counts.extend([0] * (i + 1 - len(counts)))
        counts[i] += 1
        self.total += 1
        self.sum += v
        if self.min is None or v < self.min:
            self.min = v
        if v > self.max:
            self.max = v

    def merge(self, other):
        if len(other.counts) > len(self.counts):
            self.counts.extend([0] * (len(other.counts) - len(self.counts)))
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.total += other.total
        self.sum += other.sum
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        self.max = max(self.max, other.max)

    @property
    def mean(self):
        return self.sum / self.total if self.total else 0.0

    def percentile(self, p):
        """The nearest-rank p-th percentile (0 < p <= 100), 0 when empty."""
        if not self.total:
            return 0
        if p >= 100:
            return self.max
        # Fraction(str(p)): 99.9 must mean 999/1000, not the float just above it.
        rank = max(1, math.ceil(Fraction(str(p)) * self.total / 100))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                lo, hi = self.bucket_range(i)
                mid = (lo + hi - 1) / 2
                # The exact min and max bound every percentile.
                return min(max(mid, self.min), self.max)
        return self.max


class RespReplyParser:
    """Incremental RESP2 reply parser: feed bytes, then take replies.

    Simple strings come back as str, errors as RespError, integers as int,
    bulk strings as bytes (or None), arrays as lists.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self):
        self._buf = b""
        self._pos = 0

    def feed(self, data):
        # Load replies are tiny; one join per data_received is cheap enough.
        self._buf = self._buf[self._pos:] + data if self._pos else self._buf + data
        self._pos = 0

    def take(self):
        """The next whole reply, or _INCOMPLETE."""
        r, pos = self._parse(self._pos)
        if r is _INCOMPLETE:
            return _INCOMPLETE
        self._pos = pos
        return r

    def _parse(self, pos):
        buf = self._buf
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return _INCOMPLETE, pos
        kind, line = buf[pos:pos + 1], buf[pos + 1:end]
        nxt = end + 2
        if kind == b"+":
            return line.decode("utf-8", "replace"), nxt
        if kind == b"-":
            return RespError(line.decode("utf-8", "replace")), nxt
        if kind == b":":
            return int(line), nxt
        if kind == b"$":
            n = int(line)
            if n < 0:
                return None, nxt
            if len(buf) < nxt + n + 2:
                return _INCOMPLETE, pos
            return buf[nxt:nxt + n], nxt + n + 2
        if kind == b"*":
            n = int(line)
            if n < 0:
                return None, nxt
            items = []
            for _ in range(n):
                item, nxt = self._parse(nxt)
                if item is _INCOMPLETE:
                    return _INCOMPLETE, pos
                items.append(item)
            return items, nxt
        raise ValueError(f"not a RESP2 reply: {buf[pos:pos + 40]!r}")


_INCOMPLETE = object()
RespReplyParser.INCOMPLETE = _INCOMPLETE


class RespError(str):
    """An error reply; its first word is the kind (MOVED, ERR, TIMEOUT...)."""

    @property
    def kind(self):
        return self.split(" ", 1)[0] if self else "ERR"


def encode_command(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = b"%d" % a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


@dataclass
class Result:
    address: str
    seconds: float          # measured wall time
    clients: int
    pipeline: int
    value_size: int
    ops: int                # successful SETs
    errors: dict = field(default_factory=dict)   # kind -> count
    latency: Histogram = field(default_factory=Histogram)  # microseconds, every reply

    @property
    def throughput(self):
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def latency_ms(self):
        h = self.latency
        return {name: h.percentile(p) / 1000.0 for name, p in
                (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))} | {
                "max": h.max / 1000.0}

    def format(self):
        lat = self.latency_ms()
        lines = [
            f"target {self.address}: {self.clients} clients x pipeline {self.pipeline}, "
            f"SET with {self.value_size}-byte values, {self.seconds:.1f} s",
            f"throughput {self.throughput:,.0f} ops/s ({self.ops} ok)",
            "latency ms  " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items()),
        ]
        if self.errors:
            lines.append("errors  " + "  ".join(f"{k} {v}" for k, v in
                                                sorted(self.errors.items())))
        return "\n".join(lines)


class _LoadProtocol(asyncio.Protocol):
    """One connection: keeps `pipeline` SETs in flight until told to stop."""

    def __init__(self, gen):
        self.gen = gen
        self.parser = RespReplyParser()
        self.sent_at = []   # send times of outstanding requests, oldest first
        self.head = 0
        self.transport = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self._send(self.gen.pipeline)

    def _send(self, n):
        gen = self.gen
        now = time.perf_counter_ns()
        reqs = [gen.request() for _ in range(n)]
        self.sent_at.extend([now] * n)
        self.transport.writelines(reqs)

    def data_received(self, data):
        gen = self.gen
        self.parser.feed(data)
        now = time.perf_counter_ns()
        done = 0
        while True:
            try:
                r = self.parser.take()
            except ValueError:
                gen.count_error("protocol")
                self.transport.abort()
                return
            if r is _INCOMPLETE:
                break
            gen.latency.record((now - self.sent_at[self.head]) // 1000)
            self.head += 1
            done += 1
            if isinstance(r, RespError):
                gen.count_error(r.kind)
            else:
                gen.ops += 1
        if self.head > 4096:
            del self.sent_at[:self.head]
            self.head = 0
        if done and not gen.stopping:
            self._send(done)
        elif gen.stopping and self.head == len(self.sent_at):
            self.transport.close()

    def connection_lost(self, exc):
        if not self.gen.stopping:
            self.gen.count_error("connection_lost")
        if not self.closed.done():
            self.closed.set_result(None)


class _Generator:
    def __init__(self, clients, pipeline, value_size, keyspace, seed):
        self.clients = clients
        self.pipeline = pipeline
        self.rng = random.Random(seed)
        self.keyspace = keyspace
        value = bytes(self.rng.randrange(97, 123) for _ in range(value_size))
        # Fixed-width keys keep every request the same size.
        self.prefix = b"*3\r\n$3\r\nSET\r\n$16\r\n"
        self.suffix = b"\r\n$%d\r\n%s\r\n" % (value_size, value)
        self.latency = Histogram()
        self.errors = {}
        self.ops = 0
        self.stopping = False

    def request(self):
        key = b"key:%012d" % self.rng.randrange(self.keyspace)
        return self.prefix + key + self.suffix

    def count_error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1


def _split_host_port(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


async def _find_leader(host, port, timeout=5.0):
    """Send one SET; on `-MOVED slot host:port` follow it once."""
    for _ in range(2):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(encode_command("SET", "raftfast:loadgen:probe", "1"))
            parser = RespReplyParser()
            while (r := parser.take()) is _INCOMPLETE:
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    raise ConnectionError(f"{host}:{port} closed the connection")
                parser.feed(data)
        finally:
            writer.close()
        if isinstance(r, RespError) and r.kind == "MOVED":
            host, port = _split_host_port(r.split()[-1])
            continue
        break
    return host, port


async def run_async(addr, seconds, clients=50, pipeline=1, value_size=64,
                    keyspace=1_000_000, seed=None, find_leader=True):
    """Drive `addr` ("host:port" or tcp://host:port) for `seconds`; return a Result."""
    if clients < 1 or pipeline < 1 or value_size < 0 or seconds <= 0:
        raise ValueError("clients and pipeline must be >= 1, value_size >= 0, seconds > 0")
    host, port = _split_host_port(addr.removeprefix("tcp://"))
    if find_leader:
        host, port = await _find_leader(host, port)
    loop = asyncio.get_running_loop()
    gen = _Generator(clients, pipeline, value_size, keyspace, seed)
    protos = []
    try:
        for _ in range(clients):
            _, proto = await loop.create_connection(lambda: _LoadProtocol(gen), host, port)
            protos.append(proto)
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        gen.stopping = True
        elapsed = time.perf_counter() - t0
        ops = gen.ops  # replies after the deadline do not count toward throughput
        # Let outstanding replies arrive so their latencies are not lost.
        await asyncio.wait([p.closed for p in protos], timeout=5.0)
    finally:
        gen.stopping = True
        for p in protos:
            if p.transport is not None and not p.transport.is_closing():
                p.transport.abort()
    return Result(address=f"{host}:{port}", seconds=elapsed, clients=clients,
                  pipeline=pipeline, value_size=value_size, ops=ops,
                  errors=gen.errors, latency=gen.latency)


def run(addr, seconds, clients=50, pipeline=1, value_size=64, **kwargs):
    """run_async on a fresh uvloop event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_async(addr, seconds, clients, pipeline, value_size, **kwargs))
