"""raftfast._logstore: the segmented write-ahead log, checked against the
pure-Python record format in tests/reference/logrecord_py.py."""
import errno
import logging
import os
import random
import resource
import struct
import threading

import pytest

from raftfast._logstore import LogCorruptError, LogStore, LogStoreError
from tests.reference import logrecord_py as ref


def block(*entries):
    """An entry block (raftfast.messages format) of (term, data) pairs."""
    return b"".join(struct.pack("<IQB", len(d), t, 0) + d for t, d in entries)


def batch(term, n, size=8, tag=b""):
    return block(*[(term, (tag + b"%d" % i).ljust(size, b".")) for i in range(n)])


def replayed(store):
    out = []
    store.replay(lambda f, b, c: out.append(("entries", (f, bytes(b), c))),
                 lambda t, v, c: out.append(("hard_state", (t, v, c))))
    return out


def on_disk(path):
    """Every record of every segment, decoded by the reference twin."""
    recs = []
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            recs.extend(ref.decode_all(f.read()))
    return recs


def wal_fds(path):
    """This process's fds open on segment files under path."""
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)) and target.endswith(".wal"):
            fds[int(fd)] = target
    return fds


@pytest.fixture
def wal(tmp_path):
    return tmp_path / "wal"


def test_round_trip_with_truncating_overwrite(wal):
    ops = [
        ("entries", (1, batch(1, 3), 3)),
        ("entries", (4, batch(1, 2), 2)),
        ("hard_state", (2, 1, 5)),
        ("entries", (3, batch(2, 4, tag=b"new"), 4)),  # cuts 3..5 and replaces them
        ("hard_state", (3, 0, 6)),
        ("entries", (7, batch(3, 1, size=300), 1)),
    ]
    with LogStore(wal) as s:
        assert s.hard_state == (0, 0, 0)
        for kind, f in ops:
            if kind == "entries":
                s.append_entries(*f)
            else:
                s.save_hard_state(*f)
        s.sync()
    expected = [("hard_state", (0, 0, 0))] + ops  # a new segment starts with the hard state
    assert on_disk(wal) == expected
    with LogStore(wal) as s:
        assert s.hard_state == (3, 0, 6)
        assert replayed(s) == expected
        assert len(s.segments) == 1


def test_replay_hands_blocks_per_record(wal):
    with LogStore(wal) as s:
        s.append_entries(1, batch(1, 100), 100)
        calls = []
        s.replay(lambda f, b, c: calls.append((f, c, len(b))), lambda *hs: None)
    assert calls == [(1, 100, len(batch(1, 100)))]


@pytest.mark.parametrize("seed", range(20))
def test_c_bytes_match_twin_encoding(wal, seed):
    rng = random.Random(seed)
    written = []
    with LogStore(wal, segment_bytes=1 << 20) as s:
        nxt = 1
        for _ in range(30):
            if rng.random() < 0.3:
                hs = (rng.randrange(1 << 63), rng.randrange(1 << 63), rng.randrange(1 << 63))
                s.save_hard_state(*hs)
                written.append(ref.encode_hard_state(*hs))
            else:
                first = rng.randint(1, nxt)
                n = rng.randint(1, 20)
                b = block(*[(rng.randrange(1 << 64), os.urandom(rng.randrange(50)))
                            for _ in range(n)])
                s.append_entries(first, b, n)
                written.append(ref.encode_entries(first, b, n))
                nxt = first + n
    with open(wal / ref.segment_name(1), "rb") as f:
        assert f.read() == ref.encode_hard_state(0, 0, 0) + b"".join(written)


def test_twin_written_log_opens(wal):
    b1, b2 = batch(1, 2), batch(2, 3)
    ref.write_segment(wal, 5, [ref.encode_hard_state(0, 0, 0), ref.encode_entries(1, b1, 2),
                               ref.encode_hard_state(2, 7, 1)])
    ref.write_segment(wal, 6, [ref.encode_hard_state(2, 7, 1), ref.encode_entries(2, b2, 3)])
    with LogStore(wal) as s:
        assert s.hard_state == (2, 7, 1)
        assert replayed(s) == [
            ("hard_state", (0, 0, 0)), ("entries", (1, b1, 2)), ("hard_state", (2, 7, 1)),
            ("hard_state", (2, 7, 1)), ("entries", (2, b2, 3))]
        s.append_entries(5, b1, 2)  # appends go on in the last segment
        assert [os.path.basename(p) for p in s.segments] == [ref.segment_name(5), ref.segment_name(6)]
    assert on_disk(wal)[-1] == ("entries", (5, b1, 2))


