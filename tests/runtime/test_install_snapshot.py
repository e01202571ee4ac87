"""The storage side of InstallSnapshot: the WAL's log reset record
(raftfast._logstore: reset_log, replay, compaction with resets) and
Storage.install_snapshot / incoming_snapshot_path, with recovery after a
crash at any point of an install (docs/snapshots.md)."""
import logging
import os
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as hst

from raftfast._entrylog import encode_entries
from raftfast._kv import KVStore
from raftfast._logstore import LogCorruptError, LogStore
from raftfast.core.messages import ENTRY_NORMAL, HardState
from raftfast.runtime.snapshot import write_snapshot
from raftfast.runtime.storage import Storage, StorageError, snapshot_name
from tests.reference import logrecord_py as ref

SEG = 4096  # small segments: a dozen entries each


def ent(i, term):
    return encode_entries([(term, ENTRY_NORMAL, b"entry %d " % i + b"." * 250)])


def fill(st, first, last, term):
    """Entries first..last at `term`, one record each (Storage or LogStore)."""
    for i in range(first, last + 1):
        if isinstance(st, LogStore):
            st.append_entries(i, ent(i, term), 1)
        else:
            st.append(i, ent(i, term), 1)


def kv_for(index):
    return KVStore.from_dict({b"at": b"%d" % index})


def open_(d, **kw):
    return Storage.open(d, 1, "c", segment_bytes=SEG, **kw)


def entries_of(st):
    log = st.entry_log
    return [(i, log.term(i)) for i in range(log.first_index, log.last_index + 1)]


def receive(st, index, term, meta=b""):
    """What the runtime does with a snapshot streamed from the leader:
    write it to a fresh incoming path (complete and fsynced)."""
    path = st.incoming_snapshot_path()
    write_snapshot(kv_for(index), path, index, term, meta)
    return path


def replayed(store, snap_index=None):
    out = []
    store.replay(lambda f, b, c: out.append(("entries", f, c)),
                 lambda t, v, c: None, snap_index,
                 lambda i, t: out.append(("reset", i, t)))
    return out


def records(wal):
    recs = []
    for name in sorted(n for n in os.listdir(wal) if n.endswith(".wal")):
        with open(os.path.join(wal, name), "rb") as f:
            recs.append([r for r in ref.decode_all(f.read())])
    return recs


# --------------------------------------------------------------------------
# The log store's reset record

@pytest.mark.parametrize("fsync", [True, False])
def test_reset_record_matches_the_twin_and_starts_a_segment(tmp_path, fsync):
    wal = tmp_path / "wal"
    with LogStore(wal, fsync=fsync, segment_bytes=SEG) as s:
        fill(s, 1, 3, term=1)
        s.save_hard_state(2, 1, 2)
        s.reset_log(10, 2)
        s.sync()
        assert s.log_reset == (10, 2)
    segs = records(wal)
    assert len(segs) == 2  # the reset went to a segment of its own...
    assert segs[1] == [("hard_state", (2, 1, 2)), ("log_reset", (10, 2))]  # ...after its hard state
    with open(os.path.join(wal, ref.segment_name(2)), "rb") as f:
        data = f.read()
    assert data[48:72 + 8] == ref.encode_log_reset(10, 2)


def test_a_fresh_segment_takes_the_reset_without_rolling(tmp_path):
    with LogStore(tmp_path / "wal", segment_bytes=SEG) as s:
        s.reset_log(7, 3)
        fill(s, 8, 9, term=3)
        assert len(s.segments) == 1
        assert replayed(s) == [("reset", 7, 3), ("entries", 8, 1), ("entries", 9, 1)]


@pytest.mark.parametrize("reset_at", [5, 30], ids=["stale longer log", "shorter log, a gap"])
def test_replay_starts_at_the_newest_reset(tmp_path, reset_at):
    wal = tmp_path / "wal"
    with LogStore(wal, segment_bytes=SEG) as s:
        fill(s, 1, 20, term=1)
        s.reset_log(3, 1)   # an older reset: void too
        fill(s, 4, 12, term=1)
        s.reset_log(reset_at, 2)
        fill(s, reset_at + 1, reset_at + 3, term=2)
        want = [("reset", reset_at, 2)] + [("entries", i, 1)
                                           for i in range(reset_at + 1, reset_at + 4)]
        assert replayed(s) == want
        s.sync()
    with LogStore(wal, segment_bytes=SEG) as s:
        assert s.log_reset == (reset_at, 2)
        assert replayed(s) == want
        # Checked against a snapshot at the reset's index: nothing is missing.
        assert replayed(s, snap_index=reset_at) == want
        fill(s, reset_at + 4, reset_at + 4, term=2)  # appends carry on


