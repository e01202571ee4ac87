import asyncio
import math
import random
from fractions import Fraction

import pytest
import uvloop

from raftfast.bench.loadgen import (Histogram, OpenLoopSchedule, RequestPool, run, run_async,
                                    scan_replies)
from raftfast.resp_client import RespError, RespReplyParser

PERCENTILES = [1, 25, 50, 90, 99, 99.9, 99.99, 100]


def exact_percentile(sorted_values, p):
    rank = max(1, math.ceil(Fraction(str(p)) * len(sorted_values) / 100))
    return sorted_values[rank - 1]


def samples(kind, n, rng):
    if kind == "uniform":
        return [rng.randrange(0, 10_000_000) for _ in range(n)]
    if kind == "lognormal":  # latency-like: a body near 1 ms and a long tail
        return [int(rng.lognormvariate(7, 1.2)) for _ in range(n)]
    if kind == "small":      # below 128: counted exactly
        return [rng.randrange(0, 128) for _ in range(n)]
    return [rng.choice([5, 5000, 5_000_000]) for _ in range(n)]


@pytest.mark.parametrize("kind", ["uniform", "lognormal", "small", "spikes"])
@pytest.mark.parametrize("seed", range(5))
def test_percentiles_within_bucket_error(kind, seed):
    rng = random.Random(seed)
    values = samples(kind, 20_000, rng)
    h = Histogram()
    for v in values:
        h.record(v)
    values.sort()
    for p in PERCENTILES:
        exact = exact_percentile(values, p)
        got = h.percentile(p)
        # Midpoint of a bucket at most 1/128 of its values wide.
        assert abs(got - exact) <= exact / 256 + 0.5, (p, got, exact)
    assert h.total == len(values)
    assert h.min == values[0] and h.max == values[-1]
    assert h.mean == pytest.approx(sum(values) / len(values))


def test_small_values_are_exact():
    h = Histogram()
    for v in [3, 1, 2, 2, 100]:
        h.record(v)
    assert [h.percentile(p) for p in (20, 40, 60, 80, 100)] == [1, 2, 2, 3, 100]


def test_buckets_tile_the_integers():
    prev_hi = 0
    for i in range(2000):
        lo, hi = Histogram.bucket_range(i)
        assert lo == prev_hi and hi > lo
        assert Histogram.bucket_of(lo) == i and Histogram.bucket_of(hi - 1) == i
        assert (hi - lo) <= max(1, lo / 128)
        prev_hi = hi


def test_merge_equals_recording_everything():
    rng = random.Random(9)
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(5000):
        v = int(rng.expovariate(1 / 2000)) * (1000 if i % 97 == 0 else 1)
        (a if i % 2 else b).record(v)
        both.record(v)
    a.merge(b)
    assert [a.percentile(p) for p in PERCENTILES] == [both.percentile(p) for p in PERCENTILES]
    assert (a.total, a.min, a.max, a.sum) == (both.total, both.min, both.max, both.sum)


def test_empty_histogram_and_bad_value():
    h = Histogram()
    assert h.percentile(50) == 0 and h.mean == 0.0
    with pytest.raises(ValueError):
        h.record(-1)


def test_reply_parser_handles_split_input():
    wire = (b"+OK\r\n-MOVED 0 127.0.0.1:7002\r\n:42\r\n$5\r\nhello\r\n$-1\r\n"
            b"*2\r\n$1\r\na\r\n:7\r\n")
    expected = ["OK", RespError("MOVED 0 127.0.0.1:7002"), 42, b"hello", None, [b"a", 7]]
    for cut in range(len(wire) + 1):
        p = RespReplyParser()
        got = []
        for part in (wire[:cut], wire[cut:]):
            p.feed(part)
            while (r := p.take()) is not RespReplyParser.INCOMPLETE:
                got.append(r)
        assert got == expected
    assert RespError("MOVED 0 h:1").kind == "MOVED"


class FakeRedis(asyncio.Protocol):
    """Answers every SET with +OK, or with MOVED when `moved_to` is set, and
    every 10th SET with -TIMEOUT.  Requests are RESP arrays, which the reply
    parser reads as well."""

    def __init__(self, moved_to=None, notleader=None):
        self.moved_to = moved_to
        self.notleader = notleader
        self.parser = RespReplyParser()
        self.n = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed(data)
        out = []
        while (req := self.parser.take()) is not RespReplyParser.INCOMPLETE:
            assert req[0] == b"SET" and len(req) == 3
            self.n += 1
            if self.moved_to:
                out.append(b"-MOVED 0 %s\r\n" % self.moved_to.encode())
            elif self.notleader:
                out.append(b"-NOTLEADER %s\r\n" % self.notleader.encode())
            elif self.n % 10 == 0:
                out.append(b"-TIMEOUT outcome unknown\r\n")
            else:
                out.append(b"+OK\r\n")
        self.transport.writelines(out)


