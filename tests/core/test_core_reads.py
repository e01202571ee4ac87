"""ReadIndex and lease reads, and leadership transfer, in the sans-IO core.

Each scenario runs real cores on the simulated network (tests/support/simnet.py)
with faults off, steering delivery by hand where the point is an ordering.
"""
import pytest

from raftfast.core import FOLLOWER, LEADER, NotLeader, TransferInProgress
from raftfast.core.messages import (MSG_HEARTBEAT, MSG_HEARTBEAT_RESP, MSG_PREVOTE, MSG_TIMEOUT_NOW,
                                    MSG_VOTE)
from tests.support.simnet import make_block, quiet_net


def settle_round(net):
    """Deliver everything in flight and make every write durable, until
    the syncs release nothing more."""
    for _ in range(50):
        net.run_round(tick=False)
        if not net.inflight:
            return
    raise AssertionError("messages keep flowing")


def run_ticks(net, ticks):
    for _ in range(ticks):
        net.tick_all()
        settle_round(net)


def elected(net, ticks=200):
    """Run until one leader has committed an entry of its own term."""
    for _ in range(ticks):
        net.tick_all()
        settle_round(net)
        leaders = [n for n in net.nodes.values() if n.raft.role == LEADER]
        if len(leaders) == 1 and leaders[0].raft._committed_in_term:
            return leaders[0]
    raise AssertionError("no leader")


def commit_some(net, leader, k=3):
    net.propose([b"w%d" % i for i in range(k)])
    settle_round(net)
    assert leader.raft.log.committed == leader.raft.log.last_index


def released_ctx(net):
    return [ctx for _, ctx, _ in net.released]


# ------------------------------------------------------------- ReadIndex


def test_a_read_is_released_after_a_majority_answers_a_heartbeat_round():
    net = quiet_net(seed=3)
    ld = elected(net)
    commit_some(net, ld)
    sent_before = net.reads_asked
    net.read(ld)
    assert net.reads_asked == sent_before + 1
    ctx = net.reads_asked
    # Nothing is released before any follower answers; the round went out.
    assert released_ctx(net) == []
    beats = [m for m in net.inflight if m.type == MSG_HEARTBEAT]
    assert len(beats) == 2 and {m.context for m in beats} == {ld.raft.read_round}
    settle_round(net)
    assert net.released == [(ld.id, ctx, ld.raft.log.committed)]


def test_reads_sent_before_a_round_share_it_and_no_log_entry_is_written():
    net = quiet_net(seed=4)
    ld = elected(net)
    commit_some(net, ld)
    last = ld.raft.log.last_index
    rounds = ld.raft.read_round
    for _ in range(5):
        ld.raft.read_index(("shared", _))
        net.reads[("shared", _)] = (ld.id, net.committed.last_index)
    ld.process()
    assert ld.raft.read_round == rounds + 1  # one round for all five
    settle_round(net)
    assert sorted(c for c in released_ctx(net)) == [("shared", i) for i in range(5)]
    assert ld.raft.log.last_index == last  # reads went through no log


def test_a_read_never_joins_a_round_already_under_way():
    """Answers to a round sent before the read arrived must not confirm
    it: a majority could have answered that round before a newer leader
    was elected."""
    net = quiet_net(seed=5)
    ld = elected(net)
    commit_some(net, ld)
    net.tick_all()  # a heartbeat round goes out ...
    early_round = ld.raft.read_round
    early = [m for m in net.inflight if m.type == MSG_HEARTBEAT and m.context == early_round]
    assert early
    net.read(ld)    # ... then the read arrives (and starts the next round)
    ctx = net.reads_asked
    assert ld.raft.read_round == early_round + 1
    # Deliver only the early round and its answers.
    for m in early:
        net.inflight.remove(m)
        follower = net.nodes[m.to]
        follower.raft.step(m)
        follower.process()
    answers = [m for m in net.inflight if m.type == MSG_HEARTBEAT_RESP and m.context == early_round]
    assert len(answers) == 2
    for m in answers:
        net.inflight.remove(m)
        ld.raft.step(m)
        ld.process()
    assert ctx not in released_ctx(net)
    settle_round(net)  # now the read's own round is answered
    assert ctx in released_ctx(net)