def test_appends_after_a_reset_start_right_after_it(tmp_path):
    with LogStore(tmp_path / "wal", segment_bytes=SEG) as s:
        fill(s, 1, 20, term=1)
        s.reset_log(10, 2)
        for bad in (11 - 1, 12, 21):
            with pytest.raises(ValueError, match="must start at 11"):
                s.append_entries(bad, ent(bad, 2), 1)
        fill(s, 11, 13, term=2)
        with pytest.raises(ValueError, match="reset to continue after index 10"):
            s.append_entries(10, ent(10, 2), 1)
        s.append_entries(12, ent(12, 3), 1)  # an ordinary truncation above the reset
        assert not s.failed  # a caller's mistake, not a failed write
        with pytest.raises(ValueError, match="at least 1"):
            s.reset_log(0, 1)
        with pytest.raises(ValueError, match="at least 1"):
            s.reset_log(5, 0)


def test_the_floor_survives_a_reopen(tmp_path):
    wal = tmp_path / "wal"
    with LogStore(wal, segment_bytes=SEG) as s:
        fill(s, 1, 5, term=1)
        s.reset_log(40, 2)
        s.sync()
    with LogStore(wal, segment_bytes=SEG, snap_index=40) as s:
        with pytest.raises(ValueError, match="reset to continue after index 40"):
            s.append_entries(6, ent(6, 1), 1)
        fill(s, 41, 41, term=2)
    # A newer snapshot (an install cut short after its rename) may move the
    # log's start past the reset: the store does not insist on 41.
    with LogStore(wal, segment_bytes=SEG, snap_index=40) as s:
        s.append_entries(60, ent(60, 3), 1)


@pytest.mark.parametrize("rec,why", [
    (ref.encode(ref.LOG_RESET, 5, 0, struct.pack("<Q", 0)), "malformed log reset"),
    (ref.encode(ref.LOG_RESET, 0, 0, struct.pack("<Q", 2)), "malformed log reset"),
    (ref.encode(ref.LOG_RESET, 5, 1, struct.pack("<Q", 2)), "malformed log reset"),
    (ref.encode(ref.LOG_RESET, 5, 0, struct.pack("<QQ", 2, 2)), "malformed log reset"),
])
def test_malformed_reset_record_is_refused(tmp_path, rec, why):
    wal = tmp_path / "wal"
    ref.write_segment(wal, 1, [ref.encode_hard_state(0, 0, 0), rec])
    with pytest.raises(LogCorruptError, match=why) as ei:
        LogStore(wal, segment_bytes=SEG)
    assert ei.value.offset == 48


@pytest.mark.parametrize("first,why", [(5, "at or below 5"), (6, "at or below 5"),
                                       (8, "right after the log was reset")])
def test_entries_that_do_not_continue_after_a_reset_are_refused(tmp_path, first, why):
    wal = tmp_path / "wal"
    recs = [ref.encode_hard_state(1, 0, 0), ref.encode_log_reset(5, 1),
            ref.encode_entries(6, ent(6, 1), 1)]
    if first == 8:
        recs.pop()
    recs.append(ref.encode_entries(first, ent(first, 1), 1))
    ref.write_segment(wal, 1, recs)
    if first == 6:  # 6 again after 6: an ordinary truncation, fine
        with LogStore(wal, segment_bytes=SEG) as s:
            assert replayed(s) == [("reset", 5, 1), ("entries", 6, 1), ("entries", 6, 1)]
        return
    with pytest.raises(LogCorruptError, match=why):
        LogStore(wal, segment_bytes=SEG)


