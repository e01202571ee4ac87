"""Membership and snapshots in the sans-IO core: configuration bytes and
their history (what a script cannot show: malformed entries and snapshot
metas, the configuration recovered across a restart).  The scenarios are
scripts in testdata/ (test_interaction.py); the random schedules are in
test_simulation.py."""
from raftfast.core import LEADER
from raftfast.core.messages import MSG_SNAPSHOT, Message, decode_config, encode_config
from tests.support.simnet import quiet_net, run_until


def leader_of(net):
    leaders = [n for n in net.nodes.values() if n.raft.role == LEADER]
    return max(leaders, key=lambda n: n.raft.term) if leaders else None


def elected(net):
    """A leader whose own-term entry committed (it takes changes)."""
    def committed_in_its_term():
        ld = leader_of(net)
        return ld is not None and ld.raft.log.term(ld.raft.log.committed) == ld.raft.term
    assert run_until(net, committed_in_its_term)
    return leader_of(net)


def _block(entries):
    """An entry block of (term, type, data) entries."""
    out = bytearray()
    for term, etype, data in entries:
        out += len(data).to_bytes(4, "little") + term.to_bytes(8, "little") + bytes([etype]) + data
    return bytes(out)


def test_a_configuration_falls_back_when_its_entry_is_truncated():
    from tests.support.entrylog import EntryLog
    from raftfast.core import CoreConfig, Raft
    from raftfast.core.messages import ENTRY_CONFIG, ENTRY_NORMAL, MSG_APPEND
    r = Raft(CoreConfig(2, (1, 2, 3), seed=1), EntryLog(1))
    conf = encode_config((1, 2, 3), (4,), {4: "tcp://h:4"})
    r.step(Message(MSG_APPEND, to=2, frm=1, term=2, index=0, log_term=0,
                   entries=_block([(2, ENTRY_NORMAL, b"a"), (2, ENTRY_CONFIG, conf)]), count=2))
    assert r.learners == {4} and r.urls == {4: "tcp://h:4"} and r.conf_index == 2
    v = r.conf_version
    # A leader of term 3 never had that entry: index 2 is overwritten.
    r.step(Message(MSG_APPEND, to=2, frm=3, term=3, index=1, log_term=2,
                   entries=_block([(3, ENTRY_NORMAL, b"b")]), count=1))
    assert r.learners == set() and r.voters == {1, 2, 3} and r.urls == {}
    assert r.conf_index == 0 and r.conf_version == v + 1
    # Re-sending entries it already holds changes nothing.
    r.step(Message(MSG_APPEND, to=2, frm=3, term=3, index=0, log_term=0,
                   entries=_block([(2, ENTRY_NORMAL, b"a"), (3, ENTRY_NORMAL, b"b")]), count=2))
    assert r.conf_version == v + 1


def test_a_config_entry_that_does_not_decode_is_skipped_by_every_node_alike():
    from tests.support.entrylog import EntryLog
    from raftfast.core import CoreConfig, Raft
    from raftfast.core.messages import ENTRY_CONFIG, MSG_APPEND
    r = Raft(CoreConfig(2, (1, 2, 3), seed=1), EntryLog(1))
    r.step(Message(MSG_APPEND, to=2, frm=1, term=2, index=0, log_term=0,
                   entries=_block([(2, ENTRY_CONFIG, b"\x01garbage"),
                                   (2, ENTRY_CONFIG, encode_config((), (1,)))]), count=2))
    assert r.voters == {1, 2, 3} and r.conf_index == 0


def test_config_entries_and_snapshot_meta_carry_the_whole_member_set():
    net = quiet_net(3, seed=23, membership=True, snapshots=True)
    ld = elected(net)
    ld.raft.propose_conf_change("add", 4, "unix:///tmp/n4.sock")
    assert run_until(net, lambda: 4 in ld.raft.voters
                     and ld.raft.log.committed >= ld.raft.conf_index)
    meta = ld.raft.config_at(ld.raft.log.committed)
    voters, learners, urls = decode_config(meta)
    assert voters == {1, 2, 3, 4} and learners == set() and urls == {4: "unix:///tmp/n4.sock"}
    # Before the change, the old one.
    assert decode_config(ld.raft.config_at(1))[0] == {1, 2, 3}


def test_a_restart_recovers_the_configuration_from_the_snapshot_and_the_log():
    net = quiet_net(3, seed=37, membership=True, snapshots=True)
    ld = elected(net)
    ld.raft.propose_conf_change("add", 4)
    assert run_until(net, lambda: all(4 in net.nodes[i].raft.voters for i in (1, 2, 3, 4))
                     and ld.raft.log.committed >= ld.raft.conf_index)
    for node in net.nodes.values():
        node.take_snapshot(trailing=0)
    ld = leader_of(net)
    idx = ld.raft.propose_conf_change("add", 5)
    assert run_until(net, lambda: all(n.raft.log.committed >= idx for n in net.nodes.values()
                                      if n.id in (1, 2, 3, 4)))
    for node in list(net.nodes.values()):
        node.sync()
        node.crash_restart()
        assert node.raft.voters >= {1, 2, 3, 4}
        if node.id != 5:
            assert 5 in node.raft.voters | node.raft.learners


