"""Forwarding with a fake core and waiters: what the leader refuses to
propose for a follower, and how the follower's side ends its requests."""
import pytest

from raftfast._entrylog import encode_entries
from raftfast.core import NotLeader
from raftfast.core.messages import (ENTRY_CONFIG, ENTRY_NORMAL, MSG_FORWARD, MSG_FORWARD_RESP,
                                    MSG_READ_INDEX, MSG_READ_INDEX_RESP, Message)
from raftfast.runtime.cluster_time import ClusterClock, time_entry
from raftfast.runtime.forwarding import Forwarding, only_commands
from raftfast.runtime.waiters import NotLeaderNow, OutcomeUnknown, ReadWaiters, WriteWaiters

CMDS = encode_entries([(0, ENTRY_NORMAL, b"a"), (0, ENTRY_NORMAL, b"bc")])


def test_only_commands_may_be_forwarded():
    assert only_commands(CMDS, 2)
    assert not only_commands(CMDS, 3)                      # the count must match
    assert not only_commands(CMDS[:-1], 2)                 # cut short
    assert not only_commands(encode_entries([(0, ENTRY_CONFIG, b"x")]), 1)
    assert not only_commands(time_entry(5), 1)


class Core:
    def __init__(self, role, me=2, leader=1, term=3):
        self.role, self.id, self.leader_id, self.term = role, me, leader, term


def make(role, **kw):
    sent, proposed, reads = [], [], []
    core = Core(role, **kw)

    def propose(block, count):
        proposed.append((block, count))
        return 10, 10 + count - 1

    def read(callback):
        reads.append(callback)
        return 777

    applied = [0]
    f = Forwarding(core, lambda m: sent.append(m) or True, propose, read, WriteWaiters(),
                   ReadWaiters(), lambda: applied[0], ClusterClock(lambda: 0))
    return f, sent, proposed, reads, applied


def test_the_leader_proposes_commands_and_answers_where_they_went():
    f, sent, proposed, _, _ = make("leader", me=1, leader=1)
    f.on_message(Message(MSG_FORWARD, frm=2, term=3, context=9, entries=CMDS, count=2))
    assert proposed == [(CMDS, 2)]
    (m,) = sent
    assert (m.type, m.to, m.index, m.commit, m.log_term, m.context, m.reject) == \
        (MSG_FORWARD_RESP, 2, 10, 11, 3, 9, False)


@pytest.mark.parametrize("case", ["config entry", "old term", "not leader"])
def test_the_leader_refuses_what_it_must_not_propose(case):
    role = "follower" if case == "not leader" else "leader"
    f, sent, proposed, _, _ = make(role, me=1, leader=1)
    entries = encode_entries([(0, ENTRY_CONFIG, b"x")]) if case == "config entry" else CMDS
    count = 1 if case == "config entry" else 2
    f.on_message(Message(MSG_FORWARD, frm=2, term=2 if case == "old term" else 3, context=4,
                         entries=entries, count=count))
    assert proposed == []
    assert [(m.type, m.reject, m.context) for m in sent] == [(MSG_FORWARD_RESP, True, 4)]


def test_a_read_for_a_follower_is_answered_once_confirmed_with_its_time():
    f, sent, _, reads, applied = make("leader", me=1, leader=1)
    f.on_message(Message(MSG_READ_INDEX, frm=2, term=3, context=5))
    applied[0] = 42
    reads[0](None)
    (m,) = sent
    assert (m.type, m.index, m.hint, m.context, m.reject) == (MSG_READ_INDEX_RESP, 42, 777, 5,
                                                              False)


def test_a_follower_without_a_leader_cannot_forward():
    f, sent, _, _, _ = make("follower", leader=0)
    with pytest.raises(NotLeader):
        f.forward_propose(CMDS, 2, lambda o: None, deadline=10)
    assert sent == []


def test_a_follower_retries_a_refusal_and_gives_up_on_a_lost_leader():
    f, sent, _, _, _ = make("follower")
    outcomes = []
    f.forward_propose(CMDS, 2, outcomes.append, deadline=10)
    f.forward_read(outcomes.append, deadline=10)
    rid_write, rid_read = sent[0].context, sent[1].context
    f.on_message(Message(MSG_FORWARD_RESP, frm=1, term=3, reject=True, context=rid_write))
    assert isinstance(outcomes.pop(), NotLeaderNow)      # nothing proposed: ask again
    f.forward_propose(CMDS, 2, outcomes.append, deadline=10)
    f.core.leader_id = 3                                 # the leader changed meanwhile
    f.expire(now=0)
    assert sorted(type(o).__name__ for o in outcomes) == ["NotLeaderNow", "OutcomeUnknown"]
    assert isinstance(next(o for o in outcomes if not isinstance(o, NotLeaderNow)),
                      OutcomeUnknown)
    assert f.pending == {} and rid_read


def test_an_answer_for_entries_already_applied_is_an_unknown_outcome():
    f, sent, _, _, applied = make("follower")
    outcomes = []
    f.forward_propose(CMDS, 2, outcomes.append, deadline=10)
    applied[0] = 10
    f.on_message(Message(MSG_FORWARD_RESP, frm=1, term=3, index=10, commit=11, log_term=3,
                         context=sent[0].context))
    assert [type(o) for o in outcomes] == [OutcomeUnknown]
