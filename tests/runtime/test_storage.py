"""raftfast.runtime.storage: data-dir lock, identity, and recovery into an EntryLog."""
import json
import os
import subprocess
import sys

import pytest

from raftfast._entrylog import encode_entries
from raftfast.core.messages import ENTRY_NORMAL, HardState
from raftfast.runtime.storage import Storage, StorageError
from tests.support import REPO
from tests.reference import logrecord_py as ref

ROOT = REPO

# Small segments: every open with fsync on preallocates one (zero-filled and
# fsynced), which at the default 64 MiB would dominate these tests' time.
SEG = 4096


def ents(term, *datas):
    return encode_entries([(term, ENTRY_NORMAL, d) for d in datas]), len(datas)


def test_fresh_dir_is_created_and_new(tmp_path):
    d = tmp_path / "a" / "b"
    with Storage.open(d, 1, "raftfast", segment_bytes=SEG) as st:
        assert st.is_new
        assert st.hard_state == HardState()
        assert (st.entry_log.first_index, st.entry_log.last_index) == (1, 0)
        assert sorted(os.listdir(d)) == ["LOCK", "meta", "wal"]
        assert json.loads((d / "meta").read_text()) == \
            {"format": 1, "node_id": 1, "cluster_id": "raftfast"}
        assert (d / "LOCK").read_text() == f"{os.getpid()}\n"
    # Reopened with nothing persisted since: still no Raft state, still new.
    with Storage.open(d, 1, "raftfast", segment_bytes=SEG) as st:
        assert st.is_new


def test_recovery_into_entry_log(tmp_path):
    with Storage.open(tmp_path, 3, "c", segment_bytes=SEG) as st:
        st.append(1, *ents(1, b"a", b"b", b"c"))
        st.save_hard_state(HardState(2, 3, 1))
        st.append(4, *ents(1, b"d", b"e"))
        st.append(3, *ents(2, b"C", b"D", b"E", b"F"))  # a conflicting suffix from 3 on
        st.save_hard_state(HardState(2, 3, 5))
        assert st.hard_state == HardState(2, 3, 5)
        st.sync()
    with Storage.open(tmp_path, 3, "c", segment_bytes=SEG) as st:
        assert not st.is_new
        assert st.hard_state == HardState(2, 3, 5)
        log = st.entry_log
        assert (log.first_index, log.last_index) == (1, 6)
        assert [log.term(i) for i in range(1, 7)] == [1, 1, 2, 2, 2, 2]
        assert log.slice(1, 7) == (ents(1, b"a", b"b")[0] + ents(2, b"C", b"D", b"E", b"F")[0], 6)


def test_recovery_across_segments_with_fsync_never(tmp_path):
    with Storage.open(tmp_path, 1, "c", fsync=False, segment_bytes=300) as st:
        assert not st.fsync
        for i in range(1, 41):
            st.append(i, *ents(i, b"x" * 20))
        st.save_hard_state(HardState(40, 1, 39))
        st.sync()
    assert len(os.listdir(tmp_path / "wal")) > 3
    with Storage.open(tmp_path, 1, "c", segment_bytes=300) as st:
        assert st.entry_log.last_index == 40
        assert [st.entry_log.term(i) for i in range(1, 41)] == list(range(1, 41))
        assert st.hard_state == HardState(40, 1, 39)


def test_second_open_in_process_is_refused_until_close(tmp_path):
    st = Storage.open(tmp_path, 1, "c", segment_bytes=SEG)
    with pytest.raises(StorageError, match=f"data dir {tmp_path} is locked by another running node"):
        Storage.open(tmp_path, 1, "c", segment_bytes=SEG)
    st.close()
    st.close()
    Storage.open(tmp_path, 1, "c", segment_bytes=SEG).close()


