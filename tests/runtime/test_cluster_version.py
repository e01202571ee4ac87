"""The cluster version in the runtime: when the leader raises it, what a
leader writes before (runtime/cluster_version.py, server/version_gate.py,
snapshot format 1).  The whole upgrade from raftfast 0.1.0 is
tests/processes/test_upgrade.py."""
import struct

import pytest

from raftfast._kv import OP_APPEND, OP_GET, OP_INCR, OP_SET, OP_SETNX, KVStore, encode_commands
from raftfast.core import LEADER, ConfChangeBusy
from raftfast.core.messages import ENTRY_HEADER_SIZE, encode_config
from raftfast.runtime.cluster_time import ClusterClock
from raftfast.runtime.cluster_version import CLUSTER_VERSION, VersionWatch
from raftfast.runtime.snapshot import SnapshotError, SnapshotWriter, load_snapshot
from raftfast.server.version_gate import legacy_entry


class _Core:
    """What VersionWatch reads of the core, and what it asks of it."""

    def __init__(self, role=LEADER, version=1):
        self.id = 1
        self.role = role
        self.voters = {1, 2, 3}
        self.learners = {4}
        self.cluster_version = version
        self.busy = False
        self.proposed = []

    def propose_conf_change(self, op, node_id, url="", cluster_version=0):
        if self.busy:
            raise ConfChangeBusy("a membership change is in progress")
        self.proposed.append((op, cluster_version))
        self.cluster_version = cluster_version
        return 42


class _Transport:
    def __init__(self, versions):
        self.versions = versions

    def peer_version(self, node_id):
        return self.versions.get(node_id, 0)


def test_the_leader_raises_the_version_once_every_member_speaks_the_new_protocol():
    core = _Core()
    versions = {2: 3, 3: 3, 4: 2}        # the learner still runs the old release
    clock = ClusterClock()
    watch = VersionWatch(core, _Transport(versions), clock)
    assert clock.enabled is False        # no cluster time in the log yet
    watch.tick()
    assert core.proposed == [] and clock.enabled is False
    del versions[4]                      # ... or is not connected: unknown counts as old
    watch.tick()
    assert core.proposed == []
    versions[4] = 3
    core.busy = True                     # a membership change goes first
    watch.tick()
    assert core.proposed == []
    core.busy = False
    watch.tick()
    assert core.proposed == [("version", CLUSTER_VERSION)] and clock.enabled is True
    watch.tick()
    assert len(core.proposed) == 1


def test_only_the_leader_raises_it_and_followers_follow_their_log():
    core = _Core(role="follower")
    clock = ClusterClock()
    watch = VersionWatch(core, _Transport({2: 3, 3: 3, 4: 3}), clock)
    watch.tick()
    assert core.proposed == [] and clock.enabled is False
    core.cluster_version = 2             # the raise reached this node's log
    watch.tick()
    assert clock.enabled is True


def test_the_clock_writes_no_time_entry_while_disabled():
    clock = ClusterClock(wall=lambda: 1000)
    clock.enabled = False
    assert clock.stamp_due() == 0
    clock.enabled = True
    assert clock.stamp_due() == 1000


def _entry(op, args):
    return encode_commands([(op, args)])


@pytest.mark.parametrize("op,args", [(OP_SET, [b"k", b"v"]), (OP_INCR, [b"n"]),
                                     (OP_GET, [b"k"])])
def test_writes_the_first_release_applies_pass_unchanged(op, args):
    block = _entry(op, args)
    assert legacy_entry(block, 0, len(block)) == block


@pytest.mark.parametrize("op,args", [(OP_SET, [b"k", b"v", b"EX", b"10"]),
                                     (OP_SET, [b"k", b"v", b"NX"]), (OP_SETNX, [b"k", b"v"])])
def test_writes_it_cannot_apply_are_refused(op, args):
    block = _entry(op, args)
    assert legacy_entry(block, 0, len(block)) is None


def test_append_loses_the_limit_argument_the_first_release_does_not_know():
    block = encode_commands([(OP_APPEND, [b"key", b"value"])], False, 1 << 20)
    (argc,) = struct.unpack_from("<I", block, ENTRY_HEADER_SIZE + 1)
    assert argc == 3
    old = legacy_entry(block, 0, len(block))
    assert old == encode_commands([(OP_APPEND, [b"key", b"value"])])
    # It applies as an APPEND on this release too.
    kv = KVStore()
    kv.apply(encode_commands([(OP_SET, [b"key", b"v0-"])]) + old, False)
    assert kv.get(b"key") == b"v0-value"


def test_an_entry_inside_a_block_is_taken_by_its_offsets():
    first = _entry(OP_SET, [b"a", b"1"])
    second = encode_commands([(OP_APPEND, [b"a", b"2"])], False, 1 << 20)
    block = first + second
    assert legacy_entry(block, 0, len(first)) == first
    assert legacy_entry(block, len(first), len(block)) == _entry(OP_APPEND, [b"a", b"2"])


def test_a_snapshot_at_cluster_version_1_is_written_in_file_format_1(tmp_path):
    kv = KVStore()
    kv.apply(encode_commands([(OP_SET, [b"k%d" % i, b"v%d" % i]) for i in range(100)]), False)
    path = tmp_path / "snap"
    meta = encode_config((1, 2, 3))
    w = SnapshotWriter(kv, path, 100, 2, meta=meta, version=1)
    w.run()
    raw = path.read_bytes()
    assert raw[:8] == b"RFKVSNAP" and struct.unpack_from("<I", raw, 8)[0] == 1
    loaded, info = load_snapshot(path)
    assert info.version == 1 and info.index == 100 and info.meta == meta
    assert len(loaded) == 100 and loaded.get(b"k7") == b"v7"


def test_a_store_with_deadlines_is_not_written_as_format_1(tmp_path):
    kv = KVStore()
    kv.apply(encode_commands([(OP_SET, [b"k", b"v", b"PX", b"100000"])]), False)
    with pytest.raises(SnapshotError, match="version 1"):
        SnapshotWriter(kv, tmp_path / "snap", 1, 1, version=1)
    assert not list(tmp_path.iterdir())       # nothing left behind
    SnapshotWriter(kv, tmp_path / "snap", 1, 1).run()   # the store was released


def test_the_state_machine_picks_the_file_format_from_the_configuration(tmp_path):
    from raftfast.runtime.kv_state_machine import KVStateMachine
    sm = KVStateMachine(KVStore())
    sm.apply(encode_commands([(OP_SET, [b"k", b"v"])]))
    for version, fmt in ((1, 1), (CLUSTER_VERSION, 2)):
        path = tmp_path / f"snap{version}"
        w = sm.snapshot_writer(str(path), 1, 1, encode_config((1, 2, 3), (), None, version))
        w.run()
        assert struct.unpack_from("<I", path.read_bytes(), 8)[0] == fmt
