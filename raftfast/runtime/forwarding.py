"""Proposals and reads from a follower, carried out by the leader.

A library node takes propose() and read() on every node.  A follower
sends a proposal's entry block to the leader (FORWARD); the leader proposes
it as its own and answers with where it went in the log (FORWARD_RESP:
first and last index, and the term).  The follower then waits for those
entries to be applied by its own state machine, which computes the same
results as every other replica, so no result crosses the wire.  A read
asks the leader to confirm a read index (READ_INDEX); the leader confirms
it as for its own reads and answers with an index applied by then and
the read's cluster time (READ_INDEX_RESP); the follower serves the read
from its own state machine once it has applied that far (Raft thesis
§6.4, reads served by followers).

This module owns the requests in flight and the leader's side of both
exchanges; it never decides anything about the log.  It is handed the
core (role, leader, term), the send function and the driver's propose,
read and waiters.  Time comes from its caller.
"""
import logging

from raftfast.core import LEADER, NotLeader
from raftfast.core.messages import (ENTRY_HEADER_SIZE, ENTRY_NORMAL, MSG_FORWARD, MSG_FORWARD_RESP,
                                    MSG_READ_INDEX, MSG_READ_INDEX_RESP, Message)
from raftfast.runtime.waiters import NotLeaderNow, OutcomeUnknown, RequestFailed

__all__ = ["Forwarding", "OverMemory", "only_commands"]

# FORWARD_RESP's `index` on a refusal: why.
REFUSED_NOT_PROPOSED = 0   # not the leader, another term, the leader's own limits: ask again
REFUSED_MEMORY = 1         # the cluster is over its memory limit (maxmemory)


class OverMemory(RequestFailed):
    """The leader refused a forwarded proposal: the cluster is at its
    memory limit.  Nothing was proposed."""

log = logging.getLogger("raftfast.forwarding")


def only_commands(block, count):
    """True when `block` is `count` well-formed ENTRY_NORMAL entries: all a
    follower may ask the leader to propose (a configuration or a time
    entry goes through the leader's own checks, never through here)."""
    n = len(block)
    pos = seen = 0
    while pos < n:
        if pos + ENTRY_HEADER_SIZE > n or block[pos + 12] != ENTRY_NORMAL:
            return False
        pos += ENTRY_HEADER_SIZE + int.from_bytes(block[pos:pos + 4], "little")
        seen += 1
    return pos == n and seen == count


class _Pending:
    __slots__ = ("callback", "deadline", "leader", "is_read")

    def __init__(self, callback, deadline, leader, is_read):
        self.callback = callback
        self.deadline = deadline
        self.leader = leader
        self.is_read = is_read