def test_a_gap_before_a_reset_is_voided_by_it(tmp_path):
    """Checked against a snapshot, a log that resumes past what the
    snapshot covers is refused -- unless a later reset voids it."""
    wal = tmp_path / "wal"
    hs = ref.encode_hard_state(1, 0, 0)
    ref.write_segment(wal, 1, [hs, ref.encode_entries(50, ent(50, 1), 1)])
    ref.write_segment(wal, 2, [hs, ref.encode_log_reset(20, 2),
                               ref.encode_entries(21, ent(21, 2), 1)])
    with LogStore(wal, segment_bytes=SEG, snap_index=20) as s:
        assert replayed(s, 20) == [("reset", 20, 2), ("entries", 21, 1)]
    os.unlink(os.path.join(wal, ref.segment_name(2)))
    with pytest.raises(LogCorruptError, match="resumes at index 50"):
        LogStore(wal, segment_bytes=SEG, snap_index=20)


def test_a_reset_above_the_snapshot_is_refused_before_any_repair(tmp_path):
    wal = tmp_path / "wal"
    ref.write_segment(wal, 1, [ref.encode_hard_state(1, 0, 0), ref.encode_log_reset(30, 2),
                               ref.encode_entries(31, ent(31, 2), 1), b"\x01torn"])
    before = open(os.path.join(wal, ref.segment_name(1)), "rb").read()
    with pytest.raises(LogCorruptError, match=r"restarts after index 30 .* up to 20 .* 21\.\.30"):
        LogStore(wal, segment_bytes=SEG, snap_index=20)
    assert open(os.path.join(wal, ref.segment_name(1)), "rb").read() == before


@pytest.mark.parametrize("fsync", [True, False])
def test_voided_segments_go_once_the_reset_is_durable_and_covered(tmp_path, fsync):
    with LogStore(tmp_path / "wal", fsync=fsync, segment_bytes=SEG) as s:
        fill(s, 1, 60, term=1)
        s.sync()
        raw = [t for _, t in s.segment_tops]
        assert len(raw) >= 4 and raw[-1] == 60
        s.reset_log(20, 2)
        reset_seg = s.segments[len(s.segments) - 1]
        tops = [t for _, t in s.segment_tops]
        assert tops[-1] == 20  # the reset's own segment counts its index
        if fsync:
            # Not yet durable: a crash could lose the record, and the void
            # entries with it would be the log again.
            assert tops[:-1] == raw
        s.sync()
        assert [t for _, t in s.segment_tops][:-1] == [min(t, 20) for t in raw]
        fill(s, 21, 45, term=2)  # several segments after the reset
        want = [p for p, t in zip(s.segments, raw) if t <= 19]
        assert want and s.compact(19) == want  # only what was covered anyway
        # A snapshot covering the reset: every void segment goes.
        s.compact(20)
        assert s.segments[0] == reset_seg and s.log_reset == (20, 2)
        reset_top = s.segment_tops[0][1]
        assert reset_top > 20
        assert s.compact(reset_top - 1) == []  # it holds entries not covered yet
        assert s.compact(reset_top) == [reset_seg]
        assert s.log_reset is None  # what is left starts after it, and needs no reset
        kept = replayed(s, snap_index=reset_top)
        assert kept[0] == ("entries", reset_top + 1, 1)
        assert kept[len(kept) - 1] == ("entries", 45, 1)


@pytest.mark.parametrize("fsync", [True, False])
def test_a_reset_found_at_open_lowers_the_void_segments(tmp_path, fsync):
    wal = tmp_path / "wal"
    with LogStore(wal, fsync=fsync, segment_bytes=SEG) as s:
        fill(s, 1, 40, term=1)
        s.reset_log(10, 2)
        fill(s, 11, 12, term=2)
        s.sync()
        n = len(s.segments)
    with LogStore(wal, fsync=fsync, segment_bytes=SEG, snap_index=10) as s:
        tops = [t for _, t in s.segment_tops]
        assert len(tops) == n and tops[:-1] == [min(t, 10) for t in tops[:-1]]
        assert max(tops[:-1]) == 10 and tops[-1] == 12
        assert len(s.compact(10)) == n - 1


