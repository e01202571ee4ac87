"""The KV store's cluster time, expiry, client sessions and SCAN cursors
(ext/kv.pyx): what the log's ENTRY_TIME entries decide, reads at a later
time changing nothing, the leader's conditional deletions, RAFT.EXEC's
once-per-(session, seq), cursors that mean the same after a restore, the
linear glob, and the snapshot format 2 carrying all of it (format 1 still
read)."""
import os
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftfast._crc import crc32c
from raftfast._kv import (OP_EXEC, OP_EXPIRE_DEL, OP_SESSION_OPEN, OPCODES, SCAN_COUNT_MAX,
                          SESSION_TIMEOUT_MS, KVStore, encode_commands)
from raftfast._resp import OK, ErrorReply, encode_replies
from raftfast.runtime.cluster_time import time_entry
from raftfast.runtime.snapshot import MAGIC, load_snapshot, write_snapshot

T0 = 1_700_000_000_000


def block(*commands, t=None):
    """Entries for commands given as client argument lists (or (opcode,
    args) for the server's own), behind a time entry when t is given."""
    cmds = [c if isinstance(c[0], int) else (OPCODES[c[0].lower()], list(c[1:]))
            for c in commands]
    return (time_entry(t) if t is not None else b"") + encode_commands(cmds)


def run(kv, *commands, t=None):
    out = kv.apply(block(*commands, t=t), True)
    return out[1:] if t is not None else out


