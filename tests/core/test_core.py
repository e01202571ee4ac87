"""Targeted scenarios for the sans-IO core (the chaos sweep is in
test_simulation.py)."""
import pytest

from tests.support.entrylog import EntryLog, encode_entries
from raftfast.core import FOLLOWER, LEADER, CoreConfig, LogPanic, Raft
from raftfast.core.messages import (ENTRY_NORMAL, MSG_APPEND, MSG_HEARTBEAT, MSG_VOTE,
                                    MSG_VOTE_RESP, HardState, Message)
from tests.support.simnet import make_block, quiet_net, run_until


def new_raft(node_id=1, voters=(1, 2, 3), entries=(), hs=None, seed=1):
    log = EntryLog(1)
    if entries:
        log.append(1, entries)
    return Raft(CoreConfig(node_id, voters, election_ticks=10, heartbeat_ticks=1, seed=seed),
                log, hs)


def entries_of(terms):
    return encode_entries([(t, ENTRY_NORMAL, f"e{i}".encode()) for i, t in enumerate(terms, 1)])


def drain(raft):
    """One runtime cycle with an instant disk: returns (sent, persisted-released)."""
    sent, after = [], []
    while raft.has_ready():
        rd = raft.ready()
        sent += rd.messages
        after += rd.persist_messages
        raft.advance(rd)
    return sent, after


def release(raft, msgs):
    out = []
    for m in msgs:
        if m.to == raft.id:
            raft.step(m)
        else:
            out.append(m)
    return out


def leader_of(net):
    leaders = [n for n in net.nodes.values() if n.raft.role == LEADER]
    return leaders[0] if len(leaders) == 1 else None


def test_a_committed_entry_can_never_be_truncated():
    """No message reaches this (an append below the commit index is answered
    with the commit index: testdata/conflict.txt); the log itself refuses."""
    r = new_raft(node_id=2, entries=entries_of([1, 1, 2]), hs=HardState(2, 0, 3))
    block = encode_entries([(3, ENTRY_NORMAL, b"x")])
    with pytest.raises(LogPanic):
        r.log.maybe_append(1, 1, 0, block, 1)
    assert r.log.term(2) == 1 and r.log.term(3) == 2


def test_restart_recovers_term_vote_and_log():
    net = quiet_net(3, seed=11)
    assert run_until(net, lambda: leader_of(net) is not None)
    ld = leader_of(net)
    ld.raft.propose(make_block([b"k1", b"k2"]))
    ld.process()
    assert run_until(net, lambda: all(n.applied == net.committed.last_index for n in net.nodes.values()))
    victim = next(n for n in net.nodes.values() if n.id != ld.id)
    before = (victim.raft.term, victim.raft.vote, victim.raft.log.last_index)
    net.crash(victim)
    assert (victim.raft.term, victim.raft.vote, victim.raft.log.last_index) == before
    assert run_until(net, lambda: victim.applied == net.committed.last_index)


def test_a_leader_that_lost_its_unsynced_term_cannot_win_it_again():
    """Regression (found in review): A wins term 1 on B's and C's votes,
    replicates P1 to B, loses power before its own fsync and comes back in
    term 0.  Had its vote requests left before its term was durable, it
    could win term 1 again and commit P2 at the index where B holds P1."""
    net = quiet_net(3, seed=1)
    a, b, c = (net.nodes[i] for i in (1, 2, 3))
    a.raft.campaign()
    a.process()
    # Nothing can reach the voters before A's own fsync.
    assert not [m for m in net.inflight if m.type == MSG_VOTE]
    a.sync()
    assert sorted(m.to for m in net.inflight if m.type == MSG_VOTE) == [2, 3]
    assert a.storage.durable == len(a.storage.records)  # term 1 is on A's disk now
    net.crash(a)
    assert a.raft.term == 1 and a.raft.vote == 1  # it remembers term 1 and its vote


def test_a_leader_without_commits_stops_taking_proposals_at_its_cap():
    from raftfast.core import ProposalDropped
    log = EntryLog(1)
    r = Raft(CoreConfig(1, (1, 2, 3), max_uncommitted_entries=5, seed=1), log)
    r.campaign()
    r.votes = {1: True, 2: True}
    r.become_leader()  # the noop is entry 1, uncommitted
    for _ in range(4):
        r.propose(make_block([b"x"]))
    with pytest.raises(ProposalDropped):
        r.propose(make_block([b"y"]))
    assert r.log.last_index == 5