def test_a_new_leader_serves_reads_only_after_committing_an_entry_of_its_term():
    net = quiet_net(seed=6)
    ld = elected(net)
    commit_some(net, ld, 4)
    committed = ld.raft.log.committed
    # Depose it: a follower takes over through a transfer; hold the new
    # leader's first appends so its commit index lags.
    target = next(i for i in net.ids if i != ld.id)
    ld.raft.transfer_leadership(target)
    ld.process()
    new = net.nodes[target]
    for _ in range(100):
        if not net.inflight:
            break
        net.deliver_one()
        for node in net.nodes.values():
            node.sync()
        if new.raft.role == LEADER:
            break
    assert new.raft.role == LEADER and not new.raft._committed_in_term
    assert new.raft.log.committed < committed + 1  # its noop is not committed yet
    net.read(new)
    ctx = net.reads_asked
    settle_round(net)
    assert new.raft._committed_in_term
    (node, got, index), = [r for r in net.released if r[1] == ctx]
    assert node == new.id and index >= committed + 1  # covers its noop, so every older entry


def test_a_deposed_leader_never_releases_a_read():
    net = quiet_net(seed=7)
    ld = elected(net)
    commit_some(net, ld)
    net.isolate(ld.id)
    # The others elect a leader and commit while the old one still leads.
    for _ in range(400):
        net.tick_all()
        settle_round(net)
        others = [n for n in net.nodes.values() if n.raft.role == LEADER and n.id != ld.id]
        if others and others[0].raft._committed_in_term:
            break
    assert others
    # The old leader has not yet noticed (its CheckQuorum fires only every
    # election timeout) or has stepped down; either way a read asked of it
    # while it leads is never released.
    if ld.raft.role == LEADER:
        net.read(ld)
        ctx = net.reads_asked
        net.heal()
        run_ticks(net, 30)
        assert ctx not in released_ctx(net)
        assert ld.raft.role == FOLLOWER
    with pytest.raises(NotLeader):
        ld.raft.read_index("late")


def test_a_single_voter_confirms_reads_by_itself():
    net = quiet_net(n=1, seed=8)
    ld = elected(net)
    net.read(ld)
    assert released_ctx(net) == [net.reads_asked]


# ------------------------------------------------------------ lease reads


def test_a_lease_read_is_served_without_a_round_while_the_lease_holds():
    net = quiet_net(seed=9, read_mode="lease")
    ld = elected(net)
    commit_some(net, ld)
    run_ticks(net, 1)  # a round answered: the lease starts
    assert ld.raft._lease_valid()
    rounds = ld.raft.read_round
    net.read(ld)
    assert released_ctx(net) == [net.reads_asked]  # at once
    assert ld.raft.read_round == rounds             # and without a round


def test_a_lease_lapses_without_answers_and_reads_fall_back_to_readindex():
    net = quiet_net(seed=10, read_mode="lease")
    ld = elected(net)
    commit_some(net, ld)
    run_ticks(net, 1)
    net.isolate(ld.id)
    lease_ticks = ld.raft._lease_ticks()
    for _ in range(lease_ticks):
        net.tick_all()
        settle_round(net)
    assert not ld.raft._lease_valid()
    if ld.raft.role == LEADER:
        net.read(ld)
        assert net.reads_asked not in released_ctx(net)


def test_the_lease_is_shorter_than_the_time_followers_refuse_other_candidates():
    net = quiet_net(seed=11, read_mode="lease")
    ld = elected(net)
    e = ld.raft.cfg.election_ticks
    assert 0 < ld.raft._lease_ticks() <= e - 2


def test_a_leadership_transfer_suspends_lease_reads():
    net = quiet_net(seed=12, read_mode="lease")
    ld = elected(net)
    commit_some(net, ld)
    run_ticks(net, 1)
    assert ld.raft._lease_valid()
    target = next(i for i in net.ids if i != ld.id)
    net.cut.add((ld.id, target))  # the transfer cannot finish
    ld.raft.transfer_leadership(target)
    assert not ld.raft._lease_valid()


