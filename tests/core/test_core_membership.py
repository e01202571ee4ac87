"""Membership changes and snapshots in the sans-IO core, scenario by
scenario on the simulated network (tests/support/simnet.py); the random schedules
are in test_simulation.py."""
import pytest

from raftfast.core import LEADER, ConfChangeBusy, ConfChangeInvalid, NotLeader, SNAPSHOT
from raftfast.core.messages import (MSG_SNAPSHOT, MSG_TIMEOUT_NOW, MSG_PREVOTE, Message,
                                    decode_config, encode_config)
from tests.support.simnet import quiet_net, run_until


def leader_of(net):
    leaders = [n for n in net.nodes.values() if n.raft.role == LEADER]
    return max(leaders, key=lambda n: n.raft.term) if leaders else None


def elected(net):
    """A leader whose own-term entry committed (it takes changes)."""
    assert run_until(net, lambda: leader_of(net) is not None
                     and leader_of(net).raft._committed_in_term)
    return leader_of(net)


def write(net, n=1):
    ld = leader_of(net)
    for i in range(n):
        net.propose([b"w%d" % i])
    return ld


def caught_up(net, ids):
    ld = leader_of(net)
    return ld is not None and all(net.nodes[i].applied == ld.raft.log.committed for i in ids)


def test_an_added_node_is_a_learner_first_then_promoted_once_caught_up():
    net = quiet_net(3, seed=5, membership=True)
    ld = elected(net)
    write(net, 20)
    assert run_until(net, lambda: caught_up(net, [1, 2, 3]))
    index = ld.raft.propose_conf_change("add", 4, "tcp://127.0.0.1:9004")
    # In effect on the leader at once, as a learner: not counted, not asked to vote.
    assert ld.raft.learners == {4} and 4 not in ld.raft.voters
    assert ld.raft.urls[4] == "tcp://127.0.0.1:9004"
    assert run_until(net, lambda: ld.raft.log.committed >= index)
    # The leader promotes it by itself once its log reached the commit index.
    assert run_until(net, lambda: all(4 in net.nodes[i].raft.voters for i in (1, 2, 3, 4)))
    assert ld.raft.learners == set() and net.nodes[4].raft.learners == set()
    assert run_until(net, lambda: caught_up(net, [1, 2, 3, 4]))
    # The new voter now counts: four voters, commits need three.
    assert len(ld.raft.voters) == 4


def test_promotion_follows_by_itself_across_a_change_of_leader():
    net = quiet_net(3, seed=7, membership=True)
    ld = elected(net)
    net.isolate(4)  # the learner cannot catch up yet
    index = ld.raft.propose_conf_change("add", 4)
    others = [i for i in (1, 2, 3) if i != ld.id]
    assert run_until(net, lambda: all(net.nodes[i].raft.log.committed >= index for i in others))
    net.heal()
    # The old leader goes away before it could promote; the next one does it.
    net.isolate(ld.id)
    assert run_until(net, lambda: leader_of(net) is not None and leader_of(net).id != ld.id
                     and 4 in leader_of(net).raft.voters)
    net.heal()
    assert run_until(net, lambda: all(4 in n.raft.voters for n in net.nodes.values()
                                      if n.id != 5))


def test_one_change_at_a_time_and_none_before_the_leaders_own_commit():
    net = quiet_net(3, seed=9, membership=True)
    ld = elected(net)
    ld.raft.propose_conf_change("add", 4)
    with pytest.raises(ConfChangeBusy, match="in progress"):
        ld.raft.propose_conf_change("add", 5)
    # A leader fresh in office refuses until an entry of its term commits.
    net.isolate(ld.id)
    assert run_until(net, lambda: leader_of(net) is not None and leader_of(net).id != ld.id)
    new = leader_of(net)
    new.raft._committed_in_term = False  # as right after its election
    with pytest.raises(ConfChangeBusy, match="own|its term"):
        new.raft.propose_conf_change("add", 5)


@pytest.mark.parametrize("op,node,msg", [
    ("add", 2, "already a member"), ("remove", 9, "not a member"),
    ("promote", 2, "not a learner")])