def test_segments_roll_and_each_starts_with_the_hard_state(wal):
    limit = 400
    expected, hs, idx = [], (0, 0, 0), 1
    with LogStore(wal, segment_bytes=limit) as s:
        for i in range(40):
            if i % 7 == 3:
                hs = (i, i % 3, idx - 1)
                s.save_hard_state(*hs)
                expected.append(("hard_state", hs))
            b = batch(i, 3)
            s.append_entries(idx, b, 3)
            expected.append(("entries", (idx, b, 3)))
            idx += 3
        s.sync()
        segs = s.segments
    assert len(segs) > 5
    assert [os.path.basename(p) for p in segs] == [ref.segment_name(i) for i in range(1, len(segs) + 1)]
    all_recs = []
    for p in segs:
        assert os.path.getsize(p) <= limit
        with open(p, "rb") as f:
            recs = ref.decode_all(f.read())
        assert recs[0][0] == "hard_state"
        # The leading hard state is the one current when the segment began.
        current = [r for r in all_recs if r[0] == "hard_state"]
        if recs[1:2] and recs[1][0] == "entries" and current:
            assert recs[0] == current[-1]
        all_recs.extend(recs)
    assert [r for r in all_recs if r[0] == "entries"] == [r for r in expected if r[0] == "entries"]
    with LogStore(wal, segment_bytes=limit) as s:
        assert s.hard_state == hs
        assert [r for r in replayed(s) if r[0] == "entries"] == \
            [r for r in expected if r[0] == "entries"]


def test_record_larger_than_a_segment_gets_its_own(wal):
    big = batch(1, 1, size=1000)
    with LogStore(wal, segment_bytes=200) as s:
        s.append_entries(1, batch(1, 1), 1)
        s.append_entries(2, big, 1)
        s.append_entries(3, big, 1)
        s.append_entries(4, batch(1, 1), 1)
        assert len(s.segments) == 4
    with LogStore(wal, segment_bytes=200) as s:
        assert [r[1][0] for r in replayed(s) if r[0] == "entries"] == [1, 2, 3, 4]


def _three_records(wal):
    with LogStore(wal) as s:
        s.append_entries(1, batch(1, 2), 2)
        s.save_hard_state(1, 1, 2)
        s.append_entries(3, batch(1, 3), 3)
    path = wal / ref.segment_name(1)
    data = path.read_bytes()
    last = len(data) - len(ref.encode_entries(3, batch(1, 3), 3))
    return path, data, last


def test_torn_tail_cut_at_every_offset_is_repaired(wal, caplog):
    path, data, last = _three_records(wal)
    kept = [("hard_state", (0, 0, 0)), ("entries", (1, batch(1, 2), 2)), ("hard_state", (1, 1, 2))]
    for cut in range(last, len(data)):
        path.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
            s = LogStore(wal)
        try:
            if cut > last:
                assert any("torn" in r.getMessage() and str(path) in r.getMessage()
                           for r in caplog.records), cut
            assert os.path.getsize(path) == last
            assert replayed(s) == kept
            assert s.hard_state == (1, 1, 2)
            s.append_entries(3, batch(4, 1), 1)  # the repaired store takes appends
            s.sync()
        finally:
            s.close()
        with LogStore(wal) as s:
            assert replayed(s) == kept + [("entries", (3, batch(4, 1), 1))]


@pytest.mark.parametrize("tail", ["flip", "zeros"])
def test_damaged_last_record_with_nothing_after_is_repaired(wal, caplog, tail):
    path, data, last = _three_records(wal)
    if tail == "flip":
        damaged = data[:-5] + bytes([data[-5] ^ 0x40]) + data[-4:]
    else:  # a crash that extended the file but never wrote its data
        damaged = data[:last] + bytes(len(data) - last)
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
        with LogStore(wal) as s:
            assert [r[0] for r in replayed(s)] == ["hard_state", "entries", "hard_state"]
    assert "torn" in caplog.text
    assert os.path.getsize(path) == last


