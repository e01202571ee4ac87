"""Log compaction and recovery from a snapshot plus the log after it
(raftfast.runtime.storage with raftfast.runtime.snapshot): what survives a crash at any
point of a compaction, and which damage is refused, naming the file."""
import os

import pytest

from raftfast._entrylog import encode_entries
from raftfast._kv import KVStore
from raftfast.core.messages import ENTRY_NORMAL, HardState
from raftfast.runtime.snapshot import SnapshotWriter, write_snapshot
from raftfast.runtime.storage import Storage, StorageError, snapshot_name

SEG = 4096  # small segments: a few entries each


def ent(i, term=1):
    return encode_entries([(term, ENTRY_NORMAL, b"entry %d " % i + b"." * 300)]), 1


def kv_at(index):
    """The state machine after `index` entries (a stand-in: one key each)."""
    return KVStore.from_dict({b"k%d" % i: b"v%d" % i for i in range(1, index + 1)})


def fill(st, first, last, term=1):
    for i in range(first, last + 1):
        st.append(i, *ent(i, term))


def snapshot(st, index, term=1, meta=b""):
    path = st.snapshot_path(index)
    write_snapshot(kv_at(index), path, index, term, meta)
    return path


def open_(d, **kw):
    return Storage.open(d, 1, "c", segment_bytes=SEG, **kw)


def entries_of(st):
    log = st.entry_log
    return [(i, log.term(i)) for i in range(log.first_index, log.last_index + 1)]


@pytest.fixture
def compacted(tmp_path):
    """A dir with entries 1..60, a snapshot at 40, compacted with no margin."""
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 60)
        st.save_hard_state(HardState(1, 1, 58))
        st.sync()
        path = snapshot(st, 40, meta=b"members")
        dropped, removed = st.compact(40)
        assert dropped and removed == []
        assert st.latest_snapshot()[0] == path
    return d


def test_compact_then_reopen_recovers_the_entries_after_the_snapshot(compacted):
    segs = sorted(os.listdir(compacted / "wal"))
    assert segs[0] != "0000000000000001.wal"
    with open_(compacted) as st:
        assert not st.is_new
        assert (st.snap_index, st.snap_term) == (40, 1)
        assert st.snapshot.meta == b"members"
        assert st.snapshot_file == str(compacted / "snap" / snapshot_name(40))
        assert dict(st.kv.items()) == dict(kv_at(40).items())
        assert st.entry_log.first_index == 41
        assert entries_of(st) == [(i, 1) for i in range(41, 61)]
        assert st.hard_state == HardState(1, 1, 58)
        # The core takes them as they are.
        from raftfast.core.log import RaftLog
        rl = RaftLog(st.entry_log, st.snap_index, st.snap_term, st.hard_state.commit)
        assert (rl.applied, rl.committed, rl.last_index) == (40, 58, 60)
        # The log keeps working after a compacted start.
        fill(st, 61, 62, term=2)
        st.sync()
    with open_(compacted) as st:
        assert entries_of(st)[-2:] == [(61, 2), (62, 2)]


def test_trailing_margin_keeps_entries_for_slow_followers(tmp_path):
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 80)
        st.sync()
        snapshot(st, 70)
        dropped, _ = st.compact(70, trailing=30)
        # Every dropped segment held only entries at or below 40.
        assert dropped
    with open_(d) as st:
        # Recovery starts after the snapshot however much log was kept...
        assert st.entry_log.first_index == 71
        # ...and the segments kept still hold index 41 (for a slow follower).
        firsts = []
        st._log.replay(lambda f, b, c: firsts.append(f), lambda *hs: None)
        assert 20 < min(firsts) <= 41


def test_compact_refuses_without_a_snapshot_covering_the_index(tmp_path):
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 60)
        st.sync()
        with pytest.raises(StorageError, match="no snapshot .* covers it .newest: none"):
            st.compact(40)
        snapshot(st, 30)
        with pytest.raises(StorageError, match=f"covers it .newest: .*{snapshot_name(30)}"):
            st.compact(40)
        assert len(st._log.segments) > 5  # nothing dropped


def test_older_snapshots_are_deleted_but_the_one_before_is_kept(tmp_path):
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 60)
        st.sync()
        for i in (10, 20, 30):
            snapshot(st, i)
        _, removed = st.compact(30)
        assert [os.path.basename(p) for p in removed] == [snapshot_name(10)]
        assert sorted(os.listdir(d / "snap")) == [snapshot_name(20), snapshot_name(30)]
        _, removed = st.compact(30, keep_snapshots=1)
        assert sorted(os.listdir(d / "snap")) == [snapshot_name(30)]


def test_interrupted_compaction_recovers(tmp_path):
    """A crash after only some of the segments a compact would drop are
    deleted: the rest of the log is a contiguous suffix the snapshot still
    covers, and a later compact finishes the job."""
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 60)
        st.save_hard_state(HardState(1, 1, 60))
        st.sync()
        snapshot(st, 40)
        tops = st._log.segment_tops
    would_drop = [p for p, top in tops[:len(tops) - 1] if top <= 40]
    assert len(would_drop) >= 3
    for p in would_drop[:2]:
        os.unlink(p)
    with open_(d) as st:
        assert entries_of(st) == [(i, 1) for i in range(41, 61)]
        dropped, _ = st.compact(40)
        assert dropped == would_drop[2:]
    with open_(d) as st:
        assert entries_of(st) == [(i, 1) for i in range(41, 61)]


