"""Targeted scenarios for the sans-IO core (the chaos sweep is in
test_simulation.py)."""
import pytest

from tests.support.entrylog import EntryLog, decode_entries, encode_entries
from raftfast.core import CANDIDATE, FOLLOWER, LEADER, CoreConfig, LogPanic, NotLeader, Raft
from raftfast.core.messages import (ENTRY_NOOP, ENTRY_NORMAL, MSG_APPEND, MSG_APPEND_RESP,
                                    MSG_HEARTBEAT, MSG_VOTE, MSG_VOTE_RESP, HardState, Message)
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


def test_single_node_leads_only_after_its_vote_is_durable():
    r = new_raft(voters=(1,))
    for _ in range(20):
        r.tick()
    assert r.role == CANDIDATE and r.term == 1 and r.vote == 1
    rd = r.ready()
    assert rd.hard_state == HardState(1, 1, 0)
    assert [m.type for m in rd.persist_messages] == [MSG_VOTE_RESP]
    r.advance(rd)
    assert r.role == CANDIDATE  # not before the fsync
    release(r, rd.persist_messages)
    assert r.role == LEADER
    # The new leader's empty entry commits once it is durable.
    rd = r.ready()
    assert [(first, count) for first, _, count in rd.entries] == [(1, 1)]
    assert decode_entries(rd.entries[0][1]) == [(1, ENTRY_NOOP, b"")]
    r.advance(rd)
    assert r.log.committed == 0
    release(r, rd.persist_messages)
    assert r.log.committed == 1


def test_vote_is_granted_once_per_term():
    r = new_raft(node_id=1)
    r.step(Message(MSG_VOTE, to=1, frm=2, term=5, index=0, log_term=0))
    _, after = drain(r)
    assert [(m.to, m.reject) for m in after] == [(2, False)]
    r.step(Message(MSG_VOTE, to=1, frm=3, term=5, index=0, log_term=0))
    _, after = drain(r)
    assert [(m.to, m.reject) for m in after] == [(3, True)]
    # The same candidate asking again (a retransmission) is granted again.
    r.step(Message(MSG_VOTE, to=1, frm=2, term=5, index=0, log_term=0))
    _, after = drain(r)
    assert [(m.to, m.reject) for m in after] == [(2, False)]


@pytest.mark.parametrize("cand_index,cand_term,granted", [
    (3, 2, True),   # same last entry
    (4, 2, True),   # longer log, same term
    (2, 2, False),  # shorter log, same term
    (1, 3, True),   # later last term wins even if shorter
    (9, 1, False),  # earlier last term loses even if longer
])
def test_vote_requires_an_up_to_date_log(cand_index, cand_term, granted):
    r = new_raft(node_id=1, entries=entries_of([1, 2, 2]), hs=HardState(2, 0, 0))
    r.step(Message(MSG_VOTE, to=1, frm=2, term=3, index=cand_index, log_term=cand_term))
    _, after = drain(r)
    assert [m.reject for m in after] == [not granted]
    assert r.term == 3  # the newer term is adopted either way


def test_vote_waits_for_the_term_and_vote_to_be_durable():
    r = new_raft(node_id=1)
    r.step(Message(MSG_VOTE, to=1, frm=2, term=1))
    rd = r.ready()
    assert rd.hard_state == HardState(1, 2, 0)
    assert rd.messages == [] and [m.type for m in rd.persist_messages] == [MSG_VOTE_RESP]


def test_stale_leader_hears_the_newer_term_and_steps_down():
    r = new_raft(node_id=1, hs=HardState(7, 0, 0))
    r.step(Message(MSG_APPEND, to=1, frm=2, term=3, index=0, log_term=0))
    sent, _ = drain(r)
    assert [(m.type, m.to, m.term) for m in sent] == [(MSG_APPEND_RESP, 2, 7)]
    old = new_raft(node_id=2, hs=HardState(3, 2, 0))
    old.role = LEADER  # a quick stand-in for a deposed leader
    old.step(sent[0])
    assert old.role == FOLLOWER and old.term == 7


