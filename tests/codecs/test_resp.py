"""RESP parser and reply encoder: raftfast._resp against its pure-Python twin
(tests/reference/resp_py.py), Redis's request syntax and error wording, and
hand-written golden replies."""
import struct
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


# ---- parse_kv: the KV fast path ---------------------------------------------

from raftfast._kv import encode_commands  # noqa: E402
from tests.reference import kv_py  # noqa: E402

KV_NAMES = sorted(kv_py.OPCODES)


def entries(block, append_limit):
    """(opcode with its RESP3 bit, args) per entry of a block; checks the
    entry header on the way, and that an APPEND carries append_limit as its
    third argument (left out of args: the client did not send it)."""
    out, off = [], 0
    while off < len(block):
        dlen, term, etype = struct.unpack_from("<IQB", block, off)
        assert (term, etype) == (0, 0)
        op, argc = struct.unpack_from("<BI", block, off + 13)
        p, args = off + 18, []
        for _ in range(argc):
            (n,) = struct.unpack_from("<I", block, p)
            args.append(bytes(block[p + 4:p + 4 + n]))
            p += 4 + n
        assert p == off + 13 + dlen
        if op & 0x7F in kv_py.LIMITED:
            assert args.pop() == struct.pack("<Q", append_limit)
        out.append((op, args))
        off = p
    return out


def mixed_case(name, draw):
    return bytes(c ^ 0x20 if 97 <= c <= 122 and draw(st.booleans()) else c for c in name)


def inline_safe(arg):
    """Whether an argument reads back unchanged from an inline request."""
    return arg and not any(c in arg for c in b" \t\n\r\v\f\"'\\")


@st.composite
def kv_pipelines(draw):
    """A client stream: KV commands (right and wrong arity, any case, SET
    with options), other commands (PING, HELLO 2/3, ECHO, unknown), blank
    and empty requests, multibulk or inline, with some garbage."""
    parts = []
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["kv", "kv", "kv", "kv", "set_ex", "other", "hello",
                                     "blank", "garbage"]))
        if kind == "garbage":
            if draw(st.integers(0, 3)) == 0:
                parts.append(draw(st.sampled_from(GARBAGE_TOKENS) | st.binary(max_size=4)))
            continue
        if kind == "blank":
            parts.append(draw(st.sampled_from([b"\r\n", b"\n", b"*0\r\n", b"*-1\r\n"])))
            continue
        if kind == "kv":
            name = draw(st.sampled_from(KV_NAMES))
            lo, hi = kv_py.ARITY[kv_py.OPCODES[name]]
            size = (draw(st.integers(lo, max(lo, hi or 4))) if draw(st.integers(0, 3))
                    else draw(st.integers(0, 4)))   # mostly the right arity
            args = [draw(st.sampled_from([b"k", b"v", b"", b"10"]) | st.binary(max_size=12))
                    for _ in range(size)]
        elif kind == "set_ex":
            name, args = b"set", [b"k", b"v", b"EX", b"10"]
        elif kind == "hello":
            name, args = b"hello", [draw(st.sampled_from([b"2", b"3"]))]
        else:
            name = draw(st.sampled_from([b"ping", b"echo", b"foo", b"getx", b"ge", b"sets"]))
            args = draw(st.lists(st.binary(max_size=5), max_size=2))
        req = [mixed_case(name, draw)] + args
        if all(map(inline_safe, req)) and draw(st.booleans()):
            parts.append(b" ".join(req) + draw(st.sampled_from([b"\r\n", b"\n"])))
        else:
            parts.append(multibulk(req))
    return b"".join(parts)


kv_limits = st.fixed_dictionaries({}, optional={
    "max_entries": st.integers(1, 3), "max_bytes": st.integers(0, 80),
    "max_command_bytes": st.integers(0, 40)})


def normalize(req, max_command_bytes):
    """What parse_kv makes of a request parse() returned."""
    op = kv_py.fast_opcode(req, max_command_bytes)
    return ("req", req) if op is None else ("kv", op, req[1:])