class Forwarding:
    """core: the Raft core.  send(msg): to a peer (False if dropped).
    propose(block, count) -> (first, last): the leader's own proposal,
    without a waiter.  read(callback) -> T: a leader's confirmed read
    (callback(None) once applied through the read index).  writes, reads:
    the driver's WriteWaiters and ReadWaiters.  applied(): the local
    applied index.  clock: the ClusterClock."""

    def __init__(self, core, send, propose, read, writes, reads, applied, clock):
        self.admit = None  # admit() -> False: the leader refuses proposals (memory)
        self.core = core
        self.send = send
        self.propose = propose
        self.read = read
        self.writes = writes
        self.reads = reads
        self.applied = applied
        self.clock = clock
        self.pending = {}  # request id -> _Pending, in the order sent
        self._next_id = 0
        self.forwarded = self.served_for_peers = 0  # counters for INFO and tests

    # ------------------------------------------------------ follower side

    def _request(self, mtype, callback, deadline, is_read, entries=None, count=0):
        core = self.core
        leader = core.leader_id
        if leader == 0 or leader == core.id:
            raise NotLeader(leader)
        self._next_id += 1
        rid = self._next_id
        msg = Message(mtype, to=leader, frm=core.id, term=core.term, context=rid,
                      entries=entries, count=count)
        if not self.send(msg):
            # Not even sent: the leader never saw it, so it may be retried.
            raise NotLeader(leader)
        self.pending[rid] = _Pending(callback, deadline, leader, is_read)
        self.forwarded += 1

    def forward_propose(self, block, count, callback, deadline):
        """Have the leader propose `block`; callback as for the driver's
        own proposals (the pieces of the entries applied here), or with
        NotLeaderNow (the leader refused: nothing was proposed) or
        OutcomeUnknown.  Raises NotLeader when no leader is known."""
        self._request(MSG_FORWARD, callback, deadline, False, block, count)

    def forward_read(self, callback, deadline):
        """Have the leader confirm a read; callback(T) once this node has
        applied far enough to serve it at cluster time T, or with
        NotLeaderNow or OutcomeUnknown.  Raises NotLeader."""
        self._request(MSG_READ_INDEX, callback, deadline, True)

    def _answered(self, m):
        p = self.pending.pop(m.context, None)
        if p is None or m.frm != p.leader:
            return  # timed out meanwhile, or not ours
        if m.reject:
            p.callback(OverMemory() if not p.is_read and m.index == REFUSED_MEMORY
                       else NotLeaderNow())
            return
        if p.is_read:
            t = m.hint
            self.clock.heard(t)
            token = self.reads.new_token()
            self.reads.add(token, m.index, lambda outcome: p.callback(
                outcome if isinstance(outcome, RequestFailed) else t), p.deadline)
            self.reads.confirmed(((token, m.index),), self.applied())
            return
        first, last = m.index, m.commit
        if first <= self.applied():
            # Applied, at least in part, before the answer came (a
            # reconnect reordered them): those results are gone.
            p.callback(OutcomeUnknown())
            return
        self.writes.add(first, last, m.log_term, p.callback, p.deadline)

    def expire(self, now):
        """Requests unanswered by their deadline, or whose leader is no
        longer the leader: a proposal's fate is unknown (it may have been
        proposed), a read may be asked again."""
        if not self.pending:
            return
        leader = self.core.leader_id
        for rid, p in list(self.pending.items()):
            if p.deadline < now or p.leader != leader:
                del self.pending[rid]
                p.callback(NotLeaderNow() if p.is_read else OutcomeUnknown())

    def fail_all(self):
        pending, self.pending = self.pending, {}
        for p in pending.values():
            p.callback(NotLeaderNow() if p.is_read else OutcomeUnknown())

    # -------------------------------------------------------- leader side

    def on_message(self, m):
        t = m.type
        if t == MSG_FORWARD:
            self._propose_for(m)
        elif t == MSG_READ_INDEX:
            self._read_for(m)
        elif t == MSG_FORWARD_RESP or t == MSG_READ_INDEX_RESP:
            self._answered(m)

    def _refuse(self, m, mtype, why=REFUSED_NOT_PROPOSED):
        core = self.core
        self.send(Message(mtype, to=m.frm, frm=core.id, term=core.term, reject=True,
                          index=why, hint=core.leader_id, context=m.context))

    def _propose_for(self, m):
        core = self.core
        if core.role != LEADER or m.term != core.term:
            self._refuse(m, MSG_FORWARD_RESP)
            return
        if self.admit is not None and not self.admit():
            self._refuse(m, MSG_FORWARD_RESP, REFUSED_MEMORY)
            return
        if m.entries is None or not only_commands(m.entries, m.count):
            log.warning("node %d forwarded entries other than commands; refused", m.frm)
            self._refuse(m, MSG_FORWARD_RESP)
            return
        try:
            first, last = self.propose(m.entries, m.count)
        except Exception as e:  # the core's refusals: NotLeader, a transfer, the byte limit
            log.debug("proposal forwarded by node %d refused: %r", m.frm, e)
            self._refuse(m, MSG_FORWARD_RESP)
            return
        self.served_for_peers += 1
        self.send(Message(MSG_FORWARD_RESP, to=m.frm, frm=core.id, term=core.term, index=first,
                          commit=last, log_term=core.term, context=m.context))

    def _read_for(self, m):
        core = self.core
        if core.role != LEADER or m.term != core.term:
            self._refuse(m, MSG_READ_INDEX_RESP)
            return
        frm, rid, term = m.frm, m.context, core.term
        box = []

        def confirmed(outcome):
            if isinstance(outcome, RequestFailed) or core.term != term:
                self.send(Message(MSG_READ_INDEX_RESP, to=frm, frm=core.id, term=core.term,
                                  reject=True, context=rid))
                return
            # Applied through the read index by now: a safe index to serve after.
            self.send(Message(MSG_READ_INDEX_RESP, to=frm, frm=core.id, term=term,
                              index=self.applied(), hint=box[0], context=rid))

        try:
            box.append(self.read(confirmed))
        except Exception as e:
            log.debug("read forwarded by node %d refused: %r", frm, e)
            self._refuse(m, MSG_READ_INDEX_RESP)
            return
        self.served_for_peers += 1
