"""The key-value state machine (raftfast._kv): command semantics against a
plain-Python model, Redis's INCR integer rules, the entry block and command
payload formats, and corrupt log entries."""
import logging
import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftfast import _kv
from raftfast.core import messages
from raftfast._kv import (OP_APPEND, OP_DEL, OP_EXISTS, OP_GET, OP_INCR, OP_MGET, OP_SET, KVStore,
                          encode_commands)
from raftfast._resp import OK, ErrorReply, SimpleString

NOT_INTEGER = ErrorReply("ERR value is not an integer or out of range")
OVERFLOW = ErrorReply("ERR increment or decrement would overflow")
CORRUPT = ErrorReply("ERR corrupt command in log")
TOO_LARGE = ErrorReply("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
I64_MAX = 2**63 - 1


def entry(etype, data, term=0):
    return struct.pack("<IQB", len(data), term, etype) + data


def payload(opcode, args, argc=None):
    return (struct.pack("<BI", opcode, len(args) if argc is None else argc)
            + b"".join(struct.pack("<I", len(a)) + a for a in args))


def typed(values):
    """Values paired with their types, so OK and error replies are told
    apart from plain strings and True from 1."""
    if isinstance(values, list):
        return [typed(v) for v in values]
    return (type(values), values)


# ---- a plain-Python model of the commands ----------------------------------

def model_int(value):
    if re.fullmatch(rb"0|-?[1-9][0-9]*", value) and -2**63 <= int(value) <= I64_MAX:
        return int(value)
    return None


def model_apply(data, op, args, append_limit=None):
    if op == OP_SET:
        data[args[0]] = args[1]
        return OK
    if op == OP_GET:
        return data.get(args[0])
    if op == OP_MGET:
        return [data.get(k) for k in args]
    if op == OP_EXISTS:
        return sum(k in data for k in args)
    if op == OP_DEL:
        removed = [k for k in dict.fromkeys(args) if k in data]
        for k in removed:
            del data[k]
        return len(removed)
    if op == OP_APPEND:
        new = data.get(args[0], b"") + args[1]
        if append_limit is not None and len(new) > append_limit:
            return TOO_LARGE
        data[args[0]] = new
        return len(data[args[0]])
    assert op == OP_INCR
    value = model_int(data.get(args[0], b"0"))
    if value is None:
        return NOT_INTEGER
    if value == I64_MAX:
        return OVERFLOW
    data[args[0]] = str(value + 1).encode()
    return value + 1


keys = st.sampled_from([b"a", b"b", b"c", b"\x00k", b""])
values = st.sampled_from([b"", b"x", b"0", b"9", b"10", b"-5", b"-0", b"007", b" 1", b"+1",
                          b"9223372036854775806", b"9223372036854775807",
                          b"-9223372036854775808", b"abc"]) | st.binary(max_size=8)
command = st.one_of(
    st.tuples(st.just(OP_SET), st.tuples(keys, values).map(list)),
    st.tuples(st.just(OP_GET), st.tuples(keys).map(list)),
    st.tuples(st.just(OP_MGET), st.lists(keys, min_size=1, max_size=4)),
    st.tuples(st.just(OP_EXISTS), st.lists(keys, min_size=1, max_size=4)),
    st.tuples(st.just(OP_DEL), st.lists(keys, min_size=1, max_size=4)),
    st.tuples(st.just(OP_APPEND), st.tuples(keys, values).map(list)),
    st.tuples(st.just(OP_INCR), st.tuples(keys).map(list)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(command, max_size=12), max_size=8), st.sampled_from([None, 0, 12]))
def test_commands_match_the_model(batches, append_limit):
    model, leader, follower = {}, KVStore(), KVStore()
    for batch in batches:
        block = encode_commands(batch, append_limit=append_limit)
        expected = [model_apply(model, op, args, append_limit) for op, args in batch]
        assert typed(leader.apply(block, True)) == typed(expected)
        assert follower.apply(block, False) is None
    assert dict(leader.items()) == model
    assert dict(follower.items()) == model
    assert len(leader) == len(model)
    # Its memory estimate follows the live keys: KEY_COST (100) each, plus their bytes.
    assert leader.memory == follower.memory == sum(100 + len(k) + len(v) for k, v in model.items())
    assert KVStore.from_dict(dict(model)).memory == leader.memory
    stored = [len(args[1]) for batch in batches for op, args in batch if op == OP_SET]
    assert leader.largest_value >= max(stored, default=0)
    assert all(len(v) <= leader.largest_value for v in model.values())


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, values | st.binary(min_size=100, max_size=3000), max_size=5),
       st.lists(st.one_of(st.tuples(st.just(OP_GET), st.tuples(keys).map(list)),
                          st.tuples(st.just(OP_MGET), st.lists(keys, min_size=1, max_size=4)),
                          st.tuples(st.just(OP_EXISTS), st.lists(keys, min_size=1, max_size=4))),
                min_size=1, max_size=8), st.booleans())