def test_a_snapshot_write_cut_short_leaves_a_temp_file_that_is_removed(compacted):
    with open_(compacted) as st:
        w = SnapshotWriter(kv_at(50), st.snapshot_path(50), 50, 1)
        w.write_step(10)  # the crash comes before sync(): no rename
        tmp = w.tmp_path
        w._file.flush()
    assert os.path.exists(tmp) and os.path.basename(tmp).startswith(".snap-")
    with open_(compacted) as st:
        assert st.snap_index == 40  # the finished snapshot, not the cut one
        assert entries_of(st) == [(i, 1) for i in range(41, 61)]
    assert not os.path.exists(tmp)
    assert sorted(os.listdir(compacted / "snap")) == [snapshot_name(40)]


def fingerprint(d):
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            if f != "LOCK":
                p = os.path.join(root, f)
                out[p] = open(p, "rb").read()
    return out


def assert_refused(d, *words):
    before = fingerprint(d)
    with pytest.raises(StorageError) as e:
        open_(d)
    for w in words:
        assert str(w) in str(e.value), str(e.value)
    assert fingerprint(d) == before  # a refusal changes nothing
    return str(e.value)


def test_missing_snapshot_covering_dropped_segments_is_refused(compacted):
    os.unlink(compacted / "snap" / snapshot_name(40))
    assert_refused(compacted, compacted / "wal" / "0000000000000001.wal", "log segment missing",
                   "no snapshot covers what is before")


def test_a_snapshot_short_of_the_dropped_segments_is_refused(compacted):
    """An older snapshot left alone (the covering one lost): the log resumes
    after what it covers; the message names the segment and the snapshot."""
    os.unlink(compacted / "snap" / snapshot_name(40))
    write_snapshot(kv_at(5), compacted / "snap" / snapshot_name(5), 5, 1)
    first_seg = sorted(os.listdir(compacted / "wal"))[0]
    msg = assert_refused(compacted, compacted / "wal" / first_seg, "are missing",
                         snapshot_name(5), "covers up to index 5")
    assert "entries 6.." in msg


def test_a_gap_in_the_compacted_log_is_refused(compacted):
    segs = sorted(os.listdir(compacted / "wal"))
    assert len(segs) >= 3
    os.unlink(compacted / "wal" / segs[1])
    assert_refused(compacted, compacted / "wal" / segs[1], "log segment missing")


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "renamed"])
def test_damaged_newest_snapshot_is_refused_naming_it(compacted, damage):
    """Even with an older snapshot beside it: principle 5, see _load_snapshot."""
    with open_(compacted) as st:
        older = snapshot(st, 30)  # an older, valid one (the log does not reach back to it)
    newest = compacted / "snap" / snapshot_name(40)
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
        newest.write_bytes(bytes(data))
    elif damage == "truncate":
        newest.write_bytes(bytes(data[:len(data) - 7]))
    elif damage == "empty":
        newest.write_bytes(b"")
    else:  # a snapshot at 40 under the name of 45
        os.rename(newest, compacted / "snap" / snapshot_name(45))
        newest = compacted / "snap" / snapshot_name(45)
    msg = assert_refused(compacted, newest, "damaged snapshot, refusing to start")
    assert older not in msg


def test_moving_a_damaged_snapshot_aside_falls_back_only_if_the_log_covers(tmp_path):
    """The operator's way out, checked like any start: an older snapshot is
    used only when the log reaches back to it."""
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 60)
        st.sync()
        snapshot(st, 20)
        snapshot(st, 40)
        st.compact(40, trailing=25)  # the log keeps 16.. at least: covers after 20
    newest = d / "snap" / snapshot_name(40)
    newest.write_bytes(newest.read_bytes()[:100])
    assert_refused(d, newest)
    os.rename(newest, tmp_path / "aside.snap")
    with open_(d) as st:
        assert st.snap_index == 20
        assert entries_of(st) == [(i, 1) for i in range(21, 61)]


def test_a_snapshot_whose_term_disagrees_with_a_committed_entry_is_refused(tmp_path):
    """The log's entry at the snapshot's index is committed (its hard state
    says so) and has another term: one of the two is wrong.  (Uncommitted,
    it is InstallSnapshot's crash window: tests/runtime/test_install_snapshot.py.)"""
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 10)
        st.append(11, encode_entries([(1, ENTRY_NORMAL, b"a"), (1, ENTRY_NORMAL, b"b")]), 2)
        st.save_hard_state(HardState(1, 1, 11))
        st.sync()
        write_snapshot(kv_at(11), st.snapshot_path(11), 11, 7)  # entry 11 is at term 1
    assert_refused(d, "has entry 11 at term 1", "committed (commit index 11)", snapshot_name(11),
                   "says term 7")


def test_a_snapshot_alone_is_state(tmp_path):
    """A dir holding a snapshot is not new, and needs its meta."""
    d = tmp_path / "d"
    with open_(d) as st:
        fill(st, 1, 3)
        st.sync()
        snapshot(st, 3)
    with open_(d) as st:
        assert not st.is_new and st.snap_index == 3 and len(st.entry_log) == 0
    os.unlink(d / "meta")
    assert_refused(d, "no meta file")