def test_a_snapshot_with_a_bad_configuration_is_ignored():
    net = quiet_net(3, seed=41)
    f = net.nodes[2]
    before = (f.raft.log.committed, f.raft.voters)
    f.raft.step(Message(MSG_SNAPSHOT, to=2, frm=1, term=5, index=50, log_term=4,
                        entries=b"\x07junk"))
    f.process()
    assert (f.raft.log.committed, f.raft.voters) == before and net.installs == 0
    f.raft.step(Message(MSG_SNAPSHOT, to=2, frm=1, term=5, index=50, log_term=4,
                        entries=encode_config([], [3])))
    f.process()
    assert (f.raft.log.committed, f.raft.voters) == before and net.installs == 0


# ------------------------------------------------------- cluster version

def test_cluster_version_1_is_written_in_the_first_releases_format():
    from raftfast.core.messages import config_cluster_version
    old = encode_config((1, 2), (3,), {3: "tcp://h:3"})
    assert old[0] == 1 and encode_config((1, 2), (3,), {3: "tcp://h:3"}, 1) == old
    assert config_cluster_version(old) == 1
    new = encode_config((1, 2), (3,), {3: "tcp://h:3"}, 2)
    assert new[0] == 2 and new[1:-2] == old[1:] and config_cluster_version(new) == 2
    assert decode_config(new) == decode_config(old)


def test_a_versioned_configuration_without_a_version_above_1_does_not_decode():
    import pytest
    from raftfast.core.messages import ConfigFormatError
    body = encode_config((1,), (), None, 2)
    for bad in (body[:-2] + (1).to_bytes(2, "little"), body[:-2] + (0).to_bytes(2, "little"),
                bytes([2]) + (0).to_bytes(4, "little")):
        with pytest.raises(ConfigFormatError):
            decode_config(bad)
    with pytest.raises(ValueError):
        encode_config((1,), (), None, 0)


def test_the_leader_raises_the_cluster_version_by_a_configuration_entry():
    import pytest
    from raftfast.core import ConfChangeBusy, ConfChangeInvalid
    from raftfast.core.messages import config_cluster_version
    net = quiet_net(3, seed=29, membership=True, snapshots=True)
    ld = elected(net)
    members = [net.nodes[i] for i in (1, 2, 3)]
    assert all(n.raft.cluster_version == 1 for n in members)
    idx = ld.raft.propose_conf_change("version", 0, cluster_version=2)
    assert ld.raft.cluster_version == 2    # in effect from the moment it is in the log
    with pytest.raises(ConfChangeBusy):
        ld.raft.propose_conf_change("version", 0, cluster_version=3)
    assert run_until(net, lambda: all(n.raft.log.committed >= idx for n in members))
    assert all(n.raft.cluster_version == 2 and n.raft.voters == {1, 2, 3} for n in members)
    with pytest.raises(ConfChangeInvalid):
        ld.raft.propose_conf_change("version", 0, cluster_version=2)   # never down, never again
    # Later membership changes keep it, and a snapshot's meta carries it.
    ld.raft.propose_conf_change("add", 4)
    assert ld.raft.cluster_version == 2
    assert config_cluster_version(ld.raft.config_at(ld.raft.conf_index)) == 2
    assert config_cluster_version(ld.raft.config_at(idx - 1)) == 1


def test_a_truncated_version_entry_takes_the_cluster_version_back():
    from tests.support.entrylog import EntryLog
    from raftfast.core import CoreConfig, Raft
    from raftfast.core.messages import ENTRY_CONFIG, ENTRY_NORMAL, MSG_APPEND
    r = Raft(CoreConfig(2, (1, 2, 3), seed=1), EntryLog(1))
    assert r.cluster_version == 1
    r.step(Message(MSG_APPEND, to=2, frm=1, term=2, index=0, log_term=0,
                   entries=_block([(2, ENTRY_NORMAL, b"a"),
                                   (2, ENTRY_CONFIG, encode_config((1, 2, 3), (), None, 2))]),
                   count=2))
    assert r.cluster_version == 2
    r.step(Message(MSG_APPEND, to=2, frm=3, term=3, index=1, log_term=2,
                   entries=_block([(3, ENTRY_NORMAL, b"b")]), count=1))
    assert r.cluster_version == 1


def test_a_node_starts_at_the_cluster_version_it_is_given_and_a_snapshot_brings_its_own():
    from tests.support.entrylog import EntryLog
    from raftfast.core import CoreConfig, Raft
    r = Raft(CoreConfig(2, (1, 2, 3), seed=1, cluster_version=2), EntryLog(1))
    assert r.cluster_version == 2
    old = Raft(CoreConfig(2, (1, 2, 3), seed=1), EntryLog(1))
    old.step(Message(MSG_SNAPSHOT, to=2, frm=1, term=5, index=50, log_term=4,
                     entries=encode_config([1, 2, 3], [], None, 2)))
    assert old.cluster_version == 2 and old.snapshot_index == 50