def test_changes_that_make_no_sense_are_refused_and_nothing_is_proposed(op, node, msg):
    net = quiet_net(3, seed=11, membership=True)
    ld = elected(net)
    last = ld.raft.log.last_index
    with pytest.raises(ConfChangeInvalid, match=msg):
        ld.raft.propose_conf_change(op, node)
    assert ld.raft.log.last_index == last


def test_the_only_voter_cannot_be_removed_and_followers_redirect():
    net = quiet_net(1, seed=3, membership=True)
    ld = elected(net)
    with pytest.raises(ConfChangeInvalid, match="only voter"):
        ld.raft.propose_conf_change("remove", ld.id)
    with pytest.raises(NotLeader):
        net.nodes[2].raft.propose_conf_change("add", 3)


def test_a_removed_leader_leads_until_the_change_commits_then_hands_over():
    net = quiet_net(3, seed=13, membership=True)
    ld = elected(net)
    write(net, 5)
    assert run_until(net, lambda: caught_up(net, [1, 2, 3]))
    index = ld.raft.propose_conf_change("remove", ld.id)
    assert ld.raft.role == LEADER and ld.id not in ld.raft.voters
    sent = []
    orig_send = net.send

    def spy(m):
        sent.append(m)
        orig_send(m)
    net.send = spy
    # Not one tick: the hand-over (TimeoutNow) elects the next leader
    # without waiting out an election timeout.
    for _ in range(10):
        net.run_round(tick=False)
    net.check()
    assert ld.raft.role != LEADER
    assert any(m.type == MSG_TIMEOUT_NOW and m.frm == ld.id for m in sent)
    new = leader_of(net)
    assert new is not None and new.id != ld.id and new.raft.log.committed >= index
    assert ld.id not in new.raft.voters
    # The removed node never campaigns again, however long it waits.
    for _ in range(60):
        net.run_round()
    assert not any(m.type == MSG_PREVOTE and m.frm == ld.id for m in sent)
    assert leader_of(net).raft.term == new.raft.term


def test_a_removed_node_that_missed_its_removal_cannot_disrupt():
    net = quiet_net(3, seed=17, membership=True)
    ld = elected(net)
    victim = next(i for i in (1, 2, 3) if i != ld.id)
    net.isolate(victim)
    index = ld.raft.propose_conf_change("remove", victim)
    assert run_until(net, lambda: ld.raft.log.committed >= index)
    term = ld.raft.term
    net.heal()
    # It still thinks it is a voter and campaigns, but its log lacks the
    # committed removal: no pre-vote succeeds, nobody's term moves.
    for _ in range(100):
        net.run_round()
    net.check()
    assert victim in net.nodes[victim].raft.voters
    assert leader_of(net).id == ld.id and ld.raft.term == term


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


def _write_without(net, lagger, n, tag):
    ld = leader_of(net)
    for i in range(n):
        net.propose([b"%s%d" % (tag, i)])
    target = ld.raft.log.last_index
    assert run_until(net, lambda: all(net.nodes[i].applied >= target
                                      for i in (1, 2, 3) if i != lagger))
    return ld


def test_a_follower_behind_the_compacted_log_gets_the_snapshot_and_replicates_on():
    net = quiet_net(3, seed=29, snapshots=True)
    ld = elected(net)
    lagger = next(i for i in (1, 2, 3) if i != ld.id)
    net.isolate(lagger)
    _write_without(net, lagger, 30, b"x")
    ld.take_snapshot(trailing=2)
    assert ld.raft.snapshot_index > 30
    assert ld.raft.log.snap_index == ld.raft.snapshot_index - 2
    sent = []
    orig_send = net.send
    net.send = lambda m: (sent.append(m), orig_send(m))
    net.heal()
    assert run_until(net, lambda: net.nodes[lagger].raft.snapshot_index == ld.raft.snapshot_index)
    assert [m.index for m in sent if m.type == MSG_SNAPSHOT] == [ld.raft.snapshot_index]
    assert net.installs == 1 and net.nodes[lagger].raft.log.snap_index == ld.raft.snapshot_index
    net.propose([b"after"])
    assert run_until(net, lambda: net.nodes[lagger].applied == ld.raft.log.last_index)


