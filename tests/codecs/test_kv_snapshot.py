"""Snapshots of the key-value state machine (ext/kv.pyx copy-on-write,
raftfast/runtime/snapshot.py file format): round trips, isolation of writes made
during a snapshot (against a plain dict model, interleavings from
hypothesis), damaged files refused with a clear message, and a failed write
never leaving anything under the real name."""
import gc
import os
import struct
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftfast._crc import crc32c
from raftfast._resp import OK, ErrorReply
from raftfast._kv import OP_APPEND, OP_DEL, OP_INCR, OP_SET, KVStore, SnapshotBusy, encode_commands
from raftfast.runtime.snapshot import (MAGIC, SnapshotError, SnapshotLoader, SnapshotMeta,
                                       SnapshotWriter, load_snapshot, read_chunks,
                                       read_snapshot_meta, write_snapshot)


def store_of(pairs):
    kv = KVStore()
    if pairs:
        kv.apply(encode_commands([(OP_SET, [k, v]) for k, v in pairs.items()]), False)
    return kv


def run(kv, *commands):
    return kv.apply(encode_commands(list(commands)), True)


def leftovers(directory):
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


# ---- round trips --------------------------------------------------------------

BINARY = {b"": b"empty key", b"\x00\xff\r\n": b"", bytes(range(256)): bytes(range(255, -1, -1)),
          b"k": b"\x00" * 1000, "é".encode(): b"\xff" * 3}


@pytest.mark.parametrize("pairs", [{}, {b"a": b"1", b"b": b"2"}, BINARY],
                         ids=["empty", "small", "binary"])
def test_round_trip(tmp_path, pairs):
    path = tmp_path / "snap"
    meta = write_snapshot(store_of(pairs), path, index=42, term=7, meta=b"voters=1,2,3")
    assert meta == SnapshotMeta(42, 7, len(pairs), b"voters=1,2,3")
    kv, got = load_snapshot(path)
    assert got == meta and read_snapshot_meta(path) == meta
    assert dict(kv.items()) == pairs and len(kv) == len(pairs)
    assert leftovers(tmp_path) == []


def test_round_trip_100k_in_many_chunks(tmp_path):
    pairs = {b"key:%07d" % i: os.urandom(i % 40) for i in range(100_000)}
    kv = store_of(pairs)
    w = SnapshotWriter(kv, tmp_path / "snap", 1000, 3, chunk_bytes=64 << 10)
    steps = 0
    while not w.step(5000):
        steps += 1
    assert steps > 20
    loaded, meta = load_snapshot(tmp_path / "snap")
    assert meta.count == 100_000 and dict(loaded.items()) == pairs
    # The loaded store is an ordinary one: it takes writes and snapshots again.
    run(loaded, (OP_SET, [b"x", b"y"]))
    write_snapshot(loaded, tmp_path / "snap2", 1001, 3)
    assert load_snapshot(tmp_path / "snap2")[0].get(b"x") == b"y"


# ---- isolation: the snapshot is the freeze point, the store stays live --------

def test_writes_during_snapshot_do_not_leak(tmp_path):
    kv = store_of({b"a": b"1", b"b": b"x", b"c": b"5", b"d": b"gone"})
    w = SnapshotWriter(kv, tmp_path / "snap", 10, 1)
    assert kv.snapshot_state == "frozen"
    replies = run(kv, (OP_SET, [b"a", b"2"]), (OP_APPEND, [b"b", b"yz"]), (OP_INCR, [b"c"]),
                  (OP_DEL, [b"d", b"nope"]), (OP_SET, [b"new", b"v"]), (OP_DEL, [b"new"]),
                  (OP_INCR, [b"n"]), (OP_DEL, [b"d"]))
    assert [replies[i] for i in (1, 2, 3, 5, 6, 7)] == [3, 6, 1, 1, 1, 0]
    live = {b"a": b"2", b"b": b"xyz", b"c": b"6", b"n": b"1"}
    assert dict(kv.items()) == live and len(kv) == 4 and kv.get(b"d") is None
    w.run(1)
    assert kv.snapshot_state is None and dict(kv.items()) == live and len(kv) == 4
    assert dict(load_snapshot(tmp_path / "snap")[0].items()) == {
        b"a": b"1", b"b": b"x", b"c": b"5", b"d": b"gone"}


