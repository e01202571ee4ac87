import asyncio
import math
import random
from fractions import Fraction

import pytest
import uvloop

from raftfast.loadgen import Histogram, RespError, RespReplyParser, run, run_async

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

    def __init__(self, moved_to=None):
        self.moved_to = moved_to
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
