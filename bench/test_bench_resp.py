"""The client front door: raftfast._resp.RespParser on pipelined SET
commands and encode_replies on a batch of +OK replies, against the
pure-Python twin tests/reference/resp_py.py (py).

A SET here is what redis-benchmark -t set -d 64 sends: a multibulk of
SET, a 16-byte key and a 64-byte value (107 bytes on the wire).
commands/s = commands / mean; MB/s = input (or output) bytes / mean.
"""
import pytest

from benchutil import VALUE_SIZE, report
from raftfast import _resp
from tests.reference import resp_py

PIPELINES = [16, 1024]
REPLIES = 1024

PARSERS = {"c": _resp.RespParser, "py": resp_py.RespParserPy}
ENCODERS = {"c": (_resp.encode_replies, _resp.OK),
            "py": (resp_py.encode_replies_py, resp_py.OK)}


def multibulk(args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def set_pipeline(n):
    value = b"v" * VALUE_SIZE
    return b"".join(multibulk([b"SET", b"key:%012d" % i, value]) for i in range(n))


def _parse(parser, data):
    parser.feed(data)
    return parser.parse()


@pytest.mark.parametrize("impl,n", [pytest.param(impl, n, id=f"{impl}-{n}")
                                    for n in PIPELINES for impl in PARSERS])
def test_resp_parse(benchmark, impl, n):
    """One read holding a pipeline of n SETs, parsed into n argument lists
    by a parser reused across reads (a connection's steady state)."""
    data = set_pipeline(n)
    parser = PARSERS[impl]()
    reqs = _parse(parser, data)
    assert len(reqs) == n and reqs[-1][0] == b"SET" and len(reqs[-1][2]) == VALUE_SIZE
    benchmark.group = f"resp parse pipeline of {n} SET"
    benchmark(_parse, parser, data)
    assert parser.error is None
    report(benchmark, items=n, unit="commands", nbytes=len(data), impl=impl,
           value_bytes=VALUE_SIZE)


@pytest.mark.parametrize("impl", list(ENCODERS))
def test_resp_encode_replies(benchmark, impl):
    """One write buffer holding REPLIES +OK replies (RESP2)."""
    encode, ok = ENCODERS[impl]
    values = [ok] * REPLIES
    out = encode(values, False)
    assert out == b"+OK\r\n" * REPLIES
    benchmark.group = f"resp encode {REPLIES} OK replies"
    benchmark(encode, values, False)
    report(benchmark, items=REPLIES, unit="replies", nbytes=len(out), impl=impl)