def test_flipped_byte_in_a_middle_record_is_refused(wal):
    path, data, _ = _three_records(wal)
    start = ref.HEADER_SIZE + 24  # after the leading hard state record
    end = start + len(ref.encode_entries(1, batch(1, 2), 2))
    for pos in range(start, end):
        path.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:])
        with pytest.raises(LogCorruptError) as ei:
            LogStore(wal)
        assert ei.value.offset == start, pos
        assert str(path) in str(ei.value) and f"offset {start}" in str(ei.value)
    assert path.read_bytes() != data  # nothing was "repaired"


def test_damage_in_a_segment_that_is_not_the_last_is_refused(wal):
    with LogStore(wal, segment_bytes=200) as s:
        for i in range(1, 10):
            s.append_entries(i, batch(1, 1, size=60), 1)
        segs = s.segments
    assert len(segs) >= 3
    first = segs[0]
    data = open(first, "rb").read()
    with open(first, "wb") as f:  # even its last record: only the log's tail may be torn
        f.write(data[:-1] + bytes([data[-1] ^ 0xff]))
    with pytest.raises(LogCorruptError) as ei:
        LogStore(wal, segment_bytes=200)
    assert first in str(ei.value)
    assert ei.value.offset == len(data) - len(ref.encode_entries(1, batch(1, 1, size=60), 1))
    with open(first, "wb") as f:
        f.write(data[:-3])
    with pytest.raises(LogCorruptError):
        LogStore(wal, segment_bytes=200)


@pytest.mark.parametrize("rec,why", [
    (ref.encode(ref.ENTRIES, 1, 1, batch(1, 1), version=2), "version 2"),
    (ref.encode(7, 1, 1, batch(1, 1)), "type 7"),
    (ref.encode(ref.HARD_STATE, 0, 0, b"\0" * 8), "hard state"),
])
def test_intact_record_of_unknown_kind_is_refused_even_at_the_tail(wal, rec, why):
    ref.write_segment(wal, 1, [ref.encode_hard_state(0, 0, 0), rec])
    with pytest.raises(LogCorruptError, match=why) as ei:
        LogStore(wal)
    assert ei.value.offset == 48


def test_garbage_then_valid_record_is_refused(wal):
    ref.write_segment(wal, 1, [ref.encode_hard_state(0, 0, 0), os.urandom(40),
                               ref.encode_hard_state(1, 0, 0)])
    with pytest.raises(LogCorruptError) as ei:
        LogStore(wal)
    assert ei.value.offset == 48


def test_missing_segment_is_refused(wal):
    for seq in (1, 2, 4):
        ref.write_segment(wal, seq, [ref.encode_hard_state(0, 0, 0)])
    with pytest.raises(LogCorruptError, match="segment 3 is missing"):
        LogStore(wal)


def test_empty_last_segment_gets_the_hard_state(wal):
    ref.write_segment(wal, 1, [ref.encode_hard_state(4, 2, 0), ref.encode_entries(1, batch(4, 1), 1)])
    ref.write_segment(wal, 2, [])  # created by a roll just before a crash
    with LogStore(wal) as s:
        s.append_entries(2, batch(4, 1), 1)
    assert ref.decode_all((wal / ref.segment_name(2)).read_bytes()) == [
        ("hard_state", (4, 2, 0)), ("entries", (2, batch(4, 1), 1))]


def test_rolled_segments_stay_open_until_a_sync_and_fsync_never_keeps_none(wal, tmp_path):
    with LogStore(wal, segment_bytes=200) as s:
        for i in range(1, 8):
            s.append_entries(i, batch(1, 1, size=80), 1)
        assert len(s.segments) >= 4
        assert len(wal_fds(wal)) == len(s.segments)  # kept for the next sync
        s.sync()
        assert list(wal_fds(wal).values()) == [s.segments[-1]]
    assert wal_fds(wal) == {}
    other = tmp_path / "never"
    with LogStore(other, fsync=False, segment_bytes=200) as s:
        for i in range(1, 8):
            s.append_entries(i, batch(1, 1, size=80), 1)
        assert list(wal_fds(other).values()) == [s.segments[-1]]
        assert s.sync() is None and not s.fsync


