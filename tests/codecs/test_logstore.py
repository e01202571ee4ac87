"""raftfast._logstore: the segmented write-ahead log, checked against the
pure-Python record format in tests/reference/logrecord_py.py.

Stores here use small segments (SEG bytes) so that preallocating one --
zero-filling and fsyncing it -- costs next to nothing.
"""
import errno
import gc
import logging
import os
import random
import resource
import struct
import threading

import pytest

from raftfast._entrylog import decode_entries
from raftfast._logstore import LogCorruptError, LogStore, LogStoreError
from tests.reference import logrecord_py as ref

SEG = 4096

def block(*entries):
    """An entry block (raftfast.core.messages format) of (term, data) pairs."""
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
    for name in sorted(n for n in os.listdir(path) if n.endswith(".wal")):
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


def tmp_files(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".tmp"))


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
    with LogStore(wal, segment_bytes=SEG) as s:
        assert s.hard_state == (0, 0, 0)
        for kind, f in ops:
            if kind == "entries":
                s.append_entries(*f)
            else:
                s.save_hard_state(*f)
        s.sync()
    expected = [("hard_state", (0, 0, 0))] + ops  # a new segment starts with the hard state
    assert on_disk(wal) == expected
    assert os.path.getsize(wal / ref.segment_name(1)) == SEG  # preallocated
    with LogStore(wal, segment_bytes=SEG) as s:
        assert s.hard_state == (3, 0, 6)
        assert replayed(s) == expected
        assert len(s.segments) == 1


def test_replay_hands_blocks_per_record(wal):
    with LogStore(wal, segment_bytes=SEG) as s:
        s.append_entries(1, batch(1, 100), 100)
        calls = []
        s.replay(lambda f, b, c: calls.append((f, c, len(b))), lambda *hs: None)
    assert calls == [(1, 100, len(batch(1, 100)))]


@pytest.mark.parametrize("fsync", [True, False])
@pytest.mark.parametrize("seed", range(20))
def test_c_bytes_match_twin_encoding(wal, seed, fsync):
    rng = random.Random(seed)
    written = []
    with LogStore(wal, fsync=fsync, segment_bytes=64 << 10) as s:
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
    records = ref.encode_hard_state(0, 0, 0) + b"".join(written)
    with open(wal / ref.segment_name(1), "rb") as f:
        # With fsync on the segment is preallocated: zeros after the records.
        assert f.read() == (ref.preallocated(records, 64 << 10) if fsync else records)


@pytest.mark.parametrize("size", [None, SEG, 1000], ids=["plain", "preallocated", "smaller"])
def test_twin_written_log_opens(wal, size):
    # Plain segments are what an older raftfast (or fsync off) wrote.
    b1, b2 = batch(1, 2), batch(2, 3)
    ref.write_segment(wal, 5, [ref.encode_hard_state(0, 0, 0), ref.encode_entries(1, b1, 2),
                               ref.encode_hard_state(2, 7, 1)], size=size)
    ref.write_segment(wal, 6, [ref.encode_hard_state(2, 7, 1), ref.encode_entries(2, b2, 3)], size=size)
    with LogStore(wal, segment_bytes=SEG) as s:
        assert s.hard_state == (2, 7, 1)
        assert replayed(s) == [
            ("hard_state", (0, 0, 0)), ("entries", (1, b1, 2)), ("hard_state", (2, 7, 1)),
            ("hard_state", (2, 7, 1)), ("entries", (2, b2, 3))]
        # The last segment is preallocated at open (fsync on), so appends
        # go on in it overwriting zeros.
        assert os.path.getsize(wal / ref.segment_name(6)) == SEG
        s.append_entries(5, b1, 2)
        assert [os.path.basename(p) for p in s.segments] == [ref.segment_name(5), ref.segment_name(6)]
    assert on_disk(wal)[-1] == ("entries", (5, b1, 2))
    seg5 = (wal / ref.segment_name(5)).read_bytes()
    assert len(seg5) == (size or ref.records_end(seg5))  # only the last segment is extended


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
    """A preallocated segment: hard state, entries, hard state, entries,
    then zeros.  Returns (path, its bytes, where the last record starts,
    where the records end)."""
    with LogStore(wal, segment_bytes=SEG) as s:
        s.append_entries(1, batch(1, 2), 2)
        s.save_hard_state(1, 1, 2)
        s.append_entries(3, batch(1, 3), 3)
    path = wal / ref.segment_name(1)
    data = path.read_bytes()
    end = ref.records_end(data)
    assert len(data) == SEG and end < SEG
    return path, data, end - len(ref.encode_entries(3, batch(1, 3), 3)), end