def test_follower_truncates_a_conflicting_uncommitted_suffix():
    r = new_raft(node_id=2, entries=entries_of([1, 1, 2, 2]), hs=HardState(2, 0, 0))
    block = encode_entries([(3, ENTRY_NORMAL, b"new")])
    r.step(Message(MSG_APPEND, to=2, frm=1, term=3, index=2, log_term=1, commit=2,
                   entries=block, count=1))
    _, after = drain(r)
    assert r.log.last_index == 3 and r.log.term(3) == 3
    assert [(m.index, m.reject) for m in after if m.to == 1] == [(3, False)]
    assert r.log.committed == 2


def test_a_committed_entry_is_never_truncated():
    r = new_raft(node_id=2, entries=entries_of([1, 1, 2]), hs=HardState(2, 0, 3))
    assert r.log.committed == 3
    block = encode_entries([(3, ENTRY_NORMAL, b"x")])
    # A message with index below the commit index is answered with the commit index.
    r.step(Message(MSG_APPEND, to=2, frm=1, term=3, index=1, log_term=1, entries=block, count=1))
    _, after = drain(r)
    assert [(m.index, m.reject) for m in after if m.to == 1] == [(3, False)]
    assert r.log.term(2) == 1 and r.log.term(3) == 2
    # One that claims to match at the commit index but conflicts above it
    # is fine; one that would rewrite a committed entry is an invariant break.
    with pytest.raises(LogPanic):
        r.log.maybe_append(1, 1, 0, block, 1)


def test_rejection_hint_skips_a_whole_term():
    # Follower has many entries of term 2 the leader does not.
    r = new_raft(node_id=2, entries=entries_of([1, 1, 2, 2, 2, 2, 2]), hs=HardState(2, 0, 0))
    r.step(Message(MSG_APPEND, to=2, frm=1, term=4, index=7, log_term=3, commit=0))
    sent, _ = drain(r)
    rej = [m for m in sent if m.type == MSG_APPEND_RESP]
    assert len(rej) == 1 and rej[0].reject
    # The largest index whose term is <= 3 is 7 (term 2): the leader can
    # then skip straight past every term-2 entry it does not share.
    assert (rej[0].hint, rej[0].log_term) == (7, 2)


def test_propose_on_a_follower_names_the_leader():
    r = new_raft(node_id=2)
    r.step(Message(MSG_HEARTBEAT, to=2, frm=3, term=1))
    with pytest.raises(NotLeader) as ei:
        r.propose(make_block([b"x"]))
    assert ei.value.leader_id == 3


def test_idle_leader_keeps_leadership_through_heartbeats():
    net = quiet_net(3, seed=3)
    assert run_until(net, lambda: leader_of(net) is not None)
    leader, term = leader_of(net).id, leader_of(net).raft.term
    for _ in range(300):  # thirty election timeouts with no client traffic
        net.run_round()
    assert leader_of(net).id == leader and leader_of(net).raft.term == term


def test_leader_does_not_commit_an_older_term_entry_by_counting_replicas():
    """Raft's Figure 8: an entry from an earlier term stored on a majority is
    not committed until an entry of the leader's own term is."""
    # Node 1 has (1,1),(2,2) - the term-2 entry was never committed; it is
    # now leader in term 4 after a vote from node 2, whose log matches.
    ents = entries_of([1, 2])
    r = new_raft(node_id=1, entries=ents, hs=HardState(3, 0, 1))
    r.become_candidate()
    r.votes = {1: True, 2: True}
    r.become_leader()
    assert r.term == 4 and r.log.last_index == 3  # the new noop of term 4
    drain(r)
    r.step(Message(MSG_APPEND_RESP, to=1, frm=1, term=4, index=2, log_term=2))  # own fsync of index 2 only
    r.step(Message(MSG_APPEND_RESP, to=1, frm=2, term=4, index=2))
    assert r.log.committed == 1  # index 2 is on a majority, but of term 2
    r.step(Message(MSG_APPEND_RESP, to=1, frm=1, term=4, index=3, log_term=4))
    r.step(Message(MSG_APPEND_RESP, to=1, frm=2, term=4, index=3))
    assert r.log.committed == 3  # now the term-4 entry commits, and 2 with it