def test_reply_sizes_bound_each_read_reply_before_it_is_built(data, reads, resp3):
    kv = KVStore.from_dict(dict(data))
    block = encode_commands(reads, resp3)
    sizes = kv.reply_sizes(block)
    replies, offsets = kv.apply_replies(block)
    assert len(sizes) == len(offsets) == len(reads) + 1
    for i in range(len(reads)):
        actual = offsets[i + 1] - offsets[i]
        bound = sizes[i + 1] - sizes[i]
        assert actual <= bound <= actual + 32 + 24 * len(reads[i][1])


# ---- INCR ------------------------------------------------------------------

@pytest.mark.parametrize("stored,expected", [
    (None, 1),
    (b"0", 1),
    (b"-1", 0),
    (b"41", 42),
    (b"9223372036854775806", I64_MAX),
    (b"9223372036854775807", OVERFLOW),
    (b"-9223372036854775808", -I64_MAX),
    (b"9223372036854775808", NOT_INTEGER),
    (b"-9223372036854775809", NOT_INTEGER),
    (b"18446744073709551616", NOT_INTEGER),
    (b"123456789012345678901", NOT_INTEGER),
    (b"-0", NOT_INTEGER),
    (b"00", NOT_INTEGER),
    (b"007", NOT_INTEGER),
    (b" 1", NOT_INTEGER),
    (b"1 ", NOT_INTEGER),
    (b"+1", NOT_INTEGER),
    (b"-", NOT_INTEGER),
    (b"", NOT_INTEGER),
    (b"1.5", NOT_INTEGER),
    (b"1e3", NOT_INTEGER),
    (b"0x10", NOT_INTEGER),
    (b"1\x00", NOT_INTEGER),
])
def test_incr(stored, expected):
    kv = KVStore()
    cmds = [] if stored is None else [(OP_SET, [b"n", stored])]
    results = kv.apply(encode_commands(cmds + [(OP_INCR, [b"n"])]), True)
    assert typed(results[-1]) == typed(expected)
    if isinstance(expected, ErrorReply):
        assert kv.get(b"n") == stored   # a refused INCR changes nothing
    else:
        assert kv.get(b"n") == str(expected).encode()


def test_incr_stores_decimal_text_usable_by_other_commands():
    kv = KVStore()
    block = encode_commands([(OP_INCR, [b"n"]), (OP_INCR, [b"n"]), (OP_APPEND, [b"n", b"0"]),
                             (OP_INCR, [b"n"]), (OP_GET, [b"n"])])
    assert kv.apply(block, True) == [1, 2, 2, 21, b"21"]


def test_append_refuses_a_result_past_the_limit_its_entry_carries():
    """Redis's checkStringLength: the value APPEND would make is bounded,
    and a refused APPEND changes nothing, on leader and follower alike."""
    leader, follower = KVStore(), KVStore()
    block = encode_commands([(OP_SET, [b"k", b"abc"]), (OP_APPEND, [b"k", b"de"]),
                             (OP_APPEND, [b"k", b"f"]), (OP_APPEND, [b"new", b"123456"]),
                             (OP_GET, [b"k"])], append_limit=5)
    assert typed(leader.apply(block, True)) == typed([OK, 5, TOO_LARGE, TOO_LARGE, b"abcde"])
    replies, offsets = KVStore().apply_replies(block)
    assert replies[offsets[2]:offsets[3]] == b"-%s\r\n" % str(TOO_LARGE).encode()
    follower.apply(block, False)
    assert follower.get(b"k") == b"abcde" and follower.get(b"new") is None
    # An entry from before the limit existed has none.
    unlimited = encode_commands([(OP_APPEND, [b"k", b"f" * 100])])
    assert leader.apply(unlimited, True) == [105]


def test_append_limit_must_be_eight_bytes():
    block = entry(messages.ENTRY_NORMAL, payload(OP_APPEND, [b"k", b"v", b"\x05"]))
    assert typed(KVStore().apply(block, True)) == typed([CORRUPT])


# ---- entry block and payload format ---------------------------------------

def test_encode_commands_layout():
    block = encode_commands([(OP_GET, [b"k"]), (OP_SET, [b"key", b""])])
    assert block == (entry(messages.ENTRY_NORMAL, b"\x02" + struct.pack("<II", 1, 1) + b"k")
                     + entry(messages.ENTRY_NORMAL,
                             b"\x01" + struct.pack("<II", 2, 3) + b"key" + struct.pack("<I", 0)))
    assert encode_commands([]) == b""