def test_one_snapshot_at_a_time(tmp_path):
    kv = store_of({b"k%d" % i: b"v" for i in range(100)})
    snap = kv.begin_snapshot()
    with pytest.raises(SnapshotBusy, match="already in progress"):
        kv.begin_snapshot()
    with pytest.raises(SnapshotBusy):
        SnapshotWriter(kv, tmp_path / "snap", 1, 1)
    assert leftovers(tmp_path) == []
    run(kv, *[(OP_SET, [b"k%d" % i, b"w"]) for i in range(100)])
    snap.release()
    assert kv.snapshot_state == "merging" and kv.pending == 100
    with pytest.raises(SnapshotBusy, match="still being merged back \\(100 keys pending\\)"):
        kv.begin_snapshot()
    assert kv.merge_step(30) is False and kv.pending == 70
    while not kv.merge_step(30):
        pass
    assert dict(kv.items()) == {b"k%d" % i: b"w" for i in range(100)}
    kv.begin_snapshot().release()   # free again
    assert kv.snapshot_state is None


def test_abandoned_snapshot_merges_back_through_applies():
    kv = store_of({b"k%d" % i: b"v" for i in range(10)})
    snap = kv.begin_snapshot()
    run(kv, *[(OP_SET, [b"n%d" % i, b"v"]) for i in range(1000)])
    del snap
    gc.collect()      # a dropped snapshot releases the store
    assert kv.snapshot_state == "merging"
    for _ in range(10):
        run(kv, (OP_INCR, [b"ctr"]))
    assert kv.snapshot_state is None and len(kv) == 1011 and kv.get(b"ctr") == b"10"


def test_clear_during_snapshot_detaches_it():
    kv = store_of({b"a": b"1"})
    snap = kv.begin_snapshot()
    kv.clear()
    assert kv.snapshot_state is None and len(kv) == 0
    run(kv, (OP_SET, [b"b", b"2"]))
    records, n = snap.next_chunk(10, 1 << 20)
    assert n == 1 and records == b"\x00" + struct.pack("<II", 1, 1) + b"a1"
    snap.release()
    assert dict(kv.items()) == {b"b": b"2"}


KEYS = [b"a", b"b", b"c", b"d", b"e"]
VALUES = st.sampled_from([b"", b"0", b"7", b"-3", b"x", b"9223372036854775807", b"12ab"])
OPS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), VALUES),
    st.tuples(st.just("del"), st.lists(st.sampled_from(KEYS), min_size=1, max_size=3)),
    st.tuples(st.just("append"), st.sampled_from(KEYS), VALUES),
    st.tuples(st.just("incr"), st.sampled_from(KEYS)),
    st.tuples(st.just("begin"), st.integers(1, 3)),
    st.tuples(st.just("step"), st.integers(1, 3)),
    st.tuples(st.just("abort")),
    st.tuples(st.just("merge"), st.integers(1, 3)),
)


def model_apply(model, op):
    """The plain-dict model: (reply, changed model)."""
    kind = op[0]
    if kind == "set":
        model[op[1]] = op[2]
        return "OK"
    if kind == "del":
        n = 0
        for k in op[1]:
            n += model.pop(k, None) is not None
        return n
    if kind == "append":
        model[op[1]] = model.get(op[1], b"") + op[2]
        return len(model[op[1]])
    v = model.get(op[1], b"0")
    try:
        i = int(v)
        assert v == b"%d" % i and -2**63 <= i < 2**63
    except (ValueError, AssertionError):
        return "ERR"
    if i == 2**63 - 1:
        return "ERR"
    model[op[1]] = b"%d" % (i + 1)
    return i + 1