def drive_kv(parser, wire, cuts, limits, plain_calls, split_reads=False):
    """Feed wire cut at `cuts`, after each read calling parse_kv until it
    waits for data (or parse() when plain_calls says so), as a server would:
    HELLO switches the protocol the following entries carry.  Returns every
    call's outcome and the stream as normalized requests, each entry tagged
    with the protocol it was encoded for.  split_reads: as the server does,
    reads and writes are taken by separate calls, switching kind whenever a
    call stops at the other kind."""
    calls, stream, resp3, prev, i = [], [], False, 0, 0
    kind = {"reads": False} if split_reads else {}
    max_cmd = limits.get("max_command_bytes", 32 << 20)
    for cut in sorted(set(cuts)) + [len(wire)]:
        parser.feed(wire[prev:cut])
        prev = cut
        while True:
            i += 1
            if plain_calls and i % plain_calls == 0:
                reqs = parser.parse()
                calls.append(("parse", reqs, parser.error))
                for req in reqs:
                    stream.append(normalize(req, max_cmd))
                    if req[0].lower() == b"hello" and req[1:] in ([b"2"], [b"3"]):
                        resp3 = req[1] == b"3"
                break
            out = bytearray(b"prefix")
            n, stop = parser.parse_kv(out, resp3, **limits, **kind)
            assert out[:6] == b"prefix"
            calls.append((n, bytes(out), stop, parser.stopped_at_limit, parser.stopped_at_kind,
                          parser.error))
            got = entries(out[6:], parser.max_bulk_len)
            assert len(got) == n
            # The block is what encode_commands makes of the same commands.
            assert bytes(out[6:]) == encode_commands([(op & 0x7F, args) for op, args in got],
                                                     resp3, parser.max_bulk_len)
            stream.extend(("kv", op & 0x7F, args) for op, args in got)
            assert all(op & 0x80 == (0x80 if resp3 else 0) for op, _ in got)
            if split_reads:
                assert all(((op & 0x7F) in kv_py.READ_OPCODES) == kind["reads"] for op, _ in got)
            if parser.stopped_at_kind:
                assert stop is None and not parser.stopped_at_limit
                kind["reads"] = not kind["reads"]
                continue
            if stop is not None:
                stream.append(("req", stop))
                if stop[0].lower() == b"hello" and stop[1:] in ([b"2"], [b"3"]):
                    resp3 = stop[1] == b"3"
            elif not parser.stopped_at_limit:
                break
    return calls, stream, parser.error


@SETTINGS
@given(kv_pipelines(), kv_limits, small_limits, st.sampled_from([0, 0, 2, 3]), st.booleans(),
       st.data())
def test_parse_kv_c_matches_twin_and_parse(wire, limits, parser_limits, plain_calls, split_reads,
                                           data):
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=6))
    got_c = drive_kv(C.Parser(**parser_limits), wire, cuts, limits, plain_calls, split_reads)
    got_py = drive_kv(PY.Parser(**parser_limits), wire, cuts, limits, plain_calls, split_reads)
    assert got_c == got_py
    # The same requests as parse() finds in the stream read in one piece.
    reqs, error = parse_all(PY, wire, **parser_limits)
    max_cmd = limits.get("max_command_bytes", 32 << 20)
    assert got_c[1:] == ([normalize(r, max_cmd) for r in reqs], error)
    # Cut somewhere else, the stream gives the same requests.
    other = drive_kv(C.Parser(**parser_limits), wire,
                     data.draw(st.lists(st.integers(0, len(wire)), max_size=8)), limits, 0)
    assert other[1:] == got_c[1:]


@SETTINGS
@given(garbage, small_limits, st.data())
def test_parse_kv_on_garbage_c_matches_twin(wire, parser_limits, data):
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
    got_c = drive_kv(C.Parser(**parser_limits), wire, cuts, {}, 0)
    assert got_c == drive_kv(PY.Parser(**parser_limits), wire, cuts, {}, 0)
    reqs, error = parse_all(PY, wire, **parser_limits)
    assert got_c[1:] == ([normalize(r, 32 << 20) for r in reqs], error)


def test_parse_kv_pipeline(impl):
    p = impl.Parser()
    p.feed(multibulk([b"SET", b"a", b"1"]) + multibulk([b"gEt", b"a"]) + b"incr n\r\n"
           + multibulk([b"MGET", b"a", b"b"]) + multibulk([b"PING"]) + multibulk([b"DEL", b"a"]))
    out = bytearray()
    assert p.parse_kv(out, False) == (4, [b"PING"])
    assert out == encode_commands([(kv_py.OP_SET, [b"a", b"1"]), (kv_py.OP_GET, [b"a"]),
                                   (kv_py.OP_INCR, [b"n"]), (kv_py.OP_MGET, [b"a", b"b"])])
    out = bytearray()
    assert p.parse_kv(out, True) == (1, None)
    assert out == encode_commands([(kv_py.OP_DEL, [b"a"])], resp3=True)
    assert out[13] == kv_py.OP_DEL | 0x80
    assert not p.stopped_at_limit and p.error is None


@pytest.mark.parametrize("req", [
    [b"SET", b"k"], [b"GET"], [b"GET", b"a", b"b"], [b"MSET", b"a", b"1", b"b"],
    [b"INCR", b"a", b"b"], [b"APPEND", b"k"], [b"MGET"], [b"DEL"], [b"EXISTS"],
    [b"GETX", b"k"], [b"GE", b"k"], [b"SETNX", b"k"], [b"HELLO", b"3"], [b"PING"],
    [b"DBSIZE", b"x"], [b"RAFT.EXEC", b"1", b"1"], [b"RAFT\x0eEXEC", b"1", b"1", b"GET"],
    [b"RAFT.SESSION", b"OPEN"],
])
def test_parse_kv_returns_other_requests(impl, req):
    p = impl.Parser()
    p.feed(multibulk([b"GET", b"a"]) + multibulk(req) + multibulk([b"GET", b"b"]))
    out = bytearray()
    assert p.parse_kv(out, False) == (1, req)
    assert p.parse_kv(out, False) == (1, None)
    assert out == encode_commands([(kv_py.OP_GET, [b"a"]), (kv_py.OP_GET, [b"b"])])