def test_a_torn_reset_record_is_repaired_like_any_torn_tail(tmp_path, caplog):
    wal = tmp_path / "wal"
    with LogStore(wal, segment_bytes=SEG) as s:
        fill(s, 1, 12, term=1)
        s.reset_log(30, 2)
        s.sync()
        last = s.segments[len(s.segments) - 1]
    with open(last, "r+b") as f:
        f.seek(48 + 30)  # inside the reset record's payload
        f.write(b"\xff")
    with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
        with LogStore(wal, segment_bytes=SEG) as s:
            assert s.log_reset is None
            assert replayed(s) == [("entries", i, 1) for i in range(1, 13)]
            fill(s, 13, 13, term=1)  # no reset: appends go on from the old log
    assert any("torn last record at byte offset 48" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------
# Storage.install_snapshot

def test_incoming_path_is_fresh_and_a_leftover_is_removed_at_start(tmp_path):
    d = tmp_path / "d"
    with open_(d) as st:
        a, b = st.incoming_snapshot_path(), st.incoming_snapshot_path()
        assert a != b and os.path.exists(a)
        assert os.path.dirname(a) == str(d / "snap")
        name = os.path.basename(a)
        assert name.startswith(".snap-") and name.endswith(".tmp")
        with open(a, "wb") as f:
            f.write(b"half a snapshot")  # the transfer is cut short by a crash
    with open_(d) as st:
        assert os.listdir(d / "snap") == []


@pytest.mark.parametrize("fsync", [True, False])
def test_install_then_restart_recovers_the_snapshot_and_later_entries(tmp_path, fsync):
    d = tmp_path / "d"
    with open_(d, fsync=fsync) as st:
        fill(st, 1, 50, term=1)
        st.save_hard_state(HardState(3, 2, 30))
        st.sync()
        path = receive(st, 80, 3, meta=b"members")
        dropped, removed = st.install_snapshot(path, 80, 3)
        assert dropped and removed == []
        assert not os.path.exists(path)
        assert (st.snap_index, st.snap_term, st.snapshot.meta) == (80, 3, b"members")
        assert st.snapshot_file == str(d / "snap" / snapshot_name(80))
        assert len(st._log.segments) == 1  # every segment before the reset is gone
        fill(st, 81, 95, term=3)
        st.save_hard_state(HardState(3, 2, 90))
        st.sync()
    with open_(d, fsync=fsync) as st:
        assert (st.snap_index, st.snap_term, st.snapshot.meta) == (80, 3, b"members")
        assert st.kv.get(b"at") == b"80"
        assert entries_of(st) == [(i, 3) for i in range(81, 96)]
        assert st.hard_state == HardState(3, 2, 90)
        fill(st, 96, 96, term=3)


def test_install_over_a_longer_stale_log(tmp_path):
    """The log runs past the snapshot with other terms (a deposed leader's
    entries): the reset voids them all, durably."""
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 120, term=1)
        st.sync()
        st.install_snapshot(receive(st, 60, 2), 60, 2)
        fill(st, 61, 64, term=2)
        st.sync()
    with open_(d) as st:
        assert entries_of(st) == [(i, 2) for i in range(61, 65)]


def test_install_past_the_end_of_a_shorter_log(tmp_path):
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 20, term=1)
        st.sync()
        st.install_snapshot(receive(st, 500, 4), 500, 4)
    with open_(d) as st:
        assert (st.snap_index, len(st.entry_log), st.entry_log.first_index) == (500, 0, 501)
        fill(st, 501, 502, term=4)
        st.sync()
    with open_(d) as st:
        assert entries_of(st) == [(501, 4), (502, 4)]


def test_install_refuses_a_file_that_is_not_the_snapshot_named(tmp_path):
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 10, term=1)
        st.sync()
        path = receive(st, 40, 2)
        segs = list(st._log.segments)
        with pytest.raises(StorageError, match="header says index 40, term 2"):
            st.install_snapshot(path, 40, 3)
        with pytest.raises(StorageError, match="header says index 40, term 2"):
            st.install_snapshot(path, 41, 2)
        with open(path, "r+b") as f:
            f.write(b"garbage!")
        with pytest.raises(StorageError, match="cannot install the snapshot received"):
            st.install_snapshot(path, 40, 2)
        # Nothing changed.
        assert os.path.exists(path) and st.snap_index == 0
        assert st._log.segments == segs and st._log.log_reset is None
        assert sorted(os.listdir(d / "snap")) == [os.path.basename(path)]


def test_install_refuses_a_snapshot_not_newer_than_the_one_held(tmp_path):
    d = tmp_path / "d"
    with open_(d) as st:
        st.install_snapshot(receive(st, 40, 2), 40, 2)
        with pytest.raises(StorageError, match="already holds one at index 40"):
            st.install_snapshot(receive(st, 40, 2), 40, 2)
        with pytest.raises(StorageError, match="already holds one at index 40"):
            st.install_snapshot(receive(st, 30, 2), 30, 2)


