"""RESP load generator: SETs of random keys against one node, closed loop
(C connections, each keeping P requests in flight) or open loop (a fixed
rate spread over the connections), with latency in a log-linear histogram.

Used by `python -m raftfast.cluster --bench` and `python -m raftfast.bench`.

The generator must stay cheap next to the server it measures, so the hot
path builds no Python object per request or per reply:
- requests come from one pre-built buffer of fixed-size SETs (random keys);
  a connection writes its next n requests as one slice of it;
- replies are counted in bulk: a read that holds only `+OK\\r\\n` replies
  (the answer to every successful SET) is counted with one bytes.count;
  anything else (errors, a reply cut by the read) falls back to a parser;
- latency is recorded once per group of requests sent together and answered
  in the same read (closed loop), not once per request.

With sessions=True every SET goes through a client session instead:
`RAFT.EXEC sid seq SET key value`, one session per connection (opened with
RAFT.SESSION OPEN before the run), seq counting up per connection: the
same keys and values, so the two loads show side by side what exactly-once
costs the server.  Those requests are formatted as they are sent (a seq
differs in each), which costs the generator a little more per request.

Open loop: request k is due at start + k/rate and goes out on connection
k mod C; its latency is measured from that intended time, not from when it
was actually written, so a stalled server (or a late generator) shows in
the percentiles instead of silently slowing the load down (no coordinated
omission).  How late the generator itself was is reported as `send lag`.
"""
import asyncio
import collections
import random
import time
from dataclasses import dataclass, field

import uvloop

from raftfast import resp_client
from raftfast.bench.histogram import Histogram
from raftfast.resp_client import INCOMPLETE, RespError, RespReplyParser

__all__ = ["Histogram", "Result", "run", "run_async", "scan_replies", "OpenLoopSchedule",
           "RequestPool", "SessionRequests"]

OK = b"+OK\r\n"
DRAIN_TIMEOUT = 5.0      # after the deadline, how long outstanding replies may take
POOL_BYTES = 8 << 20     # the request buffer's size cap
POOL_REQUESTS = 16384
MIN_TICK = 0.001         # open loop: shortest sleep between send rounds


# ---- replies --------------------------------------------------------------------

def scan_replies(buf):
    """Count the complete replies at the front of `buf`.

    Returns (replies, error_kinds, consumed): the number of whole replies,
    the kinds of the error replies among them, and how many bytes they
    take.  A buffer of `+OK\\r\\n` replies, possibly ending in part of one,
    is counted with one bytes.count; anything else goes through the parser.
    Raises ValueError for bytes that are not RESP.
    """
    n = buf.count(OK)
    used = 5 * n
    # n non-overlapping "+OK\r\n" in the first 5n bytes tile them exactly;
    # had they not, the last one would end past 5n, and the tail would hold
    # its "\n", which no proper prefix of "+OK\r\n" does.
    if len(buf) - used < 5 and OK.startswith(buf[used:]):
        return n, (), used
    p = RespReplyParser()
    p.feed(buf)
    replies, errors = 0, []
    while (r := p.take()) is not INCOMPLETE:
        replies += 1
        if isinstance(r, RespError):
            errors.append(r.kind)
    return replies, errors, p.consumed


# ---- requests -----------------------------------------------------------------