def command(op):
    return {"set": lambda: (OP_SET, [op[1], op[2]]), "del": lambda: (OP_DEL, list(op[1])),
            "append": lambda: (OP_APPEND, [op[1], op[2]]),
            "incr": lambda: (OP_INCR, [op[1]])}[op[0]]()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.dictionaries(st.sampled_from(KEYS), VALUES),
       ops=st.lists(OPS, max_size=60))
def test_interleaved_operations_and_snapshot_steps(initial, ops):
    kv, model = store_of(initial), dict(initial)
    with tempfile.TemporaryDirectory() as d:
        writer, expected, taken = None, None, 0
        for op in ops:
            kind = op[0]
            if kind == "begin":
                if kv.snapshot_state is not None:
                    with pytest.raises(SnapshotBusy):
                        kv.begin_snapshot()
                    continue
                if writer is not None and not writer.done:
                    # The store is free once every chunk is written; the old
                    # writer still has to sync (a node runs one at a time).
                    assert writer.written
                    writer.run(1)
                    assert dict(load_snapshot(os.path.join(d, "snap"))[0].items()) == expected
                taken += 1
                writer = SnapshotWriter(kv, os.path.join(d, "snap"), taken, 1)
                budget, expected = op[1], dict(model)
            elif kind == "step":
                if writer is not None and not writer.done:
                    for _ in range(op[1]):
                        writer.step(budget)
                    if writer.synced:
                        assert dict(load_snapshot(os.path.join(d, "snap"))[0].items()) == expected
            elif kind == "abort":
                if writer is not None and not writer.done:
                    writer.abort()
                    assert leftovers(d) == []
                    writer = None
            elif kind == "merge":
                kv.merge_step(op[1])
            else:
                want = model_apply(model, op)
                got = run(kv, command(op))[0]
                assert ("ERR" if isinstance(got, ErrorReply) else "OK" if got == OK else got) == want
            assert len(kv) == len(model)
            assert dict(kv.items()) == model
            assert kv.memory == sum(100 + len(k) + len(v) for k, v in model.items())
            for k in KEYS:
                assert kv.get(k) == model.get(k)
        if writer is not None and not writer.done and writer._file is not None:
            writer.run(2)
            assert dict(load_snapshot(os.path.join(d, "snap"))[0].items()) == expected
        while not kv.merge_step(2):
            pass
        assert kv.snapshot_state is None and dict(kv.items()) == model and len(kv) == len(model)


# ---- damaged files --------------------------------------------------------------

def small_file(tmp_path, pairs=None):
    path = tmp_path / "snap"
    kv = store_of(pairs if pairs is not None else {b"k%d" % i: b"value%d" % i for i in range(6)})
    w = SnapshotWriter(kv, path, 9, 2, meta=b"m", chunk_bytes=40)   # several chunks
    w.run(2)
    return path, path.read_bytes()


def refused(path, match):
    with pytest.raises(SnapshotError) as e:
        load_snapshot(path)
    assert str(path) in str(e.value)
    assert match in str(e.value), str(e.value)
    return str(e.value)


def test_every_flipped_byte_is_refused(tmp_path):
    path, good = small_file(tmp_path)
    messages = set()
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x40
        path.write_bytes(bad)
        messages.add(refused(path, "").split(": ", 1)[1].split(" (")[0])
    assert any("chunk" in m and "checksum mismatch" in m for m in messages)
    assert any("header checksum mismatch" in m for m in messages)