def test_parse_kv_command_size_limit(impl):
    # arguments' bytes + 8 per argument: SET k vvvv is 1 + 4 + 16 = 21
    p = impl.Parser()
    p.feed(multibulk([b"SET", b"k", b"vvvv"]))
    out = bytearray()
    assert p.parse_kv(out, False, max_command_bytes=21) == (1, None)
    p.feed(multibulk([b"SET", b"k", b"vvvv"]))
    assert p.parse_kv(out, False, max_command_bytes=20) == (0, [b"SET", b"k", b"vvvv"])
    assert out == encode_commands([(kv_py.OP_SET, [b"k", b"vvvv"])])


def test_parse_kv_limits_leave_the_request_buffered(impl):
    get = multibulk([b"GET", b"k"])
    size = len(encode_commands([(kv_py.OP_GET, [b"k"])]))     # 23
    p = impl.Parser()
    p.feed(get * 6 + b"PING\r\n")
    out = bytearray()
    assert p.parse_kv(out, False, max_entries=2) == (2, None) and p.stopped_at_limit
    assert p.parse_kv(out, False, max_bytes=2 * size + 1) == (2, None) and p.stopped_at_limit
    # The first entry of a call goes in whatever its size.
    assert p.parse_kv(out, False, max_bytes=1) == (1, None) and p.stopped_at_limit
    assert p.parse_kv(out, False) == (1, [b"PING"]) and not p.stopped_at_limit
    assert out == encode_commands([(kv_py.OP_GET, [b"k"])] * 6)
    # A request that is not a KV command is returned even at the limit.
    p.feed(b"PING\r\n" + get)
    assert p.parse_kv(out, False, max_entries=0) == (0, [b"PING"]) and not p.stopped_at_limit
    assert p.parse_kv(out, False, max_entries=0) == (0, None) and p.stopped_at_limit
    assert p.parse_kv(out, False) == (1, None) and not p.stopped_at_limit
    assert p.parse_kv(out, False) == (0, None) and not p.stopped_at_limit
    assert len(out) == 7 * size


def test_parse_kv_zero_entries_and_parse_takes_the_held_request(impl):
    p = impl.Parser()
    p.feed(b"GET k\r\n" + multibulk([b"GET", b"j"]))
    out = bytearray()
    assert p.parse_kv(out, False, max_entries=0) == (0, None) and p.stopped_at_limit
    assert p.parse_kv(out, False, max_entries=0) == (0, None) and p.stopped_at_limit
    assert out == b""
    assert p.parse() == [[b"GET", b"k"], [b"GET", b"j"]]


def test_parse_kv_large_value_across_reads(impl):
    value = bytes(range(256)) * 400
    wire = multibulk([b"SET", b"k", value]) + multibulk([b"APPEND", b"k", b"x"])
    p, out, n = impl.Parser(), bytearray(), 0
    for at in range(0, len(wire), 997):
        p.feed(wire[at:at + 997])
        n += p.parse_kv(out, False)[0]
    assert n == 2
    assert out == encode_commands([(kv_py.OP_SET, [b"k", value]), (kv_py.OP_APPEND, [b"k", b"x"])],
                                  append_limit=p.max_bulk_len)


def test_parse_kv_append_carries_the_parsers_limit(impl):
    """An APPEND's entry holds the proto-max-bulk-len it was accepted under,
    so every replica bounds the result by the leader's limit."""
    p, out = impl.Parser(max_bulk_len=1000), bytearray()
    p.feed(multibulk([b"APPEND", b"k", b"x"]) + b"append k y\r\n")
    assert p.parse_kv(out, False) == (2, None)
    assert entries(out, 1000) == [(kv_py.OP_APPEND, [b"k", b"x"]), (kv_py.OP_APPEND, [b"k", b"y"])]


def test_parse_kv_protocol_error_keeps_earlier_entries(impl):
    p = impl.Parser()
    p.feed(multibulk([b"SET", b"a", b"1"]) + b"*1\r\n$x\r\n" + multibulk([b"GET", b"a"]))
    out = bytearray()
    assert p.parse_kv(out, False) == (1, None)
    assert p.error == "Protocol error: invalid bulk length"
    assert out == encode_commands([(kv_py.OP_SET, [b"a", b"1"])])
    p.feed(multibulk([b"GET", b"a"]))
    assert p.parse_kv(out, False) == (0, None)


def test_parse_kv_needs_a_bytearray():
    with pytest.raises(TypeError):
        C.Parser().parse_kv(b"", False)


@pytest.mark.parametrize("impl", ["c", "py"])
def test_parse_kv_without_force_first_respects_the_byte_limit_from_the_first_entry(impl):
    from tests.reference.resp_py import RespParserPy
    from raftfast._resp import RespParser
    p = RespParser() if impl == "c" else RespParserPy()
    p.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$40\r\n" + b"v" * 40 + b"\r\n")
    out = bytearray()
    assert p.parse_kv(out, False, 10, 20, 1 << 20, False) == (0, None)
    assert p.stopped_at_limit and out == bytearray()
    assert p.parse_kv(out, False, 10, 20, 1 << 20, True)[0] == 1  # forced: taken alone