def test_lease_mode_needs_check_quorum():
    from raftfast.core import CoreConfig
    with pytest.raises(ValueError, match="check_quorum"):
        CoreConfig(1, (1, 2, 3), read_mode="lease", check_quorum=False)


# ---------------------------------------------------- leadership transfer


def test_transfer_to_an_up_to_date_follower_skips_prevote_and_elects_it():
    net = quiet_net(seed=13)
    ld = elected(net)
    commit_some(net, ld)
    term = ld.raft.term
    target = next(i for i in net.ids if i != ld.id)
    ld.raft.transfer_leadership(target)
    ld.process()
    assert [m.type for m in net.inflight if m.to == target] == [MSG_TIMEOUT_NOW]
    with pytest.raises(TransferInProgress):
        ld.raft.propose(make_block([b"refused"]))
    types = []
    for _ in range(50):
        if not net.inflight:
            break
        types += [m.type for m in net.inflight]
        net.deliver_one()
        for node in net.nodes.values():
            node.sync()
    settle_round(net)
    new = net.nodes[target]
    assert new.raft.role == LEADER and new.raft.term == term + 1
    assert MSG_PREVOTE not in types and MSG_VOTE in types
    assert ld.raft.role == FOLLOWER and ld.raft.leader_id == target


def test_transfer_to_a_lagging_follower_first_brings_it_up_to_date():
    net = quiet_net(seed=14)
    ld = elected(net)
    target = next(i for i in net.ids if i != ld.id)
    net.isolate(target)
    commit_some(net, ld, 5)
    net.heal()
    assert net.nodes[target].raft.log.last_index < ld.raft.log.last_index
    ld.raft.transfer_leadership(target)
    ld.process()
    assert not any(m.type == MSG_TIMEOUT_NOW for m in net.inflight)
    run_ticks(net, 5)
    new = net.nodes[target]
    assert new.raft.role == LEADER
    assert new.raft.log.committed >= ld.raft.log.last_index  # nothing lost


def test_a_transfer_that_cannot_finish_is_abandoned_after_an_election_timeout():
    net = quiet_net(seed=15)
    ld = elected(net)
    commit_some(net, ld)
    target = next(i for i in net.ids if i != ld.id)
    net.cut.add((ld.id, target))  # the TimeoutNow never arrives
    ld.raft.transfer_leadership(target)
    ld.process()
    for _ in range(ld.raft.cfg.election_ticks - 1):
        net.tick_all()
        settle_round(net)
        assert ld.raft.lead_transferee == target
    net.tick_all()
    settle_round(net)
    assert ld.raft.role == LEADER and ld.raft.lead_transferee == 0
    ld.raft.propose(make_block([b"accepted again"]))


def test_transfer_refuses_a_non_voter_and_works_only_on_the_leader():
    net = quiet_net(seed=16)
    ld = elected(net)
    with pytest.raises(ValueError, match="not a voter"):
        ld.raft.transfer_leadership(42)
    follower = next(n for n in net.nodes.values() if n.id != ld.id)
    with pytest.raises(NotLeader):
        follower.raft.transfer_leadership(ld.id)
    ld.raft.transfer_leadership(ld.id)  # to itself: nothing to do
    assert ld.raft.lead_transferee == 0


def test_a_vote_request_from_a_transfer_is_granted_despite_the_leader_lease():
    """Followers that still hear from the leader ignore ordinary vote
    requests (CheckQuorum); one marked as a transfer the leader asked for
    is answered."""
    net = quiet_net(seed=17)
    ld = elected(net)
    commit_some(net, ld)
    target, other = [i for i in net.ids if i != ld.id]
    ld.raft.transfer_leadership(target)
    ld.process()
    settle_round(net)
    assert net.nodes[target].raft.role == LEADER
    assert net.nodes[other].raft.leader_id == target