def test_open_from_another_process_is_refused(tmp_path):
    code = ("import sys; from raftfast.runtime.storage import Storage, StorageError\n"
            "try: Storage.open(sys.argv[1], 1, 'c', segment_bytes=4096)\n"
            "except StorageError as e: print(e); sys.exit(1)\n")
    with Storage.open(tmp_path, 1, "c", segment_bytes=SEG):
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "is locked by another running node" in p.stdout


def test_another_nodes_dir_is_refused(tmp_path):
    Storage.open(tmp_path, 1, "blue", segment_bytes=SEG).close()
    with pytest.raises(StorageError, match="belongs to node 1 of cluster 'blue', not node 2 of cluster 'blue'"):
        Storage.open(tmp_path, 2, "blue", segment_bytes=SEG)
    with pytest.raises(StorageError, match="belongs to node 1 of cluster 'blue', not node 1 of cluster 'green'"):
        Storage.open(tmp_path, 1, "green", segment_bytes=SEG)
    assert json.loads((tmp_path / "meta").read_text())["node_id"] == 1
    Storage.open(tmp_path, 1, "blue", segment_bytes=SEG).close()  # a refusal leaves the lock free


@pytest.mark.parametrize("content,why", [
    (b"{not json", "damaged meta file"),
    (b'{"format": 1, "node_id": 1}', "damaged meta file .no 'cluster_id' field"),
    (b'[1, 2]', "damaged meta file .not a JSON object"),
    (b'{"format": 9, "node_id": 1, "cluster_id": "c"}', "format 9"),
])
def test_bad_meta_is_refused(tmp_path, content, why):
    (tmp_path / "meta").write_bytes(content)
    with pytest.raises(StorageError, match=why):
        Storage.open(tmp_path, 1, "c", segment_bytes=SEG)


def test_log_without_meta_is_refused(tmp_path):
    ref.write_segment(tmp_path / "wal", 1, [ref.encode_hard_state(5, 1, 0)])
    with pytest.raises(StorageError, match="no meta file"):
        Storage.open(tmp_path, 1, "c", segment_bytes=SEG)


def _dir_with_records(path, records):
    Storage.open(path, 1, "c", segment_bytes=SEG).close()
    for name in os.listdir(path / "wal"):
        os.unlink(path / "wal" / name)
    ref.write_segment(path / "wal", 1, records)


@pytest.mark.parametrize("records,why", [
    ([ref.encode_entries(1, ents(1, b"a")[0], 1), ref.encode_entries(3, ents(1, b"c")[0], 1)],
     "skips from index 1 to 3"),
    ([ref.encode_entries(1, ents(1, b"a", b"b")[0], 3)], "says 3 entries, its block holds 2"),
    ([ref.encode_entries(1, ents(1, b"abc")[0][:-1], 1)], "bad entry block at index 1"),
    # Entries are written before the hard state that commits them: a commit
    # index past the end of the log means the log lost its tail.
    ([ref.encode_entries(1, ents(1, b"a")[0], 1), ref.encode_hard_state(1, 1, 2)],
     "ends at index 1, but its hard state says 2 entries are committed"),
])
def test_inconsistent_log_is_refused(tmp_path, records, why):
    _dir_with_records(tmp_path, records)
    with pytest.raises(StorageError, match=why):
        Storage.open(tmp_path, 1, "c", segment_bytes=SEG)


def test_damaged_log_is_refused_naming_file_and_offset(tmp_path):
    with Storage.open(tmp_path, 1, "c", segment_bytes=SEG) as st:
        st.append(1, *ents(1, b"a"))
        st.append(2, *ents(1, b"b"))
    seg = tmp_path / "wal" / ref.segment_name(1)
    data = bytearray(seg.read_bytes())
    data[60] ^= 0xff  # inside the first entries record, which starts at 48
    seg.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=f"damaged log.*{seg}.*offset 48"):
        Storage.open(tmp_path, 1, "c", segment_bytes=SEG)
    Storage.open(tmp_path / "other", 1, "c", segment_bytes=SEG).close()