def test_leader_counts_itself_only_after_its_own_fsync():
    net = quiet_net(3, seed=5)
    assert run_until(net, lambda: leader_of(net) is not None and leader_of(net).raft.log.committed >= 1)
    ld = leader_of(net)
    base = ld.raft.log.committed
    first, last = ld.raft.propose(make_block([b"a", b"b"]))
    ld.process()
    # Only one follower acknowledges; the leader's own write is not yet durable.
    follower = next(n for n in net.nodes.values() if n.id != ld.id)
    for m in list(net.inflight):
        if m.to == follower.id:
            net.inflight.remove(m)
            follower.raft.step(m)
            follower.process()
    follower.sync()
    for m in list(net.inflight):
        if m.to == ld.id and m.type == MSG_APPEND_RESP:
            net.inflight.remove(m)
            ld.raft.step(m)
            ld.process()
    # The follower plus the leader would make a majority, but the leader
    # has not yet synced: nothing new commits.
    assert ld.raft.log.committed == base
    ld.sync()
    assert ld.raft.log.committed == last


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


def test_vote_requests_leave_only_after_the_new_term_is_durable():
    r = new_raft(node_id=1)
    r.campaign()
    rd = r.ready()
    assert rd.hard_state == HardState(1, 1, 0)
    assert not [m for m in rd.messages if m.type == MSG_VOTE]
    assert sorted(m.to for m in rd.persist_messages if m.type == MSG_VOTE) == [2, 3]


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


def test_prevote_keeps_a_cut_off_node_from_bumping_its_term_and_deposing_the_leader():
    net = quiet_net(3, seed=21)
    assert run_until(net, lambda: leader_of(net) is not None)
    ld = leader_of(net)
    lead_term = ld.raft.term
    victim = next(n for n in net.nodes.values() if n.id != ld.id)
    net.isolate(victim.id)
    for _ in range(100):  # many election timeouts alone
        net.run_round()
    assert victim.raft.term == lead_term  # asked, never campaigned
    assert victim.raft.role in ("precandidate", "follower")
    net.heal()
    for _ in range(50):
        net.run_round()
    assert leader_of(net).id == ld.id and leader_of(net).raft.term == lead_term


def test_check_quorum_makes_a_cut_off_leader_step_down_within_two_timeouts():
    net = quiet_net(3, seed=22)
    assert run_until(net, lambda: leader_of(net) is not None)
    ld = leader_of(net)
    net.isolate(ld.id)
    for _ in range(2 * 10):  # two election timeouts, in ticks
        net.tick_all()
        while net.inflight:
            net.deliver_one()
    assert ld.raft.role != LEADER


def test_a_follower_hearing_its_leader_ignores_a_higher_term_vote_request():
    r = new_raft(node_id=2)
    r.step(Message(MSG_HEARTBEAT, to=2, frm=1, term=3))
    drain(r)
    r.step(Message(MSG_VOTE, to=2, frm=3, term=9, index=100, log_term=9))
    assert r.term == 3 and r.vote == 0 and not any(m.type == MSG_VOTE_RESP for m in
                                                    r.ready().persist_messages)


def test_a_prevote_is_answered_with_the_future_term_and_changes_nothing():
    from raftfast.core.messages import MSG_PREVOTE, MSG_PREVOTE_RESP
    r = new_raft(node_id=2, hs=HardState(4, 0, 0))
    r.step(Message(MSG_PREVOTE, to=2, frm=3, term=5, index=0, log_term=0))
    rd = r.ready()
    assert rd.hard_state is None and r.term == 4 and r.vote == 0
    assert [(m.type, m.term, m.reject) for m in rd.messages] == [(MSG_PREVOTE_RESP, 5, False)]


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


def test_an_acknowledgement_beyond_the_leaders_log_is_ignored():
    """A follower cannot acknowledge entries the leader never had: counting
    such an ack (forged, or corrupt) could commit what no majority holds."""
    net = quiet_net(3, seed=23)
    assert run_until(net, lambda: leader_of(net) is not None)
    ld = leader_of(net)
    last = ld.raft.log.last_index
    committed = ld.raft.log.committed
    follower = next(i for i in net.ids if i != ld.id)
    ld.raft.propose(make_block([b"pending"]))  # not yet acknowledged by anyone else
    ld.raft.step(Message(MSG_APPEND_RESP, to=ld.id, frm=follower, term=ld.raft.term,
                         index=last + 1000))
    assert ld.raft.progress[follower].match <= last
    assert ld.raft.log.committed == committed


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