def test_every_truncation_is_refused(tmp_path):
    path, good = small_file(tmp_path)
    for n in range(len(good)):
        path.write_bytes(good[:n])
        refused(path, "")
    path.write_bytes(good[:len(good) // 2])
    refused(path, "truncated")


def test_wrong_magic_version_trailing_bytes_and_reordered_chunks(tmp_path):
    path, good = small_file(tmp_path)
    path.write_bytes(b"NOTASNAP" + good[8:])
    refused(path, "not a raftfast snapshot")
    # A version this build does not know, with its header checksum right.
    hlen = struct.unpack_from("<I", good, 12)[0]
    header = bytearray(good[:hlen - 4])
    struct.pack_into("<I", header, 8, 3)
    path.write_bytes(bytes(header) + struct.pack("<I", crc32c(bytes(header))) + good[hlen:])
    refused(path, "format version 3; this build reads versions 1, 2")
    path.write_bytes(good + b"\0")
    refused(path, "bytes after the end record")
    # Swap the first two chunks: each is intact, the file checksum is not.
    off = hlen
    frames = []
    for _ in range(2):
        length = struct.unpack_from("<I", good, off)[0]
        frames.append(good[off:off + 12 + length])
        off += 12 + length
    path.write_bytes(good[:hlen] + frames[1] + frames[0] + good[off:])
    refused(path, "file checksum mismatch")
    path.write_bytes(b"")
    refused(path, "truncated")
    refused(tmp_path / "missing", "cannot read")


def test_loader_steps_and_errors_name_the_offset(tmp_path):
    path, good = small_file(tmp_path)
    loader = SnapshotLoader(path)
    steps = 0
    while not loader.step(1):
        steps += 1
    assert steps >= 3 and len(loader.store) == 6
    hlen = struct.unpack_from("<I", good, 12)[0]
    bad = bytearray(good)
    bad[hlen + 14] ^= 1     # inside the first chunk's payload
    path.write_bytes(bad)
    assert f"chunk 0 at offset {hlen}: checksum mismatch" in refused(path, "checksum mismatch")


# ---- failures never leave a temporary file under the real name ------------------

def test_failed_fsync_keeps_the_old_snapshot(tmp_path, monkeypatch):
    path, good = small_file(tmp_path)
    kv = store_of({b"new": b"state"})
    w = SnapshotWriter(kv, path, 10, 2)
    while not w.write_step(1):
        pass

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(SnapshotError, match="making .*tmp durable failed.*Input/output"):
        w.sync()
    monkeypatch.undo()
    assert path.read_bytes() == good and leftovers(tmp_path) == []
    assert kv.snapshot_state is None and dict(kv.items()) == {b"new": b"state"}


def test_abort_midway_and_failed_write(tmp_path, monkeypatch):
    kv = store_of({b"k%d" % i: b"v" for i in range(50)})
    w = SnapshotWriter(kv, tmp_path / "snap", 1, 1)
    w.step(10)
    run(kv, (OP_DEL, [b"k1"]))
    w.abort()
    assert os.listdir(tmp_path) == [] and kv.snapshot_state != "frozen"
    assert len(kv) == 49
    with pytest.raises(SnapshotError, match="aborted"):
        w.write_step(10)
    while not kv.merge_step(100):
        pass
    w = SnapshotWriter(kv, tmp_path / "snap", 2, 1)

    def broken_write(data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(w._file, "write", broken_write)
    with pytest.raises(SnapshotError, match="No space left"):
        w.run(10)
    assert os.listdir(tmp_path) == [] and kv.snapshot_state != "frozen"


# ---- streaming ------------------------------------------------------------------

def test_read_chunks_resumes_and_outlives_a_newer_snapshot(tmp_path):
    path, good = small_file(tmp_path, {b"k%d" % i: b"v" * 50 for i in range(40)})
    assert b"".join(read_chunks(path, 100)) == good
    assert all(len(c) == 100 for c in list(read_chunks(path, 100))[:-1])
    assert b"".join(read_chunks(path, 64, offset=300)) == good[300:]
    stream = read_chunks(path, 256)
    first = next(stream)
    write_snapshot(store_of({b"other": b"state"}), path, 99, 5)   # renamed over it
    assert first + b"".join(stream) == good
    assert read_snapshot_meta(path).index == 99