def test_run_against_fake_server_follows_moved():
    async def main():
        loop = asyncio.get_running_loop()
        leader = await loop.create_server(FakeRedis, "127.0.0.1", 0)
        lport = leader.sockets[0].getsockname()[1]
        follower = await loop.create_server(
            lambda: FakeRedis(moved_to=f"127.0.0.1:{lport}"), "127.0.0.1", 0)
        fport = follower.sockets[0].getsockname()[1]
        try:
            return await run_async(f"tcp://127.0.0.1:{fport}", seconds=0.3, clients=4,
                                   pipeline=3, value_size=16, seed=1), lport
        finally:
            for s in (leader, follower):
                s.close()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        res, lport = r.run(main())
    assert res.address == f"127.0.0.1:{lport}"
    assert res.ops > 0
    assert set(res.errors) == {"TIMEOUT"}
    assert res.latency.total >= res.ops + res.errors["TIMEOUT"]
    text = res.format()
    assert "throughput" in text and "p99.9" in text and "TIMEOUT" in text


def test_run_rejects_bad_parameters():
    with pytest.raises(ValueError):
        run("127.0.0.1:1", seconds=1, clients=0)


# ---- counting replies in bulk ------------------------------------------------------

def test_scan_counts_ok_replies_in_bulk_and_keeps_a_cut_reply():
    assert scan_replies(b"+OK\r\n" * 1000) == (1000, (), 5000)
    for cut in range(1, 5):
        n, errors, used = scan_replies(b"+OK\r\n" * 7 + b"+OK\r\n"[:cut])
        assert (n, list(errors), used) == (7, [], 35)
    assert scan_replies(b"") == (0, (), 0)


def test_scan_matches_the_parser_at_every_cut():
    wire = (b"+OK\r\n" * 3 + b"-MOVED 0 127.0.0.1:7002\r\n+OK\r\n-ERR x +OK\r\n"
            b":5\r\n$3\r\n+OK\r\n*2\r\n+OK\r\n-TIMEOUT outcome unknown\r\n+OK\r\n")
    kinds = ["MOVED", "ERR"]  # an error inside an array is part of that reply
    for cut in range(len(wire) + 1):
        total, errs, pending = 0, [], b""
        for part in (wire[:cut], wire[cut:]):
            buf = pending + part
            n, e, used = scan_replies(buf)
            total, pending = total + n, buf[used:]
            errs += list(e)
        assert (total, errs, pending) == (10, kinds, b""), cut
    with pytest.raises(ValueError):
        scan_replies(b"+OK\r\n!garbage\r\n")


def test_request_pool_writes_whole_requests_and_wraps():
    class Sink:
        def __init__(self):
            self.data = bytearray()

        def write(self, b):
            self.data += b
    pool = RequestPool(10, 1000, random.Random(1), count=5)
    sink = Sink()
    cursor = pool.write(sink, 3, 12)
    assert cursor == 0 and len(sink.data) == 12 * pool.size
    p = RespReplyParser()
    p.feed(bytes(sink.data))
    reqs = []
    while (r := p.take()) is not RespReplyParser.INCOMPLETE:
        reqs.append(r)
    assert len(reqs) == 12 and all(r[0] == b"SET" and len(r[2]) == 10 for r in reqs)
    assert reqs[0] == reqs[5] and reqs[2] == reqs[7]  # request 3, then 4, 0, 1, ... again


# ---- open loop -------------------------------------------------------------------------