def test_opcodes_table():
    assert _kv.OPCODES == {b"set": 1, b"get": 2, b"mget": 3, b"exists": 4, b"del": 5,
                           b"append": 6, b"incr": 7, b"setnx": 8, b"getdel": 9, b"mset": 10,
                           b"incrby": 11, b"decr": 12, b"decrby": 13, b"strlen": 14,
                           b"expire": 15, b"pexpire": 16, b"ttl": 17, b"pttl": 18,
                           b"persist": 19, b"dbsize": 20, b"scan": 21, b"raft.exec": 22}
    assert (_kv.OP_SESSION_OPEN, _kv.OP_EXPIRE_DEL, _kv.OP_MAX) == (23, 24, 24)
    assert (OP_SET, OP_GET, OP_MGET, OP_EXISTS, OP_DEL, OP_APPEND, OP_INCR) == tuple(range(1, 8))


@pytest.mark.parametrize("commands,error", [
    ([(0, [b"k"])], ValueError),
    ([(8, [b"k"])], ValueError),
    ([(True, [b"k", b"v"])], ValueError),
    ([(OP_SET, [b"k"])], ValueError),
    ([(OP_GET, [])], ValueError),
    ([(OP_GET, [b"a", b"b"])], ValueError),
    ([(OP_MGET, [])], ValueError),
    ([(OP_INCR, [b"a", b"b"])], ValueError),
    ([(OP_SET, [b"k", "v"])], TypeError),
    ([(OP_GET, b"k")], TypeError),
])
def test_encode_commands_refuses_bad_commands(commands, error):
    with pytest.raises(error):
        encode_commands(commands)


def test_noop_and_config_entries_are_skipped():
    kv = KVStore()
    block = (entry(messages.ENTRY_NOOP, b"", term=3)
             + encode_commands([(OP_SET, [b"k", b"v"])])
             + entry(messages.ENTRY_CONFIG, payload(OP_DEL, [b"k"]), term=3)
             + entry(messages.ENTRY_NORMAL, payload(OP_GET, [b"k"]), term=3))
    assert typed(kv.apply(block, True)) == typed([None, OK, None, b"v"])
    assert kv.get(b"k") == b"v"


def test_without_results_nothing_is_returned_and_state_is_the_same():
    block = encode_commands([(OP_SET, [b"a", b"1"]), (OP_INCR, [b"a"]), (OP_GET, [b"a"]),
                             (OP_APPEND, [b"b", b"xy"]), (OP_DEL, [b"c"])])
    leader, follower = KVStore(), KVStore()
    leader.apply(block, True)
    assert follower.apply(block, False) is None
    assert dict(follower.items()) == dict(leader.items()) == {b"a": b"2", b"b": b"xy"}


def test_apply_accepts_any_buffer():
    block = encode_commands([(OP_SET, [b"k", b"v"]), (OP_GET, [b"k"])])
    assert KVStore().apply(bytearray(block), True) == [OK, b"v"]
    assert KVStore().apply(memoryview(block), True) == [OK, b"v"]
    assert KVStore().apply(b"", True) == []


# ---- corrupt entries -------------------------------------------------------

CORRUPT_ENTRIES = {
    "empty payload": entry(messages.ENTRY_NORMAL, b""),
    "short header": entry(messages.ENTRY_NORMAL, b"\x01\x01\x00"),
    "opcode 0": entry(messages.ENTRY_NORMAL, payload(0, [b"x"])),
    "opcode 8": entry(messages.ENTRY_NORMAL, payload(8, [b"x"])),
    "opcode 255": entry(messages.ENTRY_NORMAL, payload(255, [])),
    "SET with one argument": entry(messages.ENTRY_NORMAL, payload(OP_SET, [b"x"])),
    "GET with two arguments": entry(messages.ENTRY_NORMAL, payload(OP_GET, [b"x", b"y"])),
    "DEL without arguments": entry(messages.ENTRY_NORMAL, payload(OP_DEL, [])),
    "argument overruns": entry(messages.ENTRY_NORMAL, payload(OP_DEL, [b"x"])[:-1]),
    "missing argument": entry(messages.ENTRY_NORMAL, payload(OP_DEL, [b"x"], argc=2)),
    "huge argc": entry(messages.ENTRY_NORMAL, payload(OP_DEL, [b"x"], argc=0xFFFFFFFF)),
    "huge length": entry(messages.ENTRY_NORMAL,
                         struct.pack("<BII", OP_DEL, 1, 0xFFFFFFFF) + b"x"),
    "trailing bytes": entry(messages.ENTRY_NORMAL, payload(OP_DEL, [b"x"]) + b"zz"),
    "unknown entry type": entry(9, payload(OP_DEL, [b"x"])),
}