KEPT = [("hard_state", (0, 0, 0)), ("entries", (1, batch(1, 2), 2)), ("hard_state", (1, 1, 2))]


@pytest.mark.parametrize("layout", ["preallocated", "plain"])
def test_torn_tail_cut_at_every_offset_is_repaired(wal, caplog, layout):
    # preallocated: the last write reached the disk only up to `cut`, zeros
    # after; plain: an appending writer's file ends at `cut` (older raftfast,
    # or a segment created while the preparer was behind).
    path, data, last, end = _three_records(wal)
    for cut in range(last, end):
        path.write_bytes(data[:cut] + (bytes(SEG - cut) if layout == "preallocated" else b""))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
            s = LogStore(wal, segment_bytes=SEG)
        try:
            torn = [r.getMessage() for r in caplog.records if "torn" in r.getMessage()]
            if any(data[last:cut]):  # (a cut inside the crc may leave only zeros: no record begun)
                assert torn and str(path) in torn[0] and f"offset {last}" in torn[0], cut
            else:
                assert not torn
            # Zeroed from the torn record on, and preallocated: the size is kept.
            assert path.read_bytes() == ref.preallocated(data[:last], SEG)
            assert replayed(s) == KEPT
            assert s.hard_state == (1, 1, 2)
            s.append_entries(3, batch(4, 1), 1)  # the repaired store takes appends
            s.sync()
        finally:
            s.close()
        with LogStore(wal, segment_bytes=SEG) as s:
            assert replayed(s) == KEPT + [("entries", (3, batch(4, 1), 1))]


def test_torn_record_with_garbage_after_it_is_zeroed_to_the_garbage_end(wal, caplog):
    path, data, last, end = _three_records(wal)
    # The torn record's first 40 bytes arrived, then nothing, then a stretch
    # of its later bytes (written back out of order).
    damaged = bytearray(data)
    damaged[last + 40:end] = bytes(end - last - 40)
    damaged[end + 500:end + 800] = os.urandom(300)
    damaged[end + 799] = 0xAA  # where the garbage ends, whatever urandom gave
    path.write_bytes(bytes(damaged))
    with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
        with LogStore(wal, segment_bytes=SEG) as s:
            assert replayed(s) == KEPT
    assert f"offset {last} ({end + 800 - last} bytes) zeroed" in caplog.text
    assert path.read_bytes() == ref.preallocated(data[:last], SEG)


@pytest.mark.parametrize("tail", ["flip", "zeros"])
def test_damaged_last_record_with_nothing_after(wal, caplog, tail):
    path, data, last, end = _three_records(wal)
    if tail == "flip":  # a torn record: repaired
        damaged = data[:end - 5] + bytes([data[end - 5] ^ 0x40]) + data[end - 4:]
    else:  # never written: the end marker is where the record would have begun
        damaged = data[:last] + bytes(SEG - last)
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
        with LogStore(wal, segment_bytes=SEG) as s:
            assert replayed(s) == KEPT
    assert ("torn" in caplog.text) == (tail == "flip")
    assert path.read_bytes() == ref.preallocated(data[:last], SEG)


def test_flipped_byte_in_a_middle_record_is_refused(wal):
    path, data, _, _ = _three_records(wal)
    start = ref.HEADER_SIZE + 24  # after the leading hard state record
    end = start + len(ref.encode_entries(1, batch(1, 2), 2))
    for pos in range(start, end):
        path.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:])
        with pytest.raises(LogCorruptError) as ei:
            LogStore(wal, segment_bytes=SEG)
        assert ei.value.offset == start, pos
        assert str(path) in str(ei.value) and f"offset {start}" in str(ei.value)
    assert path.read_bytes() != data  # nothing was "repaired"