def test_initial_members_are_recorded_once_and_recovered(tmp_path):
    st = Storage.open(tmp_path / "d", 1, "c", segment_bytes=SEG)
    assert st.members() is None
    st.save_members([3, 1, 2])
    st.close()
    st = Storage.open(tmp_path / "d", 1, "c", segment_bytes=SEG)
    assert st.members() == [1, 2, 3]
    st.close()


def test_a_joining_node_records_that_it_has_no_voters(tmp_path):
    st = Storage.open(tmp_path / "d", 4, "c", segment_bytes=SEG)
    st.save_members([], join=True)
    st.close()
    st = Storage.open(tmp_path / "d", 4, "c", segment_bytes=SEG)
    assert st.members() == []
    assert st.configuration() == (frozenset(), frozenset(), {}, 1)
    st.close()


def test_the_starting_configuration_is_the_snapshots_when_there_is_one(tmp_path):
    from raftfast._kv import KVStore
    from raftfast.core.messages import encode_config
    from raftfast.runtime.snapshot import write_snapshot
    st = Storage.open(tmp_path / "d", 1, "c", segment_bytes=SEG)
    st.save_members([1, 2, 3], cluster_version=2)
    assert st.configuration() == (frozenset({1, 2, 3}), frozenset(), {}, 2)
    write_snapshot(KVStore(), st.snapshot_path(5), 5, 1,
                   encode_config([1, 3, 4], [6], {4: "tcp://127.0.0.1:9004"}, 3))
    st.close()
    st = Storage.open(tmp_path / "d", 1, "c", segment_bytes=SEG)
    assert st.configuration() == (frozenset({1, 3, 4}), frozenset({6}),
                                  {4: "tcp://127.0.0.1:9004"}, 3)
    st.close()


def test_members_written_by_the_first_release_mean_cluster_version_1(tmp_path):
    st = Storage.open(tmp_path / "d", 1, "c", segment_bytes=SEG)
    st.save_members([1, 2, 3])   # no cluster_version key, as raftfast 0.1.0 writes it
    st.close()
    st = Storage.open(tmp_path / "d", 1, "c", segment_bytes=SEG)
    assert st.configuration() == (frozenset({1, 2, 3}), frozenset(), {}, 1)
    st.close()


def test_a_data_dir_with_state_but_no_members_is_refused(tmp_path):
    st = Storage.open(tmp_path / "d", 1, "c", segment_bytes=SEG)
    st.save_hard_state(HardState(2, 1, 0))
    st.sync()
    st.close()
    st = Storage.open(tmp_path / "d", 1, "c", segment_bytes=SEG)
    with pytest.raises(StorageError, match="members"):
        st.members()
    st.close()


def test_recovery_after_a_snapshot_trims_a_record_that_straddles_it(tmp_path):
    """A batch reaching across the snapshot's index: the entries up to it
    are in the snapshot, the rest start the recovered EntryLog; a later
    conflicting suffix still replaces what it replaces."""
    from raftfast._kv import KVStore
    from raftfast.runtime.snapshot import write_snapshot
    with Storage.open(tmp_path, 1, "c", segment_bytes=SEG) as st:
        st.append(1, *ents(1, b"a", b"b", b"c", b"d", b"e"))   # 1..5
        st.append(5, *ents(2, b"E", b"F"))                     # 5..6 replace 5
        st.save_hard_state(HardState(2, 1, 4))
        st.sync()
        write_snapshot(KVStore.from_dict({b"x": b"y"}), st.snapshot_path(3), 3, 1)
    with Storage.open(tmp_path, 1, "c", segment_bytes=SEG) as st:
        assert (st.snap_index, st.snap_term) == (3, 1)
        assert st.kv.get(b"x") == b"y"
        log = st.entry_log
        assert (log.first_index, log.last_index) == (4, 6)
        assert [log.term(i) for i in range(4, 7)] == [1, 2, 2]
        assert log.slice(4, 7) == (ents(1, b"d")[0] + ents(2, b"E", b"F")[0], 3)
        assert st.hard_state == HardState(2, 1, 4)