def test_reset_then_compaction_then_restart(tmp_path):
    """After an install the log grows, a local snapshot compacts it past
    the reset's segment: what is left needs no reset record."""
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 30, term=1)
        st.install_snapshot(receive(st, 100, 2), 100, 2)
        fill(st, 101, 160, term=2)
        st.sync()
        write_snapshot(kv_for(150), st.snapshot_path(150), 150, 2)
        dropped, removed = st.compact(150, trailing=0)
        assert dropped and st._log.log_reset is None
        assert removed == []  # the newest two stay: 100 and 150
    with open_(d) as st:
        assert (st.snap_index, st.snap_term) == (150, 2)
        assert entries_of(st) == [(i, 2) for i in range(151, 161)]


def test_the_reset_segment_is_kept_while_it_holds_entries_a_snapshot_does_not_cover(tmp_path):
    d = tmp_path / "d"
    with open_(d) as st:
        st.install_snapshot(receive(st, 100, 2), 100, 2)
        fill(st, 101, 130, term=2)
        st.sync()
        reset_top = st._log.segment_tops[0][1]
        assert reset_top > 105
        write_snapshot(kv_for(105), st.snapshot_path(105), 105, 2)
        dropped, _ = st.compact(105)
        assert dropped == [] and st._log.log_reset == (100, 2)
    with open_(d) as st:
        assert (st.snap_index, entries_of(st)) == (105, [(i, 2) for i in range(106, 131)])


def crash_window(st, index, term):
    """An install cut short after the rename, before the reset record."""
    write_snapshot(kv_for(index), st.snapshot_path(index), index, term)


@pytest.mark.parametrize("end_at_index", [False, True], ids=["record past it", "record ends at it"])
def test_crash_window_with_another_term_at_the_index_drops_the_stale_entries(
        tmp_path, caplog, end_at_index):
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 40, term=1)
        if end_at_index:  # the entry at 40 is the last of its record, 41.. follow
            fill(st, 41, 45, term=1)
        else:
            st.append(38, encode_entries([(1, ENTRY_NORMAL, b"x")] * 8), 8)  # 38..45 in one
        st.save_hard_state(HardState(2, 2, 20))
        st.sync()
        crash_window(st, 40, 2)
    with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
        with open_(d) as st:
            assert (st.snap_index, st.snap_term) == (40, 2)
            assert len(st.entry_log) == 0 and st.entry_log.first_index == 41
            fill(st, 41, 42, term=2)
            st.sync()
    msgs = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    assert len(msgs) == 1 and "entry 40 at term 1" in msgs[0] and "40..45" in msgs[0]
    with open_(d) as st:
        assert entries_of(st) == [(41, 2), (42, 2)]


def test_crash_window_with_the_same_term_at_the_index_keeps_the_entries(tmp_path, caplog):
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 45, term=2)
        st.sync()
        crash_window(st, 40, 2)
    with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
        with open_(d) as st:
            assert entries_of(st) == [(i, 2) for i in range(41, 46)]
    assert not [r for r in caplog.records if "stale" in r.getMessage()]


def test_crash_window_after_the_reset_was_written_but_torn(tmp_path, caplog):
    """The reset record reached the page cache, not the disk whole: repaired
    as a torn tail, then the crash-window rule decides."""
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 45, term=1)
        st.sync()
        crash_window(st, 40, 2)
        st._log.reset_log(40, 2)  # install_snapshot's next step; no sync
        last = st._log.segments[len(st._log.segments) - 1]
    with open(last, "r+b") as f:
        f.seek(48 + 26)
        f.write(b"\xee")
    with caplog.at_level(logging.WARNING, logger="raftfast.storage"):
        with open_(d) as st:
            assert len(st.entry_log) == 0
            assert st._log.log_reset == (40, 2)  # recovery finished the install
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "torn last record" in text and "stale" in text


def test_a_reset_disagreeing_with_the_snapshot_at_its_index_is_refused(tmp_path):
    d = tmp_path / "d"
    with open_(d) as st:
        st.install_snapshot(receive(st, 40, 2), 40, 2)
        st.sync()
    os.unlink(d / "snap" / snapshot_name(40))
    write_snapshot(kv_for(40), d / "snap" / snapshot_name(40), 40, 3)
    with pytest.raises(StorageError, match="reset to continue after index 40 at term 2, but "
                                           "snapshot .* says term 3"):
        open_(d)