@pytest.mark.parametrize("bad", CORRUPT_ENTRIES.values(), ids=CORRUPT_ENTRIES.keys())
@pytest.mark.parametrize("want_results", [True, False])
def test_corrupt_entry_is_an_error_and_the_store_stays_usable(bad, want_results, caplog):
    kv = KVStore()
    block = (encode_commands([(OP_SET, [b"x", b"1"])]) + bad
             + encode_commands([(OP_INCR, [b"x"]), (OP_GET, [b"x"])]))
    with caplog.at_level(logging.ERROR, logger="raftfast.kv"):
        results = kv.apply(block, want_results)
    if want_results:
        assert typed(results) == typed([OK, CORRUPT, 2, b"2"])
    else:
        assert results is None
    assert kv.get(b"x") == b"2"
    records = [r for r in caplog.records if r.name == "raftfast.kv"]
    assert len(records) == 1 and "corrupt command in log" in records[0].getMessage()
    assert kv.apply(encode_commands([(OP_INCR, [b"x"])]), True) == [3]


@pytest.mark.parametrize("cut", [1, 12, 13, 20])
def test_broken_block_framing_raises_before_applying_anything(cut):
    kv = KVStore()
    tail = encode_commands([(OP_SET, [b"b", b"2"])])
    block = encode_commands([(OP_SET, [b"a", b"1"])]) + tail[:cut]
    with pytest.raises(ValueError):
        kv.apply(block, True)
    assert len(kv) == 0


# ---- the store's own accessors --------------------------------------------

def test_len_get_items_clear():
    kv = KVStore()
    kv.apply(encode_commands([(OP_SET, [b"a", b"1"]), (OP_SET, [b"b", b"2"])]), False)
    assert len(kv) == 2
    assert kv.get(b"a") == b"1" and kv.get(b"zz") is None
    snapshot = kv.items()
    kv.apply(encode_commands([(OP_DEL, [b"a"]), (OP_SET, [b"c", b"3"])]), False)
    assert sorted(snapshot) == [(b"a", b"1"), (b"b", b"2")]   # taken before the change
    assert sorted(kv.items()) == [(b"b", b"2"), (b"c", b"3")]
    kv.clear()
    assert len(kv) == 0 and list(kv.items()) == []


def test_replies_use_resp_types():
    results = KVStore().apply(encode_commands([(OP_SET, [b"k", b"v"]), (OP_INCR, [b"k"])]), True)
    assert type(results[0]) is SimpleString and results[0] is OK
    assert type(results[1]) is ErrorReply


# ---- the RESP3 bit and apply_replies ---------------------------------------

from raftfast._kv import OP_RESP3  # noqa: E402
from raftfast._resp import encode_replies  # noqa: E402


def test_encode_commands_resp3_sets_the_opcode_high_bit():
    cmds = [(OP_GET, [b"k"]), (OP_SET, [b"key", b""])]
    block = encode_commands(cmds, resp3=True)
    assert OP_RESP3 == 0x80
    assert block == (entry(messages.ENTRY_NORMAL, payload(OP_GET | 0x80, [b"k"]))
                     + entry(messages.ENTRY_NORMAL, payload(OP_SET | 0x80, [b"key", b""])))
    assert encode_commands(cmds, False) == encode_commands(cmds)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(command, max_size=12))
def test_apply_ignores_the_resp3_bit(cmds):
    plain, flagged = KVStore(), KVStore()
    assert (typed(plain.apply(encode_commands(cmds), True))
            == typed(flagged.apply(encode_commands(cmds, resp3=True), True)))
    assert dict(plain.items()) == dict(flagged.items())