class RequestPool:
    """SET requests of one size laid end to end in one buffer, random keys
    of fixed width, so that n requests are one slice."""

    def __init__(self, value_size, keyspace, rng, count=None):
        value = bytes(rng.randrange(97, 123) for _ in range(value_size))
        prefix = b"*3\r\n$3\r\nSET\r\n$16\r\n"
        suffix = b"\r\n$%d\r\n%s\r\n" % (value_size, value)
        self.size = len(prefix) + 16 + len(suffix)
        if count is None:
            count = max(64, min(POOL_REQUESTS, POOL_BYTES // self.size))
        self.count = count
        keys = (b"key:%012d" % rng.randrange(keyspace) for _ in range(count))
        self.view = memoryview(b"".join(prefix + k + suffix for k in keys))

    def write(self, transport, cursor, n):
        """Write n requests from request number `cursor` on; returns the next cursor."""
        size, count, view = self.size, self.count, self.view
        while n:
            k = min(n, count - cursor)
            transport.write(view[cursor * size:(cursor + k) * size])
            cursor = (cursor + k) % count
            n -= k
        return cursor


class SessionRequests:
    """One connection's SETs through its session: RAFT.EXEC sid seq SET key
    value, the keys and value of a RequestPool, seq counting up from 1."""

    def __init__(self, pool, sid):
        self.pool = pool
        self.count = pool.count
        self.seq = 0
        head = b"*6\r\n$9\r\nRAFT.EXEC\r\n$%d\r\n%d\r\n" % (len(b"%d" % sid), sid)
        # The pool's requests without their "*3\r\n" header: the SET and its arguments.
        self.head, self.size = head, pool.size
        self.body = bytes(pool.view)

    def write(self, transport, cursor, n):
        size, body, head, count = self.size, self.body, self.head, self.count
        parts = []
        seq = self.seq
        for _ in range(n):
            seq += 1
            digits = b"%d" % seq
            parts.append(head + b"$%d\r\n%s\r\n" % (len(digits), digits)
                         + body[cursor * size + 4:(cursor + 1) * size])
            cursor = (cursor + 1) % count
        self.seq = seq
        transport.write(b"".join(parts))
        return cursor


class OpenLoopSchedule:
    """When each request of an open-loop run is meant to leave, and on which
    connection: request k is due at start + k/rate (nanoseconds) and goes on
    connection k mod C, so each connection carries rate/C evenly spaced."""

    def __init__(self, rate, connections, start_ns):
        if not rate > 0 or connections < 1:
            raise ValueError("an open loop needs rate > 0 and at least one connection")
        self.interval = 1e9 / rate
        self.connections = connections
        self.start = start_ns
        self.taken = 0  # requests handed out so far: k < taken

    def intended(self, k):
        return self.start + k * self.interval

    def next_due(self):
        return self.intended(self.taken)

    def take_due(self, now_ns):
        """The requests due by now_ns not handed out yet, one group per
        connection: a list of (connection, first_intended_ns, step_ns, count),
        the group's intended times being first + i * step."""
        if now_ns < self.start:
            return []
        due = int((now_ns - self.start) // self.interval) + 1
        while due > 0 and self.intended(due - 1) > now_ns:  # float rounding
            due -= 1
        while self.intended(due) <= now_ns:
            due += 1
        lo, C = self.taken, self.connections
        if due <= lo:
            return []
        self.taken = due
        step = C * self.interval
        out = []
        for k0 in range(lo, lo + min(C, due - lo)):
            out.append((k0 % C, self.intended(k0), step, (due - 1 - k0) // C + 1))
        return out


def _record_spaced(hist, now, first, step, count):
    """Record the latencies (µs) of `count` requests meant to leave at
    first + i*step (ns) and answered at `now`."""
    if step == 0:
        hist.record(max(0, now - first) // 1000, count)
        return
    record = hist.record
    for i in range(count):
        record(max(0, int(now - first - i * step)) // 1000)


# ---- one connection ----------------------------------------------------------------

class _Conn(asyncio.Protocol):
    __slots__ = ("gen", "cursor", "pending", "inflight", "outstanding", "transport",
                 "closed", "requests")

    def __init__(self, gen, cursor, requests=None):
        self.gen = gen
        self.requests = requests if requests is not None else gen.pool  # what it sends
        self.cursor = cursor             # next request in the pool
        self.pending = b""               # the start of a reply cut by a read
        self.inflight = collections.deque()  # [first_ns, step_ns, count], oldest first
        self.outstanding = 0
        self.transport = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def send(self, n, first_ns, step_ns=0):
        self.cursor = self.requests.write(self.transport, self.cursor, n)
        self.inflight.append([first_ns, step_ns, n])
        self.outstanding += n

    def data_received(self, data):
        gen = self.gen
        if self.pending:
            data = self.pending + data
        try:
            n, errors, used = scan_replies(data)
        except ValueError:
            gen.count_error("protocol")
            self.transport.abort()
            return
        self.pending = data[used:] if used < len(data) else b""
        if not n:
            return
        now = time.perf_counter_ns()
        hist, q, left = gen.latency, self.inflight, n
        while left:
            g = q[0]
            take = g[2] if g[2] <= left else left
            _record_spaced(hist, now, g[0], g[1], take)
            if take == g[2]:
                q.popleft()
            else:
                g[0] += take * g[1]
                g[2] -= take
            left -= take
        self.outstanding -= n
        for kind in errors:
            gen.count_error(kind)
        if not gen.stopping:
            gen.ops += n - len(errors)
            if gen.rate is None:
                self.send(n, now)
        elif not self.outstanding:
            self.transport.close()

    def abandon(self, now):
        """The run is over: whatever is still unanswered counts as an error,
        with the latency it has reached so far (a lower bound)."""
        if self.outstanding:
            for first, step, count in self.inflight:
                _record_spaced(self.gen.latency, now, first, step, count)
            self.gen.count_error("unanswered", self.outstanding)
            self.inflight.clear()
            self.outstanding = 0

    def connection_lost(self, exc):
        if not self.gen.stopping:
            self.gen.count_error("connection_lost")
        if self.outstanding:
            self.gen.count_error("unanswered", self.outstanding)
            self.inflight.clear()
            self.outstanding = 0
        if not self.closed.done():
            self.closed.set_result(None)


class _Generator:
    def __init__(self, clients, pipeline, rate, value_size, keyspace, seed):
        self.clients = clients
        self.pipeline = pipeline
        self.rate = rate
        self.rng = random.Random(seed)
        self.pool = RequestPool(value_size, keyspace, self.rng)
        self.latency = Histogram()
        self.lag = Histogram()
        self.errors = {}
        self.ops = 0
        self.stopping = False

    def count_error(self, kind, n=1):
        self.errors[kind] = self.errors.get(kind, 0) + n

    async def open_loop(self, conns, sched):
        """Send every request when it falls due until told to stop."""
        while not self.stopping:
            now = time.perf_counter_ns()
            for j, first, step, count in sched.take_due(now):
                conns[j].send(count, first, step)
                # The group's oldest request waited longest: one record for all.
                self.lag.record(max(0, now - first) // 1000, count)
            # At most one round per tick, each a write per connection: uvloop
            # would spin on shorter sleeps, and a round per request would cost
            # a syscall per request.  The lag this adds counts in the latency
            # (it is measured from the intended send times) and is reported.
            wait = (sched.next_due() - time.perf_counter_ns()) / 1e9
            await asyncio.sleep(max(wait, MIN_TICK))


# ---- results ---------------------------------------------------------------------

@dataclass
class Result:
    address: str
    seconds: float          # measured wall time
    clients: int
    pipeline: int
    value_size: int
    ops: int                # successful SETs answered before the deadline
    errors: dict = field(default_factory=dict)   # kind -> count
    latency: Histogram = field(default_factory=Histogram)  # microseconds, every reply
    rate: float | None = None                    # open loop: the offered ops/s
    sessions: bool = False                       # SETs sent through RAFT.EXEC
    # open loop: how late each request left, in µs (a group's oldest stands for it)
    lag: Histogram = field(default_factory=Histogram)
    client_cpu: float = 0.0  # CPU seconds the generator's process used during the run

    @property
    def throughput(self):
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def latency_ms(self):
        return self.latency.summary_ms()

    def describe_load(self):
        if self.rate is not None:
            return f"open loop {self.rate:,.0f} ops/s over {self.clients} connections"
        return f"{self.clients} clients x pipeline {self.pipeline}"

    def format(self):
        lat = self.latency_ms()
        what = "RAFT.EXEC SET" if self.sessions else "SET"
        lines = [
            f"target {self.address}: {self.describe_load()}, "
            f"{what} with {self.value_size}-byte values, {self.seconds:.1f} s",
            f"throughput {self.throughput:,.0f} ops/s ({self.ops} ok)",
            "latency ms  " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items()),
        ]
        if self.rate is not None:
            lines.append(f"send lag ms  p99 {self.lag.percentile(99) / 1000:.3f}  "
                         f"max {self.lag.max / 1000:.3f}")
        if self.seconds > 0:
            lines.append(f"load generator CPU {self.client_cpu / self.seconds:.0%} of a core")
        if self.errors:
            lines.append("errors  " + "  ".join(f"{k} {v}" for k, v in
                                                sorted(self.errors.items())))
        return "\n".join(lines)


# ---- running -----------------------------------------------------------------

async def run_async(addr, seconds, clients=50, pipeline=1, value_size=64,
                    keyspace=1_000_000, seed=None, find_leader=True, rate=None,
                    sessions=False):
    """Drive addr ("host:port", tcp://host:port or unix:///path) for
    `seconds`; closed loop, or open loop when `rate` (ops/s) is given;
    with sessions, every SET through a session of its connection's.
    Returns a Result."""
    if clients < 1 or pipeline < 1 or value_size < 0 or not seconds > 0:
        raise ValueError("clients and pipeline must be >= 1, value_size >= 0, seconds > 0")
    if rate is not None and not rate > 0:
        raise ValueError("rate must be > 0 ops/s")
    target = resp_client.address(addr)
    if find_leader:
        target = await resp_client.find_leader(target)
    loop = asyncio.get_running_loop()
    gen = _Generator(clients, pipeline, rate, value_size, keyspace, seed)
    conns, ticker = [], None
    try:
        for i in range(clients):
            cursor = (i * gen.pool.count) // clients
            requests = None
            if sessions:
                sid = await resp_client.call(target, "RAFT.SESSION", "OPEN")
                if not isinstance(sid, int):
                    raise RuntimeError(f"RAFT.SESSION OPEN answered {sid!r}")
                requests = SessionRequests(gen.pool, sid)
            _, c = await resp_client.open_client(loop, target,
                                                 lambda: _Conn(gen, cursor, requests))
            conns.append(c)
        cpu0 = time.process_time()
        t0 = time.perf_counter_ns()
        if rate is None:
            for c in conns:
                c.send(pipeline, t0)
        else:
            ticker = asyncio.create_task(
                gen.open_loop(conns, OpenLoopSchedule(rate, clients, t0)))
        await asyncio.sleep(seconds)
        gen.stopping = True
        elapsed = (time.perf_counter_ns() - t0) / 1e9
        client_cpu = time.process_time() - cpu0
        ops = gen.ops
        if ticker is not None:
            await ticker
        # Let outstanding replies arrive so that their latencies are not lost.
        for c in conns:
            if not c.outstanding and not c.transport.is_closing():
                c.transport.close()
        await asyncio.wait([c.closed for c in conns], timeout=DRAIN_TIMEOUT)
    finally:
        gen.stopping = True
        if ticker is not None and not ticker.done():
            ticker.cancel()
        now = time.perf_counter_ns()
        for c in conns:
            c.abandon(now)
            if c.transport is not None and not c.transport.is_closing():
                c.transport.abort()
    return Result(address=resp_client.show(target), seconds=elapsed, clients=clients,
                  pipeline=pipeline, value_size=value_size, ops=ops, errors=gen.errors,
                  latency=gen.latency, rate=rate, sessions=sessions, lag=gen.lag,
                  client_cpu=client_cpu)


def run(addr, seconds, clients=50, pipeline=1, value_size=64, **kwargs):
    """run_async on a fresh uvloop event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_async(addr, seconds, clients, pipeline, value_size, **kwargs))