def _torn_tail_repaired(wal, caplog, path, damaged, end, kept, zeroed_end):
    """Open a log whose last segment is `damaged`; it must be repaired as a
    torn tail from `end` to `zeroed_end` (as the twin says too), keeping
    the records `kept`, then take appends and reopen cleanly."""
    assert ref.last_segment_repair(damaged) == (end, zeroed_end)
    path.write_bytes(damaged)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
        s = LogStore(wal, segment_bytes=SEG)
    try:
        torn = [r.getMessage() for r in caplog.records if "torn" in r.getMessage()]
        assert len(torn) == 1 and str(path) in torn[0]
        assert f"offset {end} ({zeroed_end - end} bytes) zeroed" in torn[0]
        # Zeroed from the torn tail's start on, and preallocated: the size is kept.
        assert path.read_bytes() == ref.preallocated(damaged[:end], SEG)
        assert replayed(s) == kept
        nxt = 1 + sum(r[1][2] for r in kept if r[0] == "entries")
        s.append_entries(nxt, batch(5, 2), 2)  # the repaired store takes appends
        s.sync()
    finally:
        s.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
        with LogStore(wal, segment_bytes=SEG) as s:
            assert replayed(s) == kept + [("entries", (nxt, batch(5, 2), 2))]
    assert "torn" not in caplog.text  # nothing left to repair
    assert ref.last_segment_repair(path.read_bytes())[1] is None


