"""Core properties better said in Python than as a script: refusals that
no message can reach, and loops too long to print.  The scenarios are
scripts in testdata/ (test_interaction.py); the chaos sweep is in
test_simulation.py."""
import pytest

from tests.support.entrylog import EntryLog, encode_entries
from raftfast.core import FOLLOWER, CoreConfig, LogPanic, Raft
from raftfast.core.messages import ENTRY_NORMAL, MSG_APPEND, MSG_HEARTBEAT, HardState, Message
from tests.support.simnet import make_block


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


def test_a_committed_entry_can_never_be_truncated():
    """No message reaches this (an append below the commit index is answered
    with the commit index: testdata/conflict.txt); the log itself refuses."""
    r = new_raft(node_id=2, entries=entries_of([1, 1, 2]), hs=HardState(2, 0, 3))
    block = encode_entries([(3, ENTRY_NORMAL, b"x")])
    with pytest.raises(LogPanic):
        r.log.maybe_append(1, 1, 0, block, 1)
    assert r.log.term(2) == 1 and r.log.term(3) == 2


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


def test_lease_reads_need_check_quorum():
    """The lease is the time in which followers refuse other candidates,
    which only CheckQuorum makes them do (lease_read.txt shows the lease)."""
    with pytest.raises(ValueError, match="check_quorum"):
        CoreConfig(1, (1, 2, 3), read_mode="lease", check_quorum=False)


def test_a_follower_acknowledges_only_the_newest_of_the_appends_it_wrote_at_once():
    """The acknowledgements a Ready holds back for its write: one append
    gives the pair (to the leader, and the node's own durability note); two
    appends stepped before one Ready still give one acknowledgement to the
    leader, for the higher index, and one note."""
    def append(r, value):
        r.step(Message(MSG_APPEND, to=2, frm=1, term=1, index=r.log.last_index,
                       log_term=r.log.last_term(),
                       entries=encode_entries([(1, ENTRY_NORMAL, value)]), count=1))

    r = new_raft(node_id=2)
    append(r, b"a")
    rd = r.ready()
    assert [(m.to, m.index) for m in rd.persist_messages] == [(1, 1), (2, 1)]
    r.advance(rd)
    append(r, b"b")
    append(r, b"c")
    rd = r.ready()
    assert sorted((m.to, m.index) for m in rd.persist_messages) == [(1, 3), (2, 3)]


@pytest.mark.parametrize("kind", ["vote", "prevote"])
def test_a_node_that_just_started_in_lease_mode_helps_elect_no_one_for_an_election_timeout(kind):
    """Before it stopped it may have answered a leader that still serves
    reads from a lease counting on it: for one election timeout after start
    it grants no vote or pre-vote in a higher term, a transfer aside."""
    from raftfast.core.messages import (MSG_PREVOTE, MSG_PREVOTE_RESP, MSG_VOTE, MSG_VOTE_RESP,
                                        VOTE_TRANSFER)
    mtype, resp = (MSG_VOTE, MSG_VOTE_RESP) if kind == "vote" else (MSG_PREVOTE, MSG_PREVOTE_RESP)

    def ask(r, term, context=0):
        r.step(Message(mtype, to=r.id, frm=3, term=term, index=0, log_term=0, context=context))
        sent, after = drain(r)
        return [m for m in sent + after if m.type == resp and m.to == 3]

    def lease_raft():
        return Raft(CoreConfig(2, (1, 2, 3), election_ticks=10, heartbeat_ticks=1, seed=1,
                               read_mode="lease"), EntryLog(1), HardState(4, 0, 0))

    r = lease_raft()
    for _ in range(9):
        r.tick()
    assert ask(r, 5) == [] and r.term == 4  # ignored: no answer, no new term
    r.tick()
    (answer,) = ask(r, 5)  # one election timeout after start: an ordinary request
    assert not answer.reject and answer.term == 5
    if kind == "vote":
        r = lease_raft()
        (answer,) = ask(r, 5, context=VOTE_TRANSFER)  # a transfer is granted at once
        assert not answer.reject
    # Under ReadIndex nothing counts on a lease: a fresh node answers at once.
    r = Raft(CoreConfig(2, (1, 2, 3), election_ticks=10, heartbeat_ticks=1, seed=1),
             EntryLog(1), HardState(4, 0, 0))
    (answer,) = ask(r, 5)
    assert not answer.reject


def test_elections_and_leader_changes_are_counted_once_each():
    """The metrics' counters: a leader counts once per new leader it hears
    from (not per message), an election once per campaign."""
    from raftfast.core import CANDIDATE, LEADER
    from raftfast.core.messages import MSG_TIMEOUT_NOW, MSG_VOTE_RESP
    r = new_raft(node_id=2)
    assert (r.elections_started, r.leader_changes) == (0, 0)
    for _ in range(5):
        r.step(Message(MSG_HEARTBEAT, to=2, frm=1, term=1))
    assert (r.elections_started, r.leader_changes) == (0, 1)
    r.step(Message(MSG_HEARTBEAT, to=2, frm=3, term=2))  # a newer term's leader
    r.step(Message(MSG_HEARTBEAT, to=2, frm=3, term=2))
    assert (r.elections_started, r.leader_changes) == (0, 2)
    r.step(Message(MSG_TIMEOUT_NOW, to=2, frm=3, term=2))  # asked to take over
    assert r.role == CANDIDATE and r.term == 3
    assert (r.elections_started, r.leader_changes) == (1, 2)
    r.step(Message(MSG_VOTE_RESP, to=2, frm=2, term=3))
    r.step(Message(MSG_VOTE_RESP, to=2, frm=1, term=3))
    assert r.role == LEADER
    assert (r.elections_started, r.leader_changes) == (1, 3)