def test_no_catch_up_loop_the_log_is_kept_after_a_snapshot_being_sent():
    net = quiet_net(3, seed=31, snapshots=True)
    ld = elected(net)
    lagger = next(i for i in (1, 2, 3) if i != ld.id)
    net.isolate(lagger)
    _write_without(net, lagger, 10, b"x")
    ld.take_snapshot(trailing=0)
    first_snap = ld.raft.snapshot_index
    # The stream is slow: the snapshot stays on its way while the cluster
    # writes on and snapshots again, compacting all it may.
    sent, held = [], []
    orig_send = net.send

    def slow_stream(m):
        sent.append(m)
        if m.type == MSG_SNAPSHOT:
            m.entries = b""  # filled in by SimNet.send when it goes out
            held.append(m)
        else:
            orig_send(m)
    net.send = slow_stream
    net.heal()
    assert run_until(net, lambda: held, rounds=20)
    assert ld.raft.progress[lagger].state == SNAPSHOT
    _write_without(net, lagger, 10, b"y")
    ld.take_snapshot(trailing=0)
    assert ld.raft.snapshot_index > first_snap + 5
    assert ld.raft.log.snap_index == first_snap == ld.raft.compactable(0)
    # The old snapshot arrives; the rest comes from the log, no second snapshot.
    net.send = lambda m: (sent.append(m), orig_send(m))
    for m in held:
        orig_send(m)
    assert run_until(net, lambda: net.nodes[lagger].applied == ld.raft.log.committed)
    assert [m.index for m in sent if m.type == MSG_SNAPSHOT] == [first_snap]
    # Once it caught up, the floor lifts.
    assert ld.raft.compactable(0) == ld.raft.snapshot_index


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


def test_an_idle_leader_probes_a_new_node_again_after_its_first_probe_was_lost():
    net = quiet_net(3, seed=43, membership=True)
    ld = elected(net)
    net.cut.add((ld.id, 4))  # its connection is not up yet: the first probes are lost
    index = ld.raft.propose_conf_change("add", 4)
    for _ in range(5):
        net.run_round(tick=False)
    assert ld.raft.log.committed == index == ld.raft.log.last_index
    net.cut.clear()
    # No more writes: only heartbeats carry the leader on.
    assert run_until(net, lambda: 4 in ld.raft.voters and net.nodes[4].applied
                     == ld.raft.log.committed == ld.raft.log.last_index)


def test_a_delivered_snapshot_waits_for_the_install_before_replication_goes_on():
    net = quiet_net(3, seed=47, snapshots=True)
    ld = elected(net)
    lagger = next(i for i in (1, 2, 3) if i != ld.id)
    net.isolate(lagger)
    for i in range(10):
        net.propose([b"x%d" % i])
    target = ld.raft.log.last_index
    assert run_until(net, lambda: ld.applied >= target)
    ld.take_snapshot(trailing=0)
    snap = ld.raft.snapshot_index
    asked = []
    orig_send = net.send

    def delivered_not_installed(m):
        # The runtime's stream completed (every byte acknowledged), but the
        # follower is still loading the file: nothing reaches its core yet.
        if m.type == MSG_SNAPSHOT:
            asked.append(m.index)
            ld.raft.report_snapshot(m.to, True)
        else:
            orig_send(m)
    net.send = delivered_not_installed
    net.heal()
    for _ in range(40):
        net.run_round()
    pr = ld.raft.progress[lagger]
    # Asked once; then it waits, keeping the log after the snapshot.
    assert asked == [snap] and pr.state == SNAPSHOT and pr.snapshot_delivered
    assert ld.raft.compactable(0) == snap
    # The install's acknowledgement never comes: after ten election
    # timeouts the leader probes after the snapshot, and (the follower not
    # having it) sends it again.
    for _ in range(120):
        net.run_round()
    assert asked[:2] == [snap, snap] and len(asked) <= 3