@pytest.mark.parametrize("where", ["marker+24", "middle", "file end"])
def test_garbage_after_the_end_marker_is_zeroed_as_a_torn_tail(wal, caplog, where):
    # In the last segment, non-zero bytes after the end marker with no
    # intact record among them are a torn last write, never acknowledged.
    path, data, _, end = _three_records(wal)
    pos = {"marker+24": end + 24, "middle": (end + SEG) // 2, "file end": SEG - 1}[where]
    damaged = data[:pos] + b"\x01" + data[pos + 1:]
    _torn_tail_repaired(wal, caplog, path, damaged, end,
                        KEPT + [("entries", (3, batch(1, 3), 3))], pos + 1)


@pytest.mark.parametrize("layout", ["preallocated", "plain"])
@pytest.mark.parametrize("lost", [24, 40, "all but its last byte"])
def test_last_write_whose_header_page_was_lost_is_zeroed_as_a_torn_tail(wal, caplog, layout, lost):
    # The last record's first `lost` bytes (its header's page) never reached
    # the disk, its later bytes did: an end marker, then non-zero bytes.
    path, data, last, end = _three_records(wal)
    if not isinstance(lost, int):
        lost = end - last - 1
    damaged = data[:last] + bytes(lost) + data[last + lost:end]
    if layout == "preallocated":
        damaged += bytes(SEG - end)
    zeroed_end = len(damaged.rstrip(b"\0"))
    assert zeroed_end > last + lost
    _torn_tail_repaired(wal, caplog, path, damaged, last, KEPT, zeroed_end)


@pytest.mark.parametrize("behind", ["lost record, then an intact one",
                                    "header page lost, intact record far behind",
                                    "garbage after the marker, intact record far behind"])
def test_intact_record_behind_garbage_after_the_end_marker_is_refused(wal, behind):
    # An intact record after the end marker may be an acknowledged entry:
    # zeroing it would withdraw it, so this is damage, not a torn tail.
    path, data, last, end = _three_records(wal)
    hs = ref.encode_hard_state(7, 1, 5)
    damaged = bytearray(data)
    if behind == "lost record, then an intact one":
        damaged[last:end] = bytes(end - last)
        marker, at = last, end
    elif behind == "header page lost, intact record far behind":
        damaged[last:last + 40] = bytes(40)
        marker, at = last, 3000
    else:
        damaged[end + 100:end + 140] = b"\xff" + os.urandom(39)
        marker, at = end, 3000
    damaged[at:at + len(hs)] = hs
    damaged = bytes(damaged)
    with pytest.raises(ref.RecordError, match=f"intact record at {at}"):
        ref.last_segment_repair(damaged)
    path.write_bytes(damaged)
    with pytest.raises(LogCorruptError, match=f"after the end of the log at {marker}.*"
                                              f"an intact record follows at {at}") as ei:
        LogStore(wal, segment_bytes=SEG)
    assert ei.value.offset == marker and str(path) in str(ei.value)
    assert path.read_bytes() == damaged  # left alone


@pytest.mark.parametrize("seed", range(40))
def test_last_segment_repair_matches_the_twin(wal, seed):
    # Random damage to the last write and after it: the store repairs or
    # refuses exactly as the twin's last_segment_repair says.
    rng = random.Random(seed)
    path, data, last, end = _three_records(wal)
    damaged = bytearray(data)
    if rng.random() < 0.4:  # its header lost: an end marker where it began
        lo, hi = last, rng.randint(last + ref.HEADER_SIZE, end)
    else:
        lo = rng.randint(last, end)
        hi = rng.randint(lo, end)
    damaged[lo:hi] = bytes(hi - lo)  # a stretch of the last write lost
    for _ in range(rng.randint(0, 3)):  # stray non-zero bytes behind it
        at, n = rng.randrange(end, SEG - 8), rng.randint(1, 8)
        damaged[at:at + n] = rng.randbytes(n)
    if rng.random() < 0.3:  # an intact record behind it all
        hs = ref.encode_hard_state(9, 9, 9)
        at = rng.randrange(end, SEG - len(hs))
        damaged[at:at + len(hs)] = hs
    damaged = bytes(damaged)
    assert len(damaged) == SEG
    path.write_bytes(damaged)
    try:
        want = ref.last_segment_repair(damaged)
    except ref.RecordError:
        with pytest.raises(LogCorruptError):
            LogStore(wal, segment_bytes=SEG)
        assert path.read_bytes() == damaged
        return
    records_end, zeroed_end = want
    repaired = damaged[:records_end] + bytes(SEG - records_end) if zeroed_end else damaged
    with LogStore(wal, segment_bytes=SEG) as s:
        assert replayed(s) == ref.decode_all(repaired)
    assert path.read_bytes() == repaired


def _rolled(wal):
    """A log of several preallocated segments; returns the segment paths."""
    with LogStore(wal, segment_bytes=200) as s:
        for i in range(1, 10):
            s._wait_prepared()  # every roll takes a prepared segment
            s.append_entries(i, batch(1, 1, size=60), 1)
        segs = s.segments
    assert len(segs) >= 3 and all(os.path.getsize(p) == 200 for p in segs)
    return segs


def test_damage_in_a_segment_that_is_not_the_last_is_refused(wal):
    first = _rolled(wal)[0]
    data = open(first, "rb").read()
    end = ref.records_end(data)
    last = end - len(ref.encode_entries(1, batch(1, 1, size=60), 1))
    assert 0 < end < len(data)  # it rolled before filling up: an end marker, then zeros
    with open(first, "wb") as f:  # even its last record: only the log's tail may be torn
        f.write(data[:end - 1] + bytes([data[end - 1] ^ 0xff]) + data[end:])
    with pytest.raises(LogCorruptError) as ei:
        LogStore(wal, segment_bytes=200)
    assert first in str(ei.value) and "not the last" in str(ei.value)
    assert ei.value.offset == last
    with open(first, "wb") as f:  # torn: its last bytes never written
        f.write(data[:end - 3] + bytes(len(data) - end + 3))
    with pytest.raises(LogCorruptError) as ei:
        LogStore(wal, segment_bytes=200)
    assert ei.value.offset == last
    with open(first, "wb") as f:  # garbage after its end marker
        f.write(data[:-1] + b"\x07")
    with pytest.raises(LogCorruptError, match="after the end of the log") as ei:
        LogStore(wal, segment_bytes=200)
    assert ei.value.offset == len(data) - 1 and first in str(ei.value)


@pytest.mark.parametrize("rec,why", [
    (ref.encode(ref.ENTRIES, 1, 1, batch(1, 1), version=2), "version 2"),
    (ref.encode(7, 1, 1, batch(1, 1)), "type 7"),
    (ref.encode(ref.HARD_STATE, 0, 0, b"\0" * 8), "hard state"),
])
@pytest.mark.parametrize("size", [None, SEG], ids=["plain", "preallocated"])
def test_intact_record_of_unknown_kind_is_refused_even_at_the_tail(wal, rec, why, size):
    ref.write_segment(wal, 1, [ref.encode_hard_state(0, 0, 0), rec], size=size)
    with pytest.raises(LogCorruptError, match=why) as ei:
        LogStore(wal, segment_bytes=SEG)
    assert ei.value.offset == 48


@pytest.mark.parametrize("size", [None, SEG], ids=["plain", "preallocated"])
def test_garbage_then_valid_record_is_refused(wal, size):
    garbage = b"\xff" + os.urandom(39)
    ref.write_segment(wal, 1, [ref.encode_hard_state(0, 0, 0), garbage,
                               ref.encode_hard_state(1, 0, 0)], size=size)
    with pytest.raises(LogCorruptError) as ei:
        LogStore(wal, segment_bytes=SEG)
    assert ei.value.offset == 48


def test_torn_record_then_an_intact_one_far_behind_is_refused(wal):
    # Past zeros, too: an intact record anywhere after a bad one is damage.
    hs = ref.encode_hard_state(1, 0, 0)
    data = bytearray(ref.preallocated(ref.encode_hard_state(0, 0, 0) + b"\x01" * 30, SEG))
    data[3000:3000 + len(hs)] = hs
    ref.write_segment(wal, 1, [bytes(data)])
    with pytest.raises(LogCorruptError, match="an intact record follows at 3000") as ei:
        LogStore(wal, segment_bytes=SEG)
    assert ei.value.offset == 48


def test_missing_segment_is_refused(wal):
    for seq in (1, 2, 4):
        ref.write_segment(wal, seq, [ref.encode_hard_state(0, 0, 0)])
    with pytest.raises(LogCorruptError, match="segment 3 is missing"):
        LogStore(wal)


@pytest.mark.parametrize("size", [None, SEG], ids=["plain", "preallocated"])
def test_empty_last_segment_gets_the_hard_state(wal, size):
    ref.write_segment(wal, 1, [ref.encode_hard_state(4, 2, 0), ref.encode_entries(1, batch(4, 1), 1)])
    ref.write_segment(wal, 2, [], size=size)  # created by a roll just before a crash
    with LogStore(wal, segment_bytes=SEG) as s:
        s.append_entries(2, batch(4, 1), 1)
    assert ref.decode_all((wal / ref.segment_name(2)).read_bytes()) == [
        ("hard_state", (4, 2, 0)), ("entries", (2, batch(4, 1), 1))]
    assert os.path.getsize(wal / ref.segment_name(2)) == SEG


def test_segments_are_preallocated_and_the_next_one_prepared(wal):
    with LogStore(wal, segment_bytes=SEG) as s:
        # The first segment is zero-filled before its first record.
        first = wal / ref.segment_name(1)
        assert first.read_bytes() == ref.preallocated(ref.encode_hard_state(0, 0, 0), SEG)
        assert s._wait_prepared()
        # The next one waits under a .tmp name, zeros, fsynced.
        assert tmp_files(wal) == ["0000000000000002.tmp"]
        assert (wal / "0000000000000002.tmp").read_bytes() == bytes(SEG)
        assert [os.path.basename(p) for p in s.segments] == [ref.segment_name(1)]
    assert tmp_files(wal) == []  # close deletes the prepared segment


def test_fsync_never_preallocates_nothing(wal):
    with LogStore(wal, fsync=False, segment_bytes=SEG) as s:
        s.append_entries(1, batch(1, 1), 1)
        assert not s._wait_prepared()
        assert tmp_files(wal) == []
        assert os.path.getsize(s.segments[0]) == 48 + len(ref.encode_entries(1, batch(1, 1), 1))


def test_rolls_with_and_without_a_prepared_segment(wal, caplog):
    rec = ref.encode_entries(1, batch(1, 1, size=1000), 1)
    per_seg = (SEG - 48) // len(rec)  # records that fit after the leading hard state
    idx = [0]

    def fill_segment(s):
        for _ in range(per_seg):
            idx[0] += 1
            s.append_entries(idx[0], batch(1, 1, size=1000), 1)

    with LogStore(wal, segment_bytes=SEG) as s:
        fill_segment(s)
        assert s._wait_prepared()
        s._hold_preparer(True)  # from here the disk is "slow": nothing new gets prepared
        fill_segment(s)  # rolls into the prepared segment 2
        assert os.path.getsize(wal / ref.segment_name(2)) == SEG
        assert tmp_files(wal) == []  # 2.tmp was renamed; 3.tmp is asked for, not begun
        fill_segment(s)  # the writer outruns the preparer: segment 3 is plain
        assert os.path.getsize(wal / ref.segment_name(3)) == 48 + per_seg * len(rec)
        s._hold_preparer(False)
        assert s._wait_prepared()
        assert tmp_files(wal) == ["0000000000000003.tmp"]  # prepared late, serves the next roll
        fill_segment(s)
        assert os.path.getsize(wal / ref.segment_name(4)) == SEG
        assert s._wait_prepared()
        assert tmp_files(wal) == ["0000000000000005.tmp"]
        s.sync()
        assert len(s.segments) == 4
    with LogStore(wal, segment_bytes=SEG) as s:
        assert [r[1][0] for r in replayed(s) if r[0] == "entries"] == list(range(1, idx[0] + 1))
    assert "torn" not in caplog.text


def test_plain_last_segment_is_preallocated_at_open(wal):
    with LogStore(wal, segment_bytes=SEG) as s:
        assert s._wait_prepared()
        s._hold_preparer(True)
        for i in range(1, 6):  # two records a segment: 3 rolls into prepared 2, 5 into plain 3
            s.append_entries(i, batch(1, 1, size=1500), 1)
        plain = (wal / ref.segment_name(3)).read_bytes()
        assert len(plain) < SEG
    with LogStore(wal, segment_bytes=SEG) as s:
        assert (wal / ref.segment_name(3)).read_bytes() == ref.preallocated(plain, SEG)
        s.append_entries(6, batch(1, 1), 1)
    assert [r[1][0] for r in on_disk(wal) if r[0] == "entries"] == [1, 2, 3, 4, 5, 6]


def test_failed_preparation_falls_back_to_a_plain_segment(wal, caplog):
    with LogStore(wal, segment_bytes=SEG) as s:
        assert s._wait_prepared()
        s._hold_preparer(True)
        os.mkdir(wal / "0000000000000003.tmp")  # the preparer cannot create its file
        for i in range(1, 4):
            s.append_entries(i, batch(1, 1, size=1500), 1)  # rolls into the prepared segment 2
        s._hold_preparer(False)
        assert not s._wait_prepared()
        with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
            for i in range(4, 6):
                s.append_entries(i, batch(1, 1, size=1500), 1)  # rolls into segment 3
        assert "preparing the next log segment failed" in caplog.text
        assert "segment 3 is not preallocated" in caplog.text
        assert os.path.getsize(wal / ref.segment_name(3)) < SEG
        assert s._wait_prepared()  # asked again after the failure, and made
        assert not s.failed
    os.rmdir(wal / "0000000000000003.tmp")
    assert [r[1][0] for r in on_disk(wal) if r[0] == "entries"] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("prepared", [True, False])
def test_a_roll_never_replaces_an_existing_file(wal, prepared):
    s = LogStore(wal, segment_bytes=SEG)
    try:
        if prepared:
            assert s._wait_prepared()
        else:
            s._hold_preparer(True)
        (wal / ref.segment_name(2)).write_bytes(b"someone else's")
        s.append_entries(1, batch(1, 1, size=2000), 1)
        with pytest.raises(LogStoreError) as ei:
            s.append_entries(2, batch(1, 1, size=2000), 1)
        assert ei.value.errno == errno.EEXIST and "segment create" in str(ei.value)
        assert s.failed
    finally:
        s.close()
    assert (wal / ref.segment_name(2)).read_bytes() == b"someone else's"
    assert tmp_files(wal) == []


def test_no_room_to_preallocate_falls_back_to_plain_segments(wal, caplog):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (SEG // 2, hard))  # files stop at SEG/2 bytes (EFBIG)
    try:
        with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
            with LogStore(wal, segment_bytes=SEG) as s:
                s.append_entries(1, batch(1, 1), 1)
                s.sync()
                assert not s._wait_prepared()  # no room for the next one either
                assert os.path.getsize(s.segments[0]) == 48 + len(ref.encode_entries(1, batch(1, 1), 1))
            assert "cannot preallocate log segment 1" in caplog.text
            caplog.clear()
            with LogStore(wal, segment_bytes=SEG) as s:  # nor to extend the last one at open
                s.append_entries(2, batch(1, 1), 1)
                s.sync()
            assert "cannot preallocate the last log segment" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert [r[1][0] for r in on_disk(wal) if r[0] == "entries"] == [1, 2]
    # A reservation (fallocate) is all or nothing: the file ends with its
    # records; where the filesystem cannot reserve, zeros are written as far
    # as they get.
    records_end = 48 + sum(len(ref.encode_entries(i, batch(1, 1), 1)) for i in (1, 2))
    assert os.path.getsize(wal / ref.segment_name(1)) in (records_end, SEG // 2)
    assert tmp_files(wal) == []


def test_stray_tmp_files_are_removed_at_open(wal):
    ref.write_segment(wal, 1, [ref.encode_hard_state(3, 1, 0)], size=SEG)
    (wal / "0000000000000002.tmp").write_bytes(bytes(100))  # half zero-filled at a crash
    (wal / "0000000000000009.tmp").write_bytes(b"x")
    (wal / "notes.tmp").write_bytes(b"not ours")
    with LogStore(wal, segment_bytes=SEG) as s:
        assert "0000000000000009.tmp" not in tmp_files(wal)
        assert s._wait_prepared()
        assert tmp_files(wal) == ["0000000000000002.tmp", "notes.tmp"]
        assert (wal / "0000000000000002.tmp").read_bytes() == bytes(SEG)  # made afresh
        assert s.hard_state == (3, 1, 0)
    assert tmp_files(wal) == ["notes.tmp"]


def test_a_store_dropped_without_close_stops_its_preparer(wal):
    s = LogStore(wal, segment_bytes=1 << 20)
    s.append_entries(1, batch(1, 1), 1)
    threads = len(os.listdir("/proc/self/task"))
    del s
    gc.collect()
    assert len(os.listdir("/proc/self/task")) == threads - 1
    assert tmp_files(wal) == []
    with LogStore(wal, segment_bytes=1 << 20) as s:
        assert [r[0] for r in replayed(s)] == ["hard_state", "entries"]


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
    with LogStore(wal, segment_bytes=2000) as s:
        assert [r[1] for r in replayed(s) if r[0] == "entries"] == \
            [(i, batch(i, 1), 1) for i in range(1, 600)]
        assert s.hard_state == (550, 1, 549)


@pytest.mark.parametrize("fsync", [True, False], ids=["preallocated", "plain"])
def test_failed_write_raises_and_the_store_stays_failed(wal, caplog, fsync):
    s = LogStore(wal, fsync=fsync, segment_bytes=SEG)
    s.append_entries(1, batch(1, 1), 1)
    s.sync()
    s._wait_prepared()
    big = batch(1, 4, size=SEG // 4)  # bigger than a segment: rolls, then runs past its end
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # A file-size limit makes the kernel refuse the write for real (EFBIG);
    # Python ignores SIGXFSZ, so the error comes back from write(2).
    resource.setrlimit(resource.RLIMIT_FSIZE, (SEG + 30, hard))
    try:
        with pytest.raises(LogStoreError) as ei:
            s.append_entries(2, big, 4)  # part fits: a short write, then EFBIG
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    seg = s.segments[-1]
    assert seg.endswith(ref.segment_name(2))
    assert ei.value.errno == errno.EFBIG and ei.value.filename == seg
    assert s.failed
    for call in (lambda: s.append_entries(2, batch(1, 1), 1), lambda: s.save_hard_state(1, 1, 1),
                 s.sync, lambda: s.replay(None, None)):
        with pytest.raises(LogStoreError, match="earlier failure"):
            call()
    s.close()
    assert os.path.getsize(seg) == SEG + 30  # the partial record is on disk...
    with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
        with LogStore(wal, segment_bytes=SEG) as s:  # ...and is zeroed as a torn tail
            assert [r[1][0] for r in replayed(s) if r[0] == "entries"] == [1]
    assert "torn" in caplog.text
    with open(seg, "rb") as f:
        assert f.read() == ref.preallocated(ref.encode_hard_state(0, 0, 0), SEG + 30)


def test_failed_fsync_raises_and_the_store_stays_failed(wal):
    s = LogStore(wal, segment_bytes=SEG)
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
    s = LogStore(wal, segment_bytes=SEG)
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


# ---------------------------------------------------------------------------
# Compaction: dropping whole segments a snapshot covers

def _fill(s, upto, size=400, term=1):
    """Append entries 1..upto one per record, big enough to roll SEG segments."""
    for i in range(1, upto + 1):
        s.append_entries(i, batch(term, 1, size=size), 1)


def _entries_after(store, snap_index):
    """The indexes the log holds after snap_index (a record cuts the suffix
    from its first index, as replay semantics say)."""
    got = {}

    def on_entries(first, b, count):
        for j in [j for j in got if j >= first]:
            del got[j]
        for k, e in enumerate(decode_entries(bytes(b))):
            if first + k > snap_index:
                got[first + k] = e

    store.replay(on_entries, lambda *hs: None, snap_index=snap_index)
    return sorted(got)


def test_compact_drops_only_whole_covered_segments_oldest_first(wal):
    with LogStore(wal, segment_bytes=SEG) as s:
        _fill(s, 60)
        s.save_hard_state(7, 2, 60)
        s.sync()
        tops = s.segment_tops
        assert len(tops) > 4
        # Every segment's highest index, oldest first (the last: the current one).
        upto = tops[2][1] + 1  # covers segments 1..3 wholly, and part of segment 4
        dropped = s.compact(upto)
        assert dropped == [t[0] for t in tops[:3]]
        assert [os.path.basename(p) for p in s.segments] == \
            [os.path.basename(t[0]) for t in tops[3:]]
        assert s.compact(upto) == []  # nothing more is wholly covered
        # Never the segment being written, even when everything is covered.
        s.compact(10 ** 9)
        assert len(s.segments) == 1
        assert s.hard_state == (7, 2, 60)
    with LogStore(wal, segment_bytes=SEG, snap_index=60) as s:
        assert s.hard_state == (7, 2, 60)  # the current segment starts with it
        assert _entries_after(s, 60) == []


def test_compacted_log_replays_after_the_snapshot(wal):
    with LogStore(wal, segment_bytes=SEG) as s:
        _fill(s, 60)
        s.save_hard_state(1, 1, 55)
        s.sync()
        s.compact(40)
        first_seq = int(os.path.basename(s.segments[0])[:16])
        assert first_seq > 1
    with LogStore(wal, segment_bytes=SEG, snap_index=40) as s:
        assert _entries_after(s, 40) == list(range(41, 61))
        assert s.hard_state == (1, 1, 55)
        # Without a snapshot index, replay hands every record (the old behaviour).
        assert replayed(s)[1][1][0] > 1


def test_a_segment_holding_a_later_entry_stops_compaction(wal):
    with LogStore(wal, segment_bytes=SEG) as s:
        _fill(s, 30)
        tops = s.segment_tops
        # Rewrite an early index in a later segment: that segment's top is
        # high even though its records start low.
        s.append_entries(5, batch(2, 1, size=200), 1)
        assert s.segment_tops[len(s.segment_tops) - 1][1] >= 5
        dropped = s.compact(tops[0][1])
        assert dropped == [tops[0][0]]


def test_replay_refuses_a_log_that_resumes_after_the_snapshot_index(wal):
    with LogStore(wal, segment_bytes=SEG) as s:
        _fill(s, 60)
        s.sync()
        tops = s.segment_tops
        s.compact(tops[1][1])
        first_kept = tops[1][1] + 1
        seg = s.segments[0]
    # A snapshot at least as far as the dropped segments: accepted.
    LogStore(wal, segment_bytes=SEG, snap_index=first_kept - 1).close()
    LogStore(wal, segment_bytes=SEG, snap_index=first_kept + 3).close()
    # A snapshot short of them (or none): the entries between are missing.
    for snap in (0, first_kept - 2):
        with pytest.raises(LogCorruptError, match=f"{seg}.*resumes at index {first_kept}.*"
                           f"entries {snap + 1}..{first_kept - 1} are missing"):
            LogStore(wal, segment_bytes=SEG, snap_index=snap)
    with LogStore(wal, segment_bytes=SEG) as s:  # no check asked
        with pytest.raises(LogCorruptError, match="resumes at index"):
            s.replay(None, None, snap_index=0)


def test_a_gap_is_refused_before_a_torn_tail_is_repaired(wal):
    with LogStore(wal, fsync=False, segment_bytes=SEG) as s:
        _fill(s, 40)
        s.compact(s.segment_tops[1][1])
        last = s.segments[len(s.segments) - 1]
    with open(last, "ab") as f:
        f.write(b"\x01" * 30)  # a torn last record
    before = open(last, "rb").read()
    with pytest.raises(LogCorruptError, match="are missing"):
        LogStore(wal, fsync=False, segment_bytes=SEG, snap_index=0)
    assert open(last, "rb").read() == before


def test_interrupted_compaction_leaves_a_log_that_recovers(wal):
    """A crash part-way through compact(): only the oldest of the segments
    it would drop are gone.  What is left is a contiguous suffix, and the
    snapshot covers the rest."""
    with LogStore(wal, segment_bytes=SEG) as s:
        _fill(s, 60)
        s.save_hard_state(3, 1, 60)
        s.sync()
        tops = s.segment_tops
    upto = tops[3][1]
    os.unlink(tops[0][0])  # as if the crash came after the first unlink
    with LogStore(wal, segment_bytes=SEG, snap_index=upto) as s:
        assert _entries_after(s, upto) == list(range(upto + 1, 61))
        assert s.hard_state == (3, 1, 60)
        assert len(s.compact(upto)) == 3  # finishing the job later is fine
        assert _entries_after(s, upto) == list(range(upto + 1, 61))


def test_compact_after_close_or_failure_raises(wal):
    s = LogStore(wal, segment_bytes=SEG)
    s.close()
    with pytest.raises(ValueError, match="closed"):
        s.compact(5)