def test_fsync_never_round_trip(wal):
    with LogStore(wal, fsync=False, segment_bytes=300) as s:
        for i in range(1, 20):
            s.append_entries(i, batch(2, 1), 1)
        s.save_hard_state(2, 1, 19)
        s.sync()
    with LogStore(wal, fsync=False) as s:
        assert s.hard_state == (2, 1, 19)
        assert [r[1][0] for r in replayed(s) if r[0] == "entries"] == list(range(1, 20))


def test_sync_from_a_thread_while_appending(wal):
    s = LogStore(wal, segment_bytes=2000)
    done = threading.Event()
    errors, syncs = [], [0]

    def syncer():
        try:
            while not done.is_set():
                s.sync()
                syncs[0] += 1
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    t = threading.Thread(target=syncer)
    t.start()
    try:
        for i in range(1, 600):
            s.append_entries(i, batch(i, 1), 1)
            if i % 50 == 0:
                s.save_hard_state(i, 1, i - 1)
    finally:
        done.set()
        t.join()
    s.sync()
    assert errors == [] and syncs[0] > 0
    assert len(s.segments) > 3
    s.close()
    with LogStore(wal) as s:
        assert [r[1] for r in replayed(s) if r[0] == "entries"] == \
            [(i, batch(i, 1), 1) for i in range(1, 600)]
        assert s.hard_state == (550, 1, 549)


def test_failed_write_raises_and_the_store_stays_failed(wal, caplog):
    s = LogStore(wal)
    s.append_entries(1, batch(1, 1), 1)
    s.sync()
    seg = s.segments[-1]
    size = os.path.getsize(seg)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # A file-size limit makes the kernel refuse the write for real (EFBIG);
    # Python ignores SIGXFSZ, so the error comes back from write(2).
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 30, hard))
    try:
        with pytest.raises(LogStoreError) as ei:
            s.append_entries(2, batch(1, 4, size=20), 4)  # half fits: a short write, then EFBIG
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert ei.value.errno == errno.EFBIG and ei.value.filename == seg
    assert s.failed
    for call in (lambda: s.append_entries(2, batch(1, 1), 1), lambda: s.save_hard_state(1, 1, 1),
                 s.sync, lambda: s.replay(None, None)):
        with pytest.raises(LogStoreError, match="earlier failure"):
            call()
    s.close()
    assert os.path.getsize(seg) == size + 30  # the partial record is on disk...
    with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
        with LogStore(wal) as s:  # ...and is cut back as a torn tail
            assert [r[1][0] for r in replayed(s) if r[0] == "entries"] == [1]
    assert "torn" in caplog.text


def test_failed_fsync_raises_and_the_store_stays_failed(wal):
    s = LogStore(wal)
    s.append_entries(1, batch(1, 1), 1)
    (fd,) = wal_fds(wal)
    r, w = os.pipe()
    try:
        os.dup2(w, fd)  # the segment's fd now names a pipe, which cannot be fsynced
        with pytest.raises(LogStoreError) as ei:
            s.sync()
        assert ei.value.errno == errno.EINVAL and ei.value.filename == s.segments[-1]
        assert "fsync" in str(ei.value)
        with pytest.raises(LogStoreError):
            s.append_entries(2, batch(1, 1), 1)
        with pytest.raises(LogStoreError):
            s.sync()
    finally:
        s.close()
        os.close(r)
        os.close(w)


def test_bad_arguments_and_closed_store(wal):
    s = LogStore(wal)
    for args in ((0, batch(1, 1), 1), (1, batch(1, 1), 0), (1, b"", 1)):
        with pytest.raises(ValueError):
            s.append_entries(*args)
    assert not s.failed  # a caller's mistake writes nothing and breaks nothing
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(ValueError):
        s.append_entries(1, batch(1, 1), 1)
    with pytest.raises(ValueError):
        LogStore(wal, segment_bytes=10)