def read(kv, *commands, now=0):
    replies, offsets = kv.read_replies(block(*commands), now)
    return [replies[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


# ---- cluster time and expiry ---------------------------------------------------

def test_time_entries_set_the_time_relative_expiry_becomes_a_deadline():
    kv = KVStore()
    assert run(kv, [b"SET", b"k", b"v", b"PX", b"1500"], t=T0) == [OK]
    assert kv.time == T0 and kv.deadline(b"k") == T0 + 1500
    # An older time never moves the store back.
    assert run(kv, [b"PTTL", b"k"], t=T0 - 10) == [1500] and kv.time == T0
    assert run(kv, [b"PTTL", b"k"], [b"GET", b"k"], t=T0 + 1500) == [0, b"v"]
    assert run(kv, [b"GET", b"k"], [b"TTL", b"k"], t=T0 + 1501) == [None, -2]
    # Still held until a write meets it: DBSIZE counts it, as Redis does.
    assert len(kv) == 1 and kv.expires == 1
    assert run(kv, [b"APPEND", b"k", b"x"]) == [1]   # a write meets it: gone, then created
    assert kv.get(b"k") == b"x" and kv.deadline(b"k") is None and kv.expires == 0


def test_a_time_entry_of_the_wrong_size_is_a_corrupt_entry(caplog):
    kv = KVStore()
    bad = struct.pack("<IQB", 4, 0, 3) + b"\0\0\0\0"
    assert kv.apply(bad, True) == [ErrorReply("ERR corrupt command in log")]
    assert kv.time == 0


def test_reads_evaluate_expiry_at_their_own_time_and_change_nothing():
    kv = KVStore()
    run(kv, [b"SET", b"k", b"v", b"EX", b"10"], [b"SET", b"p", b"q"], t=T0)
    assert read(kv, [b"GET", b"k"], [b"EXISTS", b"k"], [b"TTL", b"k"], now=T0 + 9_000) \
        == [b"$1\r\nv\r\n", b":1\r\n", b":1\r\n"]
    assert read(kv, [b"GET", b"k"], [b"EXISTS", b"k", b"p"], [b"TTL", b"k"], [b"STRLEN", b"k"],
                [b"SCAN", b"0"], now=T0 + 10_001) \
        == [b"$-1\r\n", b":1\r\n", b":-2\r\n", b":0\r\n", b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\np\r\n"]
    # A read at an earlier time than the store's is read at the store's.
    run(kv, [b"SET", b"x", b"1"], t=T0 + 20_000)
    assert read(kv, [b"GET", b"k"], now=T0) == [b"$-1\r\n"]
    assert kv.time == T0 + 20_000 and len(kv) == 3 and kv.expires == 1


def test_a_write_in_a_read_batch_is_refused_not_applied(caplog):
    kv = KVStore()
    assert read(kv, [b"SET", b"k", b"v"]) == [b"-ERR corrupt command in log\r\n"]
    assert len(kv) == 0


def test_expired_keys_and_the_conditional_delete():
    kv = KVStore()
    run(kv, *[[b"SET", b"k%d" % i, b"v", b"PX", b"%d" % (100 + i)] for i in range(10)],
        [b"SET", b"forever", b"v"], t=T0)
    found = sorted(kv.expired_keys(T0 + 105, 100))
    assert found == [b"k%d" % i for i in range(5)]
    # Round robin within a budget: every deadline is looked at in turn.
    seen = set()
    for _ in range(10):
        seen.update(kv.expired_keys(T0 + 1000, 3))
    assert seen == {b"k%d" % i for i in range(10)}
    # Meanwhile k0 got a new value: the proposed delete keeps it.
    run(kv, [b"SET", b"k0", b"new"], t=T0 + 50)
    assert run(kv, (OP_EXPIRE_DEL, found + [b"forever", b"missing"]), t=T0 + 105) == [4]
    assert sorted(k for k, v in kv.items()) == [b"forever", b"k0"] + [b"k%d" % i
                                                                     for i in range(5, 10)]


def test_followers_end_in_the_leaders_state():
    leader, follower = KVStore(), KVStore()
    cmds = [[b"SET", b"a", b"1", b"EX", b"5"], [b"INCRBY", b"n", b"7"],
            (OP_SESSION_OPEN, []), [b"RAFT.EXEC", b"1", b"1", b"SET", b"s", b"x", b"GET"],
            [b"EXPIRE", b"n", b"100"], [b"GETDEL", b"zz"], [b"MSET", b"m", b"1", b"a", b"2"]]
    b = block(*cmds, t=T0)
    leader.apply_replies(b)
    follower.apply(b, False)
    assert sorted(leader.items()) == sorted(follower.items())
    assert [leader.deadline(k) for k in (b"a", b"n")] == [follower.deadline(k)
                                                          for k in (b"a", b"n")]
    assert leader.session(1) == follower.session(1) == (1, b"$-1\r\n", T0)
    assert leader.memory == follower.memory


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([
    [b"SET", b"k", b"v", b"NX", b"GET"], [b"SET", b"k", b"w", b"XX", b"PX", b"100"],
    [b"GETDEL", b"k"], [b"SETNX", b"k", b"1"], [b"DECR", b"k"], [b"PERSIST", b"k"],
    [b"PEXPIRE", b"k", b"50", b"GT"], [b"TTL", b"k"], [b"SCAN", b"0", b"MATCH", b"k*"],
    [b"RAFT.EXEC", b"1", b"2", b"INCRBY", b"c", b"3"], [b"RAFT.EXEC", b"1", b"1", b"GET", b"c"],
    [b"RAFT.EXEC", b"7", b"1", b"DEL", b"k"], [b"DBSIZE"], [b"STRLEN", b"k"]]),
    max_size=12), st.booleans())
def test_apply_replies_match_apply_and_encode_replies(cmds, resp3):
    a, b = KVStore(), KVStore()
    for kv in (a, b):
        kv.apply(block((OP_SESSION_OPEN, []), t=T0), False)
    entries = time_entry(T0 + 60) + encode_commands(
        [(OPCODES[c[0].lower()], c[1:]) for c in cmds], resp3)
    replies, offsets = a.apply_replies(entries)
    expected = [b""] + [encode_replies([r], resp3) for r in b.apply(entries, True)[1:]]
    assert [replies[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)] == expected


# ---- sessions ------------------------------------------------------------------

def test_a_retried_seq_answers_its_first_reply_without_running_again():
    kv = KVStore()
    assert run(kv, (OP_SESSION_OPEN, []), (OP_SESSION_OPEN, []), t=T0) == [1, 2]
    ex = [b"RAFT.EXEC", b"1"]
    assert run(kv, ex + [b"1", b"INCR", b"c"], ex + [b"1", b"INCR", b"c"],
               ex + [b"2", b"incr", b"c"], ex + [b"2", b"INCR", b"c"]) == [1, 1, 2, 2]
    assert kv.get(b"c") == b"2"
    assert run(kv, ex + [b"1", b"INCR", b"c"]) == [ErrorReply(
        "ERR stale sequence number 1: the session already ran 2, and only the last reply "
        "is kept")]
    assert run(kv, ex + [b"0", b"INCR", b"c"], ex + [b"x", b"INCR", b"c"]) == [
        ErrorReply("ERR sequence number must be a positive integer")] * 2
    assert run(kv, [b"RAFT.EXEC", b"3", b"1", b"INCR", b"c"],
               [b"RAFT.EXEC", b"x", b"1", b"INCR", b"c"]) == [ErrorReply("ERR unknown session")] * 2
    # The command's own errors are its reply, kept like any other.
    assert run(kv, ex + [b"3", b"GET", b"c"], ex + [b"3", b"SET", b"c"], ex + [b"4", b"SET", b"c"],
               ex + [b"5", b"NOPE"], ex + [b"6", b"INCR", b"s"]) == [
        ErrorReply("ERR RAFT.EXEC runs write commands only, not 'GET'")] * 2 + [
        ErrorReply("ERR wrong number of arguments for 'set' command"),
        ErrorReply("ERR RAFT.EXEC runs write commands only, not 'NOPE'"), 1]
    assert kv.session(1)[:2] == (6, b":1\r\n") and kv.get(b"c") == b"2"


def test_a_stored_null_is_answered_in_the_protocol_asked_now():
    kv = KVStore()
    run(kv, (OP_SESSION_OPEN, []), t=T0)
    first = encode_commands([(OP_EXEC, [b"1", b"1", b"GETDEL", b"k"])], resp3=True)
    assert kv.apply_replies(first)[0] == b"_\r\n"
    assert kv.session(1)[1] == b"$-1\r\n"
    assert kv.apply_replies(first.replace(b"\x96", b"\x16", 1))[0] == b"$-1\r\n"
    assert kv.apply_replies(first)[0] == b"_\r\n"


def test_a_session_unused_for_ten_minutes_of_cluster_time_is_gone():
    kv = KVStore()
    run(kv, (OP_SESSION_OPEN, []), (OP_SESSION_OPEN, []), t=T0)
    run(kv, [b"RAFT.EXEC", b"2", b"1", b"SET", b"a", b"1"], t=T0 + SESSION_TIMEOUT_MS - 1)
    assert run(kv, [b"RAFT.EXEC", b"1", b"1", b"SET", b"a", b"1"],
               t=T0 + SESSION_TIMEOUT_MS) == [ErrorReply("ERR unknown session")]
    assert kv.sessions == 1
    assert run(kv, [b"RAFT.EXEC", b"2", b"1", b"SET", b"a", b"1"]) == [OK]
    # Opening another drops the expired ones from the least recently used end.
    run(kv, (OP_SESSION_OPEN, []), t=T0 + 3 * SESSION_TIMEOUT_MS)
    assert kv.sessions == 1 and kv.session(3) is not None


# ---- SCAN ----------------------------------------------------------------------

def scan_all(kv, *opts, now=0):
    cursor, keys, calls = b"0", [], 0
    while True:
        cursor, batch = kv.apply(block([b"SCAN", cursor, *opts], t=now or None), True)[-1]
        keys += batch
        calls += 1
        if cursor == b"0":
            return keys, calls


def test_a_full_scan_returns_every_key_once_and_count_sets_the_pace():
    kv = KVStore()
    keys = [b"key:%d" % i for i in range(5000)]
    run(kv, *[[b"SET", k, b"v"] for k in keys])
    got, calls = scan_all(kv, b"COUNT", b"100")
    assert sorted(got) == sorted(keys) and len(got) == len(keys)
    assert 45 <= calls <= 51
    one = kv.apply(block([b"SCAN", b"0", b"COUNT", b"1000000"]), True)[0]
    assert len(one[1]) == SCAN_COUNT_MAX    # COUNT is capped
    got, _ = scan_all(kv, b"MATCH", b"key:4?9", b"COUNT", b"1000")
    assert sorted(got) == sorted(b"key:4%d9" % i for i in range(10))


def test_a_cursor_means_the_same_after_a_restore_and_keys_added_meanwhile(tmp_path):
    kv = KVStore()
    keys = [os.urandom(8) for _ in range(3000)]
    run(kv, *[[b"SET", k, b"v"] for k in keys])
    cursor, first = kv.apply(block([b"SCAN", b"0", b"COUNT", b"500"]), True)[0]
    write_snapshot(kv, tmp_path / "snap", 1, 1)
    restored, _ = load_snapshot(tmp_path / "snap")
    # Another process: another dict order (the hash of bytes is per process),
    # the same answer.
    assert restored.apply(block([b"SCAN", cursor, b"COUNT", b"500"]), True) == \
        kv.apply(block([b"SCAN", cursor, b"COUNT", b"500"]), True)
    # Keys added and removed mid-scan: every key present throughout is returned.
    run(kv, *[[b"SET", b"new%d" % i, b"v"] for i in range(2000)], [b"DEL", *keys[:100]])
    rest = []
    while cursor != b"0":
        cursor, batch = kv.apply(block([b"SCAN", cursor, b"COUNT", b"500"]), True)[0]
        rest += batch
    assert set(keys[100:]) <= set(first) | set(rest)


def test_match_is_linear_in_pattern_and_key():
    kv = KVStore()
    run(kv, [b"SET", b"a" * 20000, b"v"])
    start = time.perf_counter()
    assert kv.apply(block([b"SCAN", b"0", b"MATCH", b"*a" * 30 + b"b"]), True)[0] == [b"0", []]
    assert time.perf_counter() - start < 0.5   # backtracking would take ages


# ---- snapshots -----------------------------------------------------------------

def test_snapshot_carries_deadlines_time_and_sessions(tmp_path):
    kv = KVStore()
    run(kv, [b"SET", b"a", b"1", b"EX", b"100"], [b"SET", b"b", b"2"], (OP_SESSION_OPEN, []),
        (OP_SESSION_OPEN, []), [b"RAFT.EXEC", b"2", b"4", b"INCR", b"n"],
        [b"RAFT.EXEC", b"1", b"9", b"GETDEL", b"b"], t=T0)
    meta = write_snapshot(kv, tmp_path / "snap", 7, 2)
    assert (meta.version, meta.count, meta.time, meta.next_session) == (2, 2 + 2, T0, 2)
    got, _ = load_snapshot(tmp_path / "snap")
    assert sorted(got.items()) == sorted(kv.items())
    assert got.deadline(b"a") == T0 + 100_000 and got.deadline(b"n") is None
    assert got.time == T0 and got.memory == kv.memory
    assert got.session(1) == kv.session(1) == (9, b"$1\r\n2\r\n", T0)
    assert got.session(2) == (4, b":1\r\n", T0)
    # The retry after the restore answers the first reply; a new session continues the count.
    assert run(got, [b"RAFT.EXEC", b"2", b"4", b"INCR", b"n"], (OP_SESSION_OPEN, [])) == [1, 3]


def test_a_format_1_snapshot_is_still_read(tmp_path):
    records = b"".join(struct.pack("<II", len(k), len(v)) + k + v
                       for k, v in [(b"a", b"1"), (b"bb", b"22")])
    meta = b"voters=1"
    length = 8 + 4 + 4 + 8 * 3 + 4 + len(meta) + 4
    header = MAGIC + struct.pack("<IIQQQI", 1, length, 5, 3, 2, len(meta)) + meta
    header += struct.pack("<I", crc32c(header))
    frame = struct.pack("<II", len(records), 2)
    body = header + frame + struct.pack("<I", crc32c(records, crc32c(frame))) + records
    end = struct.pack("<II", 0, 0) + struct.pack("<Q", 2)
    data = body + end
    (tmp_path / "v1").write_bytes(data + struct.pack("<I", crc32c(data)))
    kv, got = load_snapshot(tmp_path / "v1")
    assert (got.version, got.index, got.term, got.count, got.meta) == (1, 5, 3, 2, meta)
    assert dict(kv.items()) == {b"a": b"1", b"bb": b"22"} and kv.time == 0


def test_deadlines_and_sessions_are_those_of_the_freeze_across_many_chunks(tmp_path):
    from raftfast.runtime.snapshot import SnapshotWriter
    kv = KVStore()
    run(kv, *[[b"SET", b"k%03d" % i, b"v", b"EX", b"%d" % (100 + i)] for i in range(300)],
        *[(OP_SESSION_OPEN, [])] * 40, t=T0)
    run(kv, *[[b"RAFT.EXEC", b"%d" % s, b"1", b"INCR", b"n%d" % s] for s in range(1, 41)])
    w = SnapshotWriter(kv, tmp_path / "snap", 9, 1, chunk_bytes=512)
    # Changed after the freeze: none of it is in the snapshot.
    run(kv, [b"PERSIST", b"k000"], [b"EXPIRE", b"k001", b"5"], [b"DEL", b"k002"],
        [b"RAFT.EXEC", b"1", b"2", b"INCR", b"n1"], (OP_SESSION_OPEN, []), t=T0 + 10)
    while not w.step(7):
        pass
    got, meta = load_snapshot(tmp_path / "snap")
    assert meta.count == 340 + 40 and meta.next_session == 40   # 300 k, 40 n, 40 sessions
    assert got.deadline(b"k000") == T0 + 100_000 and got.deadline(b"k001") == T0 + 101_000
    assert got.get(b"k002") == b"v" and got.session(1) == (1, b":1\r\n", T0)
    assert got.sessions == 40 and got.expires == 300
    # The live store went on: the overlay merged back, its own changes kept.
    assert kv.deadline(b"k000") is None and kv.deadline(b"k001") == T0 + 10 + 5_000
    assert kv.get(b"k002") is None and kv.session(1)[0] == 2 and kv.sessions == 41
