"""RESP parser and reply encoder: raftfast._resp against its pure-Python twin
(tests/reference/resp_py.py), Redis's request syntax and error wording, and
hand-written golden replies."""
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftfast import _resp
from tests.reference import resp_py

C = types.SimpleNamespace(Parser=_resp.RespParser, encode=_resp.encode_replies,
                          SimpleString=_resp.SimpleString, ErrorReply=_resp.ErrorReply)
PY = types.SimpleNamespace(Parser=resp_py.RespParserPy, encode=resp_py.encode_replies_py,
                           SimpleString=resp_py.SimpleString, ErrorReply=resp_py.ErrorReply)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(params=[C, PY], ids=["c", "py"])
def impl(request):
    return request.param


def multibulk(args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def feed_split(parser, data, cuts):
    """Feed data cut at the given offsets, parsing after every read as a
    server would; returns all requests and the parser's error."""
    out = []
    prev = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        parser.feed(data[prev:cut])
        out.extend(parser.parse())
        prev = cut
    return out, parser.error


def parse_all(impl, data, **limits):
    p = impl.Parser(**limits)
    p.feed(data)
    return p.parse(), p.error


# ---- multibulk -------------------------------------------------------------

commands = st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=6), max_size=20)


@SETTINGS
@given(commands, st.data())
def test_multibulk_split_anywhere_c_and_twin_agree(cmds, data):
    wire = b"".join(multibulk(c) for c in cmds)
    cut = st.lists(st.integers(0, len(wire)), max_size=12)
    got_c = feed_split(C.Parser(), wire, data.draw(cut))
    got_py = feed_split(PY.Parser(), wire, data.draw(cut))
    assert got_c == (cmds, None)
    assert got_py == (cmds, None)


def test_pipeline_returns_whole_batch_in_one_parse(impl):
    wire = multibulk([b"SET", b"a", b"1"]) + multibulk([b"GET", b"a"]) + b"PING\r\n"
    assert parse_all(impl, wire) == ([[b"SET", b"a", b"1"], [b"GET", b"a"], [b"PING"]], None)


def test_partial_request_waits_for_the_rest(impl):
    p = impl.Parser()
    wire = multibulk([b"SET", b"key", b"value"])
    p.feed(wire[:-3])
    assert p.parse() == []
    p.feed(wire[-3:])
    assert p.parse() == [[b"SET", b"key", b"value"]]
    assert p.parse() == []


def test_large_bulk_across_many_chunks(impl):
    value = bytes(range(256)) * 400
    wire = multibulk([b"SET", b"k", value]) + multibulk([b"GET", b"k"])
    got = feed_split(impl.Parser(), wire, range(0, len(wire), 997))
    assert got == ([[b"SET", b"k", value], [b"GET", b"k"]], None)


def test_byte_by_byte_feed(impl):
    wire = b'SET k "v v"\r\n' + multibulk([b"GET", b"k"]) + b"PING\n"
    got = feed_split(impl.Parser(), wire, range(len(wire)))
    assert got == ([[b"SET", b"k", b"v v"], [b"GET", b"k"], [b"PING"]], None)