def test_open_loop_schedule_with_a_fake_clock():
    """1000 ops/s over 3 connections from t=1 s: request k is due at
    1 s + k ms on connection k mod 3, each handed out exactly once."""
    start = 1_000_000_000
    s = OpenLoopSchedule(1000, 3, start)
    assert s.take_due(start - 1) == [] and s.next_due() == start
    assert s.take_due(start) == [(0, start, 3_000_000, 1)]
    assert s.take_due(start + 999_999) == []
    assert s.next_due() == start + 1_000_000
    # A late wake-up (the loop was busy) gets everything due since, grouped per connection.
    got = s.take_due(start + 7_500_000)
    assert got == [(1, start + 1_000_000, 3_000_000, 3),   # k = 1, 4, 7
                   (2, start + 2_000_000, 3_000_000, 2),   # k = 2, 5
                   (0, start + 3_000_000, 3_000_000, 2)]   # k = 3, 6
    sent = set(range(8))
    clock = start + 7_500_000
    for _ in range(500):   # random tick lengths: every k once, in order, on its connection
        clock += random.Random(clock).randrange(0, 5_000_000)
        for conn, first, step, count in s.take_due(clock):
            for i in range(count):
                t = first + i * step
                k = round((t - start) / 1_000_000)
                assert t == pytest.approx(start + k * 1_000_000) and t <= clock
                assert k % 3 == conn and k not in sent
                sent.add(k)
    assert sent == set(range(s.taken)) and s.next_due() > clock


def test_open_loop_schedule_rejects_nonsense():
    with pytest.raises(ValueError):
        OpenLoopSchedule(0, 3, 0)
    with pytest.raises(ValueError):
        OpenLoopSchedule(10, 0, 0)


class StallingRedis(asyncio.Protocol):
    """+OK to every SET, except that for `stall` seconds after the first
    request nothing is answered (the replies are held back, then sent)."""

    stall = 0.3
    start = None

    def connection_made(self, transport):
        self.transport = transport
        self.held = []

    def data_received(self, data):
        loop = asyncio.get_running_loop()
        n = data.count(b"*3\r\n")
        if n == 0:
            return
        cls = type(self)
        if cls.start is None:
            cls.start = loop.time()
        until = cls.start + self.stall
        if loop.time() < until:
            if not self.held:
                loop.call_at(until, self.release)
            self.held.append(b"+OK\r\n" * n)
        else:
            self.transport.write(b"+OK\r\n" * n)

    def release(self):
        self.transport.write(b"".join(self.held))
        self.held = []


def drive_stalling(**kw):
    server_cls = type("S", (StallingRedis,), {"start": None})

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(server_cls, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await run_async(f"127.0.0.1:{port}", seconds=1.0, value_size=8,
                                   find_leader=False, **kw)
        finally:
            server.close()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        return r.run(main())


def test_open_loop_latency_counts_the_stall_for_every_request_behind_it():
    """No coordinated omission: a 300 ms stall in a 1 s open-loop run at
    1000/s delays ~300 requests by 0-300 ms, so p90 is well over 100 ms; a
    closed loop of 4 connections sees the stall in only 4 requests."""
    open_ = drive_stalling(clients=4, rate=1000)
    assert open_.rate == 1000 and 900 <= open_.latency.total <= 1100
    assert open_.latency.percentile(90) >= 100_000
    assert 500 <= open_.throughput <= 1100 and not open_.errors
    assert "open loop 1,000 ops/s over 4 connections" in open_.format()
    assert "send lag" in open_.format()
    closed = drive_stalling(clients=4, pipeline=1)
    assert closed.latency.percentile(90) < 100_000 <= closed.latency.max


def test_unanswered_requests_are_counted_with_their_latency_so_far(monkeypatch):
    monkeypatch.setattr("raftfast.bench.loadgen.DRAIN_TIMEOUT", 0.2)

    class Silent(asyncio.Protocol):
        def data_received(self, data):
            pass

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await run_async(f"127.0.0.1:{port}", seconds=0.3, clients=2, rate=100,
                                   find_leader=False)
        finally:
            server.close()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        res = r.run(main())
    assert res.ops == 0 and 25 <= res.errors["unanswered"] <= 35
    assert res.latency.total == res.errors["unanswered"]
    assert res.latency.max >= 200_000  # the oldest waited the run plus the drain


def test_follows_notleader_to_a_unix_socket(tmp_path):
    path = str(tmp_path / "leader.sock")

    async def main():
        loop = asyncio.get_running_loop()
        leader = await loop.create_unix_server(FakeRedis, path)
        follower = await loop.create_server(
            lambda: FakeRedis(moved_to=None, notleader=f"unix://{path}"), "127.0.0.1", 0)
        fport = follower.sockets[0].getsockname()[1]
        try:
            return await run_async(f"tcp://127.0.0.1:{fport}", seconds=0.2, clients=2,
                                   pipeline=2, value_size=8)
        finally:
            leader.close()
            follower.close()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        res = r.run(main())
    assert res.address == f"unix://{path}" and res.ops > 0