def test_votes_from_outside_the_configuration_are_dropped():
    from raftfast.core.messages import MSG_PREVOTE
    r = new_raft(node_id=1)
    r.step(Message(MSG_APPEND, to=1, frm=2, term=3, index=0, log_term=0,
                   entries=make_block([b"a"]), count=1))
    drain(r)
    # A stranger whose log is not ahead of ours: nothing it says counts.
    r.step(Message(MSG_VOTE, to=1, frm=99, term=10**9, index=0, log_term=0))
    r.step(Message(MSG_PREVOTE, to=1, frm=99, term=10**9, index=1, log_term=3))
    r.step(Message(MSG_VOTE_RESP, to=1, frm=99, term=10**9))
    assert r.term == 3 and r.vote == 0 and not r.has_ready()


def test_a_vote_request_from_a_node_ahead_of_our_configurations_is_heard():
    # A voter added in entries this node lacks: its log is ahead of ours.
    r = new_raft(node_id=1)
    r.step(Message(MSG_VOTE, to=1, frm=99, term=4, index=7, log_term=3))
    assert r.term == 4 and r.vote == 99


def test_a_leader_outside_the_configuration_is_followed_unless_another_one_is_heard():
    # A node being added, or a member whose log lags a leader added after
    # its last configuration entry, must hear the leader it does not know.
    r = new_raft(node_id=1)
    r.step(Message(MSG_APPEND, to=1, frm=77, term=5, index=0, log_term=0))
    assert r.term == 5 and r.leader_id == 77
    # But while it hears a leader, a stranger claiming to lead is ignored.
    r = new_raft(node_id=1)
    r.step(Message(MSG_HEARTBEAT, to=1, frm=2, term=3))
    r.step(Message(MSG_APPEND, to=1, frm=77, term=9, index=0, log_term=0))
    assert r.term == 3 and r.leader_id == 2
    for _ in range(r.cfg.election_ticks):
        r.tick()
    r.step(Message(MSG_APPEND, to=1, frm=77, term=9, index=0, log_term=0))
    assert r.term == 9 and r.leader_id == 77


def test_a_slow_disk_does_not_cause_an_election():
    """Appends reset the election timer when they arrive, not when their
    fsync finishes: a follower whose disk never completes keeps following."""
    r = new_raft(node_id=2)
    for i in range(200):  # twenty election timeouts of heartbeats, no fsync ever
        r.step(Message(MSG_HEARTBEAT, to=2, frm=1, term=1))
        if i % 3 == 0:
            r.step(Message(MSG_APPEND, to=2, frm=1, term=1, index=r.log.last_index,
                           log_term=r.log.last_term(),
                           entries=encode_entries([(1, ENTRY_NORMAL, b"w")]), count=1))
        r.tick()
        rd = r.ready()  # written, never synced: acks stay held
        r.advance(rd)
    assert r.role == FOLLOWER and r.term == 1 and r.leader_id == 1


def test_compaction_drops_applied_entries_and_replication_goes_on():
    """After compacting through an applied, durable index the log begins
    after it (its term kept as the snapshot term), nothing committed or
    applied moves, and followers that are up to date keep replicating."""
    net = quiet_net(3, seed=24)
    assert run_until(net, lambda: leader_of(net) is not None)
    ld = leader_of(net)
    for i in range(5):
        net.propose([b"c%d" % i])
    assert run_until(net, lambda: all(n.applied == ld.raft.log.last_index
                                      for n in net.nodes.values()))
    log = ld.raft.log
    upto = log.applied - 2
    term, committed, applied = log.term(upto), log.committed, log.applied
    ld.raft.snapshot_taken(upto, term)
    ld.raft.compact(upto)
    assert log.snap_index == upto and log.snap_term == term
    assert log.entries.first_index == upto + 1 and log.term(upto) == term
    assert log.term(upto - 1) is None
    assert (log.committed, log.applied) == (committed, applied)
    ld.raft.compact(upto - 1)  # below the snapshot: nothing to do
    assert log.snap_index == upto
    net.propose([b"after"])
    # (The simulator's checks read logs from index 1, so run it by hand.)
    for _ in range(20):
        net.run_round()
    assert all(n.raft.log.last_index == ld.raft.log.last_index and n.applied == n.raft.log.last_index
               for n in net.nodes.values())


def test_compaction_refuses_entries_not_yet_applied():
    r = new_raft(voters=(1,))
    for _ in range(20):
        r.tick()
    rd = r.ready()
    r.advance(rd)
    release(r, rd.persist_messages)
    drain(r)
    r.propose(make_block([b"x"]))
    with pytest.raises(LogPanic, match="applied"):
        r.snapshot_taken(r.log.last_index, r.term)
    with pytest.raises(LogPanic, match="newest snapshot"):
        r.compact(r.log.last_index)