def test_empty_and_negative_multibulk_are_skipped(impl):
    assert parse_all(impl, b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n") == ([[b"PING"]], None)


def test_empty_argument(impl):
    assert parse_all(impl, b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n") == ([[b"ECHO", b""]], None)


def test_feed_accepts_bytearray_and_memoryview(impl):
    p = impl.Parser()
    p.feed(bytearray(b"*1\r\n$4\r\nPI"))
    p.feed(memoryview(b"NG\r\n"))
    assert p.parse() == [[b"PING"]]


# ---- inline ----------------------------------------------------------------

INLINE = [
    (b"SET k v\r\n", [[b"SET", b"k", b"v"]]),
    (b"SET  \t k \t v\n", [[b"SET", b"k", b"v"]]),
    (b"\r\n\n   \r\n\t\nPING\r\n", [[b"PING"]]),
    (b'SET k "hello world"\r\n', [[b"SET", b"k", b"hello world"]]),
    (b'SET k ""\r\n', [[b"SET", b"k", b""]]),
    (b'ECHO "a\\nb\\r\\t\\b\\a\\"q\\\\z"\r\n', [[b"ECHO", b'a\nb\r\t\b\x07"q\\z']]),
    (b'ECHO "\\x41\\x4a\\x4A\\x00\\xff"\r\n', [[b"ECHO", b"AJJ\x00\xff"]]),
    (b'ECHO "\\xZZ\\x4"\r\n', [[b"ECHO", b"xZZx4"]]),
    (b"ECHO 'it\\'s'\r\n", [[b"ECHO", b"it's"]]),
    (b"ECHO 'no \\n escape \"here\"'\r\n", [[b"ECHO", b'no \\n escape "here"']]),
    (b'ECHO ab"c d"\r\n', [[b"ECHO", b"abc d"]]),
    (b"ECHO x\\ny\r\n", [[b"ECHO", b"x\\ny"]]),
    (b"ECHO a\vb\r\n", [[b"ECHO", b"a\vb"]]),
    (b"ECHO a\r\r\n", [[b"ECHO", b"a"]]),
    (b'SET k "v"\tGET k\n', [[b"SET", b"k", b"v", b"GET", b"k"]]),
    (b"SET a 1\nSET b 2\r\n", [[b"SET", b"a", b"1"], [b"SET", b"b", b"2"]]),
]


@pytest.mark.parametrize("wire,expected", INLINE)
def test_inline(impl, wire, expected):
    assert parse_all(impl, wire) == (expected, None)


def test_inline_without_newline_waits(impl):
    p = impl.Parser()
    p.feed(b"GET k")
    assert p.parse() == []
    p.feed(b"\r\n")
    assert p.parse() == [[b"GET", b"k"]]


# ---- errors ----------------------------------------------------------------

GOOD = multibulk([b"SET", b"a", b"1"]) + b"GET a\r\n"
GOOD_CMDS = [[b"SET", b"a", b"1"], [b"GET", b"a"]]
BIG = 64 * 1024

ERRORS = [
    (b"*abc\r\n", {}, "invalid multibulk length"),
    (b"*-0\r\n", {}, "invalid multibulk length"),
    (b"*+1\r\n", {}, "invalid multibulk length"),
    (b"*01\r\n", {}, "invalid multibulk length"),
    (b"*1\r$4\r\n", {}, "invalid multibulk length"),
    (b"*1048577\r\n", {}, "invalid multibulk length"),
    (b"*4\r\n", {"max_multibulk_len": 3}, "invalid multibulk length"),
    (b"*1\r\n$-1\r\n", {}, "invalid bulk length"),
    (b"*1\r\n$x\r\n", {}, "invalid bulk length"),
    (b"*1\r\n$ 1\r\n", {}, "invalid bulk length"),
    (b"*1\r\n$536870913\r\n", {}, "invalid bulk length"),
    (b"*1\r\n$99999999999999999999999\r\n", {}, "invalid bulk length"),
    (b"*1\r\n$5\r\n", {"max_bulk_len": 4}, "invalid bulk length"),
    (b"*1\r\n$3\r\nabcd\r\n", {}, "invalid bulk length"),
    (b"*2\r\n$1\r\na\r\nX\r\n", {}, "expected '$', got 'X'"),
    (b"*1\r\n:1\r\n", {}, "expected '$', got ':'"),
    (b"a" * (BIG + 1), {}, "too big inline request"),
    (b"a" * 11 + b"\r\n", {"max_inline_len": 10}, "too big inline request"),
    (b"*" + b"1" * BIG, {}, "too big mbulk count string"),
    (b"*1\r\n$" + b"1" * BIG, {}, "too big bulk count string"),
    (b'SET k "abc\r\n', {}, "unbalanced quotes in request"),
    (b"SET k 'abc\r\n", {}, "unbalanced quotes in request"),
    (b'SET k "a"b\r\n', {}, "unbalanced quotes in request"),
    (b"SET k 'a'b\r\n", {}, "unbalanced quotes in request"),
    (b'SET k "a\\\r\n', {}, "unbalanced quotes in request"),
]


@pytest.mark.parametrize("bad,limits,message", ERRORS)
def test_protocol_errors_keep_earlier_requests(impl, bad, limits, message):
    p = impl.Parser(**limits)
    p.feed(GOOD + bad + GOOD)
    assert p.parse() == GOOD_CMDS
    assert p.error == "Protocol error: " + message
    # Once the stream is broken nothing more is accepted.
    p.feed(GOOD)
    assert p.parse() == []
    assert p.error == "Protocol error: " + message


@pytest.mark.parametrize("bad,limits,message", ERRORS)
def test_protocol_errors_do_not_depend_on_read_boundaries(bad, limits, message):
    for impl in (C, PY):
        wire = GOOD + bad
        got = feed_split(impl.Parser(**limits), wire, range(0, len(wire), 7))
        assert got == (GOOD_CMDS, "Protocol error: " + message)


def test_line_just_within_inline_limit_is_accepted(impl):
    assert parse_all(impl, b"a" * 9 + b"\r\n", max_inline_len=10) == ([[b"a" * 9]], None)
    assert parse_all(impl, b"a" * 10, max_inline_len=10) == ([], None)


def test_bulk_at_max_len_is_accepted(impl):
    assert parse_all(impl, b"*1\r\n$4\r\nabcd\r\n", max_bulk_len=4) == ([[b"abcd"]], None)


GARBAGE_TOKENS = [b"*", b"$", b"\r\n", b"\r", b"\n", b"0", b"1", b"2", b"-1", b"3\r\n", b'"', b"'",
                  b"\\", b"\\x4", b"1", b" ", b"\t", b"a", b"SET", b"\x00", b"\xff", b"*1\r\n$1\r\n"]


@st.composite
def mutated_requests(draw):
    """Well-formed requests with a few bytes replaced, inserted or removed,
    to reach the deeper parser states that random bytes rarely do."""
    wire = bytearray(b"".join(multibulk(c) if draw(st.booleans()) else b" ".join(c) + b"\r\n"
                              for c in draw(st.lists(st.lists(st.sampled_from(
                                  [b"SET", b"k", b"", b"v a", b"12"]), min_size=1, max_size=3),
                                  min_size=1, max_size=5))))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(wire)))
        wire[at:at + draw(st.integers(0, 2))] = draw(st.sampled_from(GARBAGE_TOKENS))
    return bytes(wire)