def test_a_reset_above_the_newest_snapshot_is_refused_naming_both(tmp_path):
    """The installed snapshot moved aside (say, damaged): the older one does
    not reach the reset, whatever the log held before it."""
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 30, term=1)
        write_snapshot(kv_for(20), st.snapshot_path(20), 20, 1)
        st._log.reset_log(40, 2)  # as install_snapshot, without its compaction
        fill(st, 41, 42, term=2)
        st.sync()
    with pytest.raises(StorageError) as ei:
        open_(d)
    msg = str(ei.value)
    assert "restarts after index 40" in msg and "entries 21..40 are missing" in msg
    assert snapshot_name(20) in msg


# --------------------------------------------------------------------------
# Random sequences against a model

class Model:
    """What recovery must give: the snapshot (index, term) and the terms of
    the entries after it."""

    def __init__(self):
        self.snap = (0, 0)
        self.terms = []  # entries snap+1 ...

    @property
    def last(self):
        return self.snap[0] + len(self.terms)

    def term(self, i):
        return self.terms[i - self.snap[0] - 1]

    def append(self, first, terms):
        del self.terms[first - self.snap[0] - 1:]
        self.terms.extend(terms)

    def restart_after(self, index, term):
        self.snap, self.terms = (index, term), []

    def crash_window(self, index, term):
        """Recovery after a snapshot at index is renamed in without its reset."""
        keep = index <= self.last and self.term(index) == term
        event("crash window: " + ("log ends before it" if index > self.last else
                                  "same term, kept" if keep else "other term, dropped"))
        self.terms = self.terms[index - self.snap[0]:] if keep else []
        self.snap = (index, term)


def pick(m, k, within):
    """An index after the snapshot: within the log, or anywhere up to 40 past it."""
    if within and m.last > m.snap[0]:
        return m.snap[0] + 1 + k % (m.last - m.snap[0])
    return m.snap[0] + k


ops = hst.lists(hst.one_of(
    hst.tuples(hst.just("append"), hst.integers(0, 6), hst.integers(1, 12), hst.integers(1, 4)),
    hst.tuples(hst.just("install"), hst.integers(1, 40), hst.integers(1, 4), hst.booleans()),
    hst.tuples(hst.just("crash_window"), hst.integers(1, 40), hst.integers(1, 4), hst.booleans()),
    hst.tuples(hst.just("snapshot"), hst.integers(0, 30), hst.integers(0, 10)),
    hst.tuples(hst.just("reopen"),),
), max_size=25)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, fsync=hst.booleans())
def test_random_installs_appends_and_compactions_recover_as_the_model(tmp_path_factory, ops, fsync):
    d = tmp_path_factory.mktemp("d")
    m = Model()
    st = open_(d, fsync=fsync)
    try:
        for op in ops:
            kind = op[0]
            if kind == "append":
                # Anywhere from the first entry after the snapshot to just past the end.
                _, back, n, term = op
                first = max(m.snap[0] + 1, m.last + 1 - back)
                block = encode_entries([(term, ENTRY_NORMAL, b"e%d" % i) for i in range(n)])
                st.append(first, block, n)
                m.append(first, [term] * n)
            elif kind == "install":
                index = pick(m, op[1], op[3])
                st.install_snapshot(receive(st, index, op[2]), index, op[2])
                assert len(st._log.segments) == 1 and st._log.log_reset == (index, op[2])
                m.restart_after(index, op[2])
            elif kind == "crash_window":
                index = pick(m, op[1], op[3])
                # Term 4 stands for "the log's own term there", when it has one.
                term = m.term(index) if op[2] == 4 and index <= m.last else op[2]
                st.sync()
                crash_window(st, index, term)
                st.close()
                st = open_(d, fsync=fsync)
                m.crash_window(index, term)
            elif kind == "snapshot":
                if m.last == m.snap[0]:
                    continue
                index = m.snap[0] + 1 + op[1] % (m.last - m.snap[0])
                term = m.term(index)
                write_snapshot(kv_for(index), st.snapshot_path(index), index, term)
                st.sync()  # compaction follows a durable snapshot of applied, durable entries
                st.compact(index, trailing=op[2])
                m.terms = m.terms[index - m.snap[0]:]
                m.snap = (index, term)
            else:
                st.sync()
                st.close()
                st = open_(d, fsync=fsync)
            if kind in ("crash_window", "reopen"):
                assert (st.snap_index, st.snap_term) == m.snap
                assert entries_of(st) == [(m.snap[0] + 1 + k, t) for k, t in enumerate(m.terms)]
        st.sync()
        st.close()
        st = open_(d, fsync=fsync)
        assert (st.snap_index, st.snap_term) == m.snap
        assert entries_of(st) == [(m.snap[0] + 1 + k, t) for k, t in enumerate(m.terms)]
        if m.snap[0]:
            assert st.kv.get(b"at") == b"%d" % m.snap[0]
    finally:
        st.close()