def reply_slices(replies, offsets):
    assert offsets.format == "Q" and offsets[0] == 0 and offsets[-1] == len(replies)
    return [replies[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


OTHER_ENTRIES = [entry(messages.ENTRY_NOOP, b"", term=2),
                 entry(messages.ENTRY_CONFIG, b"\x01\x02config", term=2)]
block_items = st.one_of(
    st.tuples(st.just("cmd"), command, st.booleans()),
    st.tuples(st.just("raw"), st.sampled_from(OTHER_ENTRIES + list(CORRUPT_ENTRIES.values())
                                              + [entry(messages.ENTRY_NORMAL, payload(0x88, [b"x"])),
                                                 entry(messages.ENTRY_NORMAL, payload(0x80, [b"x"]))]),
              st.just(False)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(block_items, max_size=12), max_size=6))
def test_apply_replies_match_apply_and_encode_replies(batches):
    """Entry by entry, in the protocol each entry asks for: the bytes of
    encode_replies over apply()'s results (empty for no-op and config
    entries), with the same effect on the store."""
    by_objects, by_wire = KVStore(), KVStore()
    for batch in batches:
        block, expect_resp3, plain = b"", [], []
        for kind, item, resp3 in batch:
            if kind == "cmd":
                block += encode_commands([item], resp3)
            else:
                block += item
            expect_resp3.append(resp3)
            plain.append(kind == "raw" and item in OTHER_ENTRIES)
        results = by_objects.apply(block, True)
        replies, offsets = by_wire.apply_replies(block)
        assert len(offsets) == len(batch) + 1
        expected = [b"" if skip else encode_replies([r], resp3)
                    for r, resp3, skip in zip(results, expect_resp3, plain)]
        assert reply_slices(replies, offsets) == expected
        assert replies == b"".join(expected)
    assert dict(by_wire.items()) == dict(by_objects.items())


@pytest.mark.parametrize("resp3", [False, True])
def test_apply_replies_golden(resp3):
    kv = KVStore()
    kv.apply(encode_commands([(OP_SET, [b"s", b"abc"]), (OP_SET, [b"big", b"9223372036854775807"])]),
             False)
    block = (encode_commands([(OP_SET, [b"k", b"v"]), (OP_GET, [b"k"]), (OP_GET, [b"nope"]),
                              (OP_MGET, [b"k", b"nope", b"k"]), (OP_EXISTS, [b"k", b"k", b"z"]),
                              (OP_DEL, [b"k", b"k"]), (OP_APPEND, [b"a", b"xyz"]),
                              (OP_INCR, [b"n"]), (OP_INCR, [b"s"]), (OP_INCR, [b"big"])], resp3)
             + entry(messages.ENTRY_NOOP, b""))
    replies, offsets = kv.apply_replies(block)
    null = b"_\r\n" if resp3 else b"$-1\r\n"
    assert reply_slices(replies, offsets) == [
        b"+OK\r\n", b"$1\r\nv\r\n", null, b"*3\r\n$1\r\nv\r\n" + null + b"$1\r\nv\r\n",
        b":2\r\n", b":1\r\n", b":3\r\n", b":1\r\n",
        b"-ERR value is not an integer or out of range\r\n",
        b"-ERR increment or decrement would overflow\r\n", b""]


def test_apply_replies_mixed_protocols_in_one_block():
    block = (encode_commands([(OP_GET, [b"k"])], resp3=True) + encode_commands([(OP_GET, [b"k"])])
             + encode_commands([(OP_MGET, [b"k"])], resp3=True))
    replies, offsets = KVStore().apply_replies(block)
    assert reply_slices(replies, offsets) == [b"_\r\n", b"$-1\r\n", b"*1\r\n_\r\n"]


def test_apply_replies_empty_block_and_any_buffer():
    replies, offsets = KVStore().apply_replies(b"")
    assert replies == b"" and offsets.tolist() == [0]
    block = encode_commands([(OP_SET, [b"k", b"v"]), (OP_GET, [b"k"])])
    for buf in (bytearray(block), memoryview(block)):
        replies, offsets = KVStore().apply_replies(buf)
        assert replies == b"+OK\r\n$1\r\nv\r\n" and offsets.tolist() == [0, 5, 12]


def test_apply_replies_corrupt_entry_is_logged_and_answered(caplog):
    kv = KVStore()
    block = (encode_commands([(OP_SET, [b"x", b"1"])]) + CORRUPT_ENTRIES["huge argc"]
             + encode_commands([(OP_INCR, [b"x"])], resp3=True))
    with caplog.at_level(logging.ERROR, logger="raftfast.kv"):
        replies, offsets = kv.apply_replies(block)
    assert reply_slices(replies, offsets) == [b"+OK\r\n", b"-ERR corrupt command in log\r\n", b":2\r\n"]
    assert [r.name for r in caplog.records] == ["raftfast.kv"]


@pytest.mark.parametrize("cut", [1, 12, 13, 20])
def test_apply_replies_broken_framing_raises_before_applying_anything(cut):
    kv = KVStore()
    tail = encode_commands([(OP_SET, [b"b", b"2"])])
    with pytest.raises(ValueError):
        kv.apply_replies(encode_commands([(OP_SET, [b"a", b"1"])]) + tail[:cut])
    assert len(kv) == 0
