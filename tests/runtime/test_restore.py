"""runtime/restore.py: the data dir a backup restores into, read back the
way a starting node reads it."""
import os

import pytest

from raftfast._kv import KVStore
from raftfast.core.messages import HardState, encode_config
from raftfast.runtime.restore import RestoreError, default_cluster_id, restore
from raftfast.runtime.snapshot import write_snapshot
from raftfast.runtime.storage import Storage


@pytest.fixture
def backup(tmp_path):
    kv = KVStore.from_dict({b"k%d" % i: b"v%d" % i for i in range(100)})
    path = str(tmp_path / "b.rfb")
    write_snapshot(kv, path, 500, 9, encode_config({1, 2, 3}, (), {2: "tcp://h:1"}, 2))
    return path


def test_a_restored_dir_starts_as_the_only_member_at_the_backups_index(tmp_path, backup):
    d = str(tmp_path / "n")
    done = restore(backup, d, 7, "fresh")
    assert (done.index, done.term, done.keys) == (500, 9, 100)
    assert done.old_voters == {1, 2, 3} and done.cluster_version == 2
    with Storage.open(d, 7, "fresh") as s:
        assert (s.snap_index, s.snap_term) == (500, 9)
        assert s.hard_state == HardState(9, 0, 500)
        assert s.entry_log.first_index == 501 and len(s.entry_log) == 0
        assert s.configuration() == (frozenset({7}), frozenset(), {}, 2)
        assert s.members() == [7]
        assert dict(s.kv.items()) == {b"k%d" % i: b"v%d" % i for i in range(100)}
    with pytest.raises(Exception, match="belongs to node 7 of cluster 'fresh'"):
        Storage.open(d, 7, "other")


def test_restore_writes_nothing_into_a_dir_that_holds_anything(tmp_path, backup):
    d = tmp_path / "busy"
    d.mkdir()
    (d / "keep").write_text("x")
    with pytest.raises(RestoreError, match="is not empty"):
        restore(backup, str(d), 1, "c")
    assert os.listdir(d) == ["keep"]


def test_default_cluster_ids_differ():
    a, b = default_cluster_id(), default_cluster_id()
    assert a.startswith("restored-") and len(a) == len("restored-") + 8 and a != b
