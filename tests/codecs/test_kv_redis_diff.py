"""The KV store's commands against a real redis-server (7.x, on a Unix
socket in a temporary directory): the same random command sequences, the
same replies, error texts included.  The store runs each command at a
cluster time taken from the wall clock just before, as Redis reads its own
clock; durations are either in the past or far ahead, so the two never
disagree about which keys are alive, and TTLs are compared within the few
milliseconds between the two clocks' readings.

Also SCAN ... MATCH against Redis's glob (stringmatchlen) on random
patterns and keys."""
import os
import shutil
import socket
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftfast._kv import OPCODES, KVStore, encode_commands
from raftfast._resp import ErrorReply, SimpleString
from raftfast.runtime.cluster_time import time_entry

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")


class Redis:
    """A redis-server of our own, spoken to in raw RESP."""

    def __init__(self, directory):
        path = os.path.join(directory, "redis.sock")
        self.proc = subprocess.Popen(
            [REDIS, "--port", "0", "--unixsocket", path, "--save", "", "--appendonly", "no",
             "--dir", directory], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in self.proc.stdout:   # wait for it to say so, rather than poll
            if b"ready to accept connections" in line.lower():
                break
        else:
            raise RuntimeError("redis-server did not start")
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        self.sock.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()

    def call(self, *args):
        self.sock.sendall(b"*%d\r\n" % len(args)
                          + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
        return self._reply()

    def _reply(self):
        line = self.rfile.readline()[:-2]
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return SimpleString(rest.decode())
        if kind == b"-":
            return ErrorReply(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.rfile.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise AssertionError(f"unexpected reply line {line!r}")


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    r = Redis(str(tmp_path_factory.mktemp("redis")))
    yield r
    r.close()


def now_ms():
    return time.time_ns() // 1_000_000


def ours(kv, args):
    """Run one client command on the store at the wall clock's time."""
    block = time_entry(now_ms()) + encode_commands([(OPCODES[args[0].lower()], list(args[1:]))])
    return kv.apply(block, True)[1]


def typed(v):
    if isinstance(v, list):
        return [typed(x) for x in v]
    return type(v).__name__, v


def same(name, mine, theirs):
    if name in (b"ttl", b"pttl") and isinstance(mine, int) and isinstance(theirs, int) \
            and mine >= 0 and theirs >= 0:
        return abs(mine - theirs) <= (1 if name == b"ttl" else 50)
    return typed(mine) == typed(theirs)


KEYS = [b"a", b"b", b"c"]
VALUES = [b"0", b"1", b"-7", b"9223372036854775807", b"-9223372036854775808", b"x", b"", b"010",
          b"3.5", b" 1"]
INTS = [b"0", b"1", b"-1", b"5", b"-9223372036854775808", b"9223372036854775807", b"x", b"",
        b"18446744073709551616"]


def durations(draw, seconds):
    """Times that are past already or far ahead (never within a few
    seconds, where the two clocks could disagree), and bad ones."""
    return draw(st.sampled_from(
        [b"-5", b"0", b"x", b"1.5", b""] + ([b"100", b"1000", b"9223372036854775", b"9223372036854776"]
                                           if seconds else
                                           [b"100000", b"1000000", b"9223372036854775807"])))


def absolute(draw, seconds):
    t = now_ms()
    pick = draw(st.sampled_from(["past", "future", "zero", "neg", "huge"]))
    if pick == "past":
        v = t - 100_000
    elif pick == "future":
        v = t + 1_000_000
    else:
        v = {"zero": 0, "neg": -1, "huge": 2**63 - 1}[pick]
    return str(v // 1000 if seconds and pick in ("past", "future") else v).encode()


@st.composite
def command(draw):
    key = draw(st.sampled_from(KEYS))
    value = draw(st.sampled_from(VALUES))
    name = draw(st.sampled_from([b"set", b"set", b"setnx", b"getdel", b"mset", b"incrby",
                                 b"decr", b"decrby", b"incr", b"append", b"strlen", b"expire",
                                 b"pexpire", b"ttl", b"pttl", b"persist", b"get", b"mget",
                                 b"exists", b"del"]))
    if name == b"set":
        opts = []
        for _ in range(draw(st.integers(0, 3))):
            opt = draw(st.sampled_from([b"NX", b"XX", b"GET", b"KEEPTTL", b"EX", b"PX", b"EXAT",
                                        b"PXAT", b"nx", b"get", b"FOO"]))
            opts.append(opt)
            if opt in (b"EX", b"PX"):
                opts.append(durations(draw, opt == b"EX"))
            elif opt in (b"EXAT", b"PXAT"):
                opts.append(absolute(draw, opt == b"EXAT"))
        return [name, key, value, *opts]
    if name in (b"setnx", b"append"):
        return [name, key, value]
    if name in (b"incrby", b"decrby"):
        return [name, key, draw(st.sampled_from(INTS))]
    if name == b"mset":
        return [name, key, value, draw(st.sampled_from(KEYS)), draw(st.sampled_from(VALUES))]
    if name in (b"expire", b"pexpire"):
        flags = draw(st.lists(st.sampled_from([b"NX", b"XX", b"GT", b"LT", b"gt", b"ZZ"]),
                              max_size=2))
        return [name, key, durations(draw, name == b"expire"), *flags]
    if name in (b"mget", b"exists", b"del"):
        return [name, *draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3))]
    return [name, key]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(command(), min_size=1, max_size=25))
def test_commands_reply_as_redis_does(redis, commands):
    redis.call(b"FLUSHALL")
    kv = KVStore()
    for args in commands:
        theirs = redis.call(*args)
        mine = ours(kv, args)
        assert same(args[0], mine, theirs), (args, mine, theirs)
    # The same keys alive, with the same values.
    for key in KEYS:
        assert ours(kv, [b"get", key]) == redis.call(b"GET", key), key


@pytest.mark.parametrize("args", [
    [b"SET", b"k", b"v", b"EX"], [b"SET", b"k", b"v", b"NX", b"XX"], [b"SET", b"k", b"v", b"KEEPTTL", b"EX", b"5"],
    [b"SET", b"k", b"v", b"EX", b"5", b"PX", b"5000"], [b"SET", b"k", b"v", b"EX", b"5", b"EX", b"6"],
    [b"SET", b"k", b"v", b"PXAT", b"5", b"KEEPTTL"], [b"EXPIRE", b"k", b"10", b"NX", b"GT"],
    [b"EXPIRE", b"k", b"10", b"GT", b"LT"], [b"EXPIRE", b"k", b"x", b"FOO"],
    [b"PEXPIRE", b"k", b"-9223372036854775808"], [b"EXPIRE", b"k", b"-9223372036854775"],
    [b"EXPIRE", b"k", b"-9223372036854776"], [b"DECRBY", b"k", b"-9223372036854775808"],
    [b"INCRBY", b"k", b"x"],
])
def test_edge_cases_reply_as_redis_does(redis, args):
    redis.call(b"FLUSHALL")
    kv = KVStore()
    for setup in ([b"SET", b"k", b"1"], [b"EXPIRE", b"k", b"100"]):
        assert ours(kv, setup) == redis.call(*setup)
    assert typed(ours(kv, args)) == typed(redis.call(*args))
    assert typed(ours(kv, [b"PTTL", b"k"])) == typed(redis.call(b"PTTL", b"k")) \
        or abs(ours(kv, [b"PTTL", b"k"]) - redis.call(b"PTTL", b"k")) <= 50


# ---- SCAN ... MATCH: the glob ---------------------------------------------

PATTERN_BYTES = st.sampled_from(list(b"ab*?[]^-\\") + [ord("c"), 0, 255])
KEY_BYTES = st.sampled_from(list(b"abc-]\\[*?^") + [0, 255])


def scan_all(call, pattern):
    cursor, keys = b"0", []
    while True:
        cursor, batch = call(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", b"1000")
        keys += batch
        if cursor == b"0":
            return sorted(keys)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=0) | st.lists(KEY_BYTES, max_size=6).map(bytes),
                min_size=1, max_size=12, unique=True),
       st.lists(st.lists(PATTERN_BYTES, max_size=7).map(bytes), min_size=1, max_size=4))
def test_match_selects_the_keys_redis_selects(redis, keys, patterns):
    redis.call(b"FLUSHALL")
    kv = KVStore()
    for key in keys:
        assert redis.call(b"SET", key, b"v") == ours(kv, [b"set", key, b"v"])
    for pattern in patterns:
        mine = scan_all(lambda *a: ours(kv, list(a)), pattern)
        assert mine == scan_all(redis.call, pattern), pattern