garbage = (st.lists(st.sampled_from(GARBAGE_TOKENS) | st.binary(max_size=8), max_size=40).map(b"".join)
           | mutated_requests())
small_limits = st.fixed_dictionaries({}, optional={
    "max_inline_len": st.integers(1, 30), "max_bulk_len": st.integers(0, 6),
    "max_multibulk_len": st.integers(0, 4)})


@SETTINGS
@given(garbage, small_limits, st.data())
def test_garbage_never_crashes_and_c_matches_twin(wire, limits, data):
    cut = st.lists(st.integers(0, len(wire)), max_size=8)
    got_c = feed_split(C.Parser(**limits), wire, data.draw(cut))
    got_py = feed_split(PY.Parser(**limits), wire, data.draw(cut))
    assert got_c == got_py
    # The same stream read in one piece gives the same outcome.
    assert parse_all(C, wire, **limits) == got_c


# ---- replies ---------------------------------------------------------------

class _Simple(str):
    pass


class _Error(str):
    pass


def as_impl(value, impl):
    """The neutral value tree with its marker strings turned into impl's
    SimpleString / ErrorReply classes."""
    if isinstance(value, _Simple):
        return impl.SimpleString(value)
    if isinstance(value, _Error):
        return impl.ErrorReply(value)
    if isinstance(value, list):
        return [as_impl(v, impl) for v in value]
    if isinstance(value, tuple):
        return tuple(as_impl(v, impl) for v in value)
    if isinstance(value, dict):
        return {as_impl(k, impl): as_impl(v, impl) for k, v in value.items()}
    return value


scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**63, 2**63 - 1)
           | st.floats() | st.binary(max_size=20) | st.text(max_size=10)
           | st.text(max_size=10).map(_Simple) | st.text(max_size=10).map(_Error))
keys = st.binary(max_size=6) | st.text(max_size=6) | st.integers(-5, 5)
replies = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.lists(inner, max_size=3).map(tuple)
                       | st.dictionaries(keys, inner, max_size=3), max_leaves=25)


@SETTINGS
@given(st.lists(replies, max_size=5), st.booleans())
def test_encode_c_matches_twin(values, resp3):
    wire = C.encode(as_impl(values, C), resp3)
    assert wire == PY.encode(as_impl(values, PY), resp3)
    assert wire == b"".join(_resp.encode_reply(v, resp3) for v in as_impl(values, C))


def test_golden_resp2(impl):
    values = [impl.SimpleString("OK"), b"v", "\u00e9", None, 42, -7, [b"a", None, []],
              impl.ErrorReply("ERR unknown command 'foo'"), True, False, 1.5,
              {b"k": 1}, 2**64, (b"x",)]
    assert impl.encode(values, False) == (
        b"+OK\r\n$1\r\nv\r\n$2\r\n\xc3\xa9\r\n$-1\r\n:42\r\n:-7\r\n"
        b"*3\r\n$1\r\na\r\n$-1\r\n*0\r\n-ERR unknown command 'foo'\r\n:1\r\n:0\r\n"
        b"$3\r\n1.5\r\n*2\r\n$1\r\nk\r\n:1\r\n$20\r\n18446744073709551616\r\n*1\r\n$1\r\nx\r\n")


def test_golden_resp3(impl):
    values = [None, True, False, 1.5, float("inf"), float("-inf"), {b"k": [1, None]},
              2**64, -2**63, impl.ErrorReply("MOVED 0 127.0.0.1:7001")]
    assert impl.encode(values, True) == (
        b"_\r\n#t\r\n#f\r\n,1.5\r\n,inf\r\n,-inf\r\n%1\r\n$1\r\nk\r\n*2\r\n:1\r\n_\r\n"
        b"(18446744073709551616\r\n:-9223372036854775808\r\n-MOVED 0 127.0.0.1:7001\r\n")


def test_line_breaks_cannot_escape_status_or_error(impl):
    values = [impl.SimpleString("a\r\nb"), impl.ErrorReply("ERR x\ny\rz")]
    assert impl.encode(values, False) == b"+a  b\r\n-ERR x y z\r\n"


def test_module_constants():
    assert _resp.OK == "OK" and type(_resp.OK) is _resp.SimpleString
    assert _resp.PONG == "PONG" and type(_resp.PONG) is _resp.SimpleString
    assert _resp.encode_reply(_resp.OK, False) == b"+OK\r\n"
    assert _resp.encode_reply(_resp.PONG, True) == b"+PONG\r\n"


def test_unencodable_values_raise(impl):
    with pytest.raises(TypeError):
        impl.encode([object()], False)
    nested = []
    for _ in range(100):
        nested = [nested]
    with pytest.raises(ValueError):
        impl.encode([nested], True)