log_ops = hst.lists(hst.one_of(
    hst.tuples(hst.just("append"), hst.integers(0, 5), hst.integers(1, 6), hst.integers(1, 3)),
    hst.tuples(hst.just("reset"), hst.integers(-5, 15), hst.integers(1, 3)),
    hst.tuples(hst.just("hard_state"), hst.integers(1, 9)),
    hst.tuples(hst.just("compact"), hst.integers(0, 30)),
    hst.tuples(hst.just("sync"),),
    hst.tuples(hst.just("reopen"),),
), max_size=30)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=log_ops, fsync=hst.booleans())
def test_random_log_with_resets_replays_as_the_model(tmp_path_factory, ops, fsync):
    """The log store alone: appends (with truncations), resets anywhere
    (below, inside or past the log), hard states, compactions and reopens.
    What replay gives, past what compaction was allowed to drop, is the
    model's log; the hard state is the last one saved."""
    from raftfast.runtime.recovery import recover
    wal = tmp_path_factory.mktemp("wal")
    seg = 600  # a few entries per segment
    terms = {}        # the model: index -> term of the live log (after the reset, if any)
    reset = None      # (index, term) of the newest reset
    covered = 0       # the highest upto compacted (a snapshot would cover it)
    hs = (0, 0, 0)
    s = LogStore(wal, fsync=fsync, segment_bytes=seg)

    def last():
        return max(terms) if terms else (reset[0] if reset else 0)

    def check(store):
        # What a snapshot at `snap` would recover: covered by compaction or a reset.
        snap = max(covered, reset[0] if reset else 0)
        if snap and snap not in terms and (reset is None or reset[0] != snap):
            event("check skipped")
            return  # no term known there (a gap, compacted away): nothing to compare
        event("checked" + (" after a reset" if reset else "")
              + (" and compaction" if covered else ""))
        snap_term = terms[snap] if snap in terms else reset[1] if snap else 0
        got_hs, log, finish = recover(store, snap, snap_term, "snap")
        assert not finish
        assert (got_hs.term, got_hs.vote, got_hs.commit) == hs
        assert [(i, log.term(i)) for i in range(log.first_index, log.last_index + 1)] == \
            [(i, terms[i]) for i in range(snap + 1, last() + 1)]

    try:
        for op in ops:
            if op[0] == "append":
                lo = reset[0] + 1 if reset else 1
                first = max(lo, last() + 1 - op[1], covered + 1)
                if reset and not any(i > reset[0] for i in terms):
                    first = reset[0] + 1  # right after a reset
                if first > last() + 1:
                    continue  # compacted past the end: nothing to append to
                n, term = op[2], op[3]
                blk = encode_entries([(term, ENTRY_NORMAL, b"x%d" % k) for k in range(n)])
                s.append_entries(first, blk, n)
                for i in [i for i in terms if i >= first]:
                    del terms[i]
                terms.update({first + k: term for k in range(n)})
            elif op[0] == "reset":
                index = max(1, last() + op[1], covered)
                s.reset_log(index, op[2])
                reset, terms = (index, op[2]), {}
            elif op[0] == "hard_state":
                hs = (op[1], 1, 0)
                s.save_hard_state(*hs)
            elif op[0] == "compact":
                # A snapshot may cover only what the log holds (or a reset).
                upto = min(op[1], last())
                if upto <= covered or (upto not in terms and (reset is None or upto != reset[0])):
                    continue
                if s.compact(upto):
                    event("segments compacted")
                covered = upto
            elif op[0] == "sync":
                s.sync()
            else:
                s.sync()
                s.close()
                snap = max(covered, reset[0] if reset else 0)
                s = LogStore(wal, fsync=fsync, segment_bytes=seg, snap_index=snap)
            check(s)
    finally:
        s.close()
