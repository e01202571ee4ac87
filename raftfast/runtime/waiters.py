"""Clients waiting on the node: proposals waiting to be applied, reads
waiting to be confirmed and then applied, leadership transfers waiting for
the target to lead.

Each waiter is answered exactly once, through its callback: with its
result, or with a RequestFailed instance saying what the client may
conclude.  How that is worded to a client is the server's business; this
module knows no protocol text.  Deadlines are absolute times on the clock
the caller passes in (`now`): nothing here reads a clock.
"""
import collections
import heapq

from raftfast.core import LEADER

__all__ = ["RequestFailed", "OutcomeUnknown", "NotLeaderNow", "TransferFailed",
           "WriteWaiters", "ReadWaiters", "TransferWaiters"]


class RequestFailed(Exception):
    """A request the runtime took ended without its result.  Passed to the
    callback as an instance, never raised."""


class OutcomeUnknown(RequestFailed):
    """The request's fate is not known: its leader lost leadership, or no
    quorum answered in time.  A write may still commit under the next
    leader; the client must not assume either way."""


class NotLeaderNow(RequestFailed):
    """This node stopped leading before it could serve the reads; nothing
    was done, and the leader of the day can take them."""


class TransferFailed(RequestFailed):
    """The leadership transfer was abandoned: the target did not take over
    in time, the leader took proposals again, or another node leads."""


class _WriteWaiter:
    """Clients waiting for the entries [first, last] proposed in `term`."""

    __slots__ = ("first", "last", "term", "callback", "deadline", "results")

    def __init__(self, first, last, term, callback, deadline):
        self.first = first
        self.last = last
        self.term = term
        self.callback = callback
        self.deadline = deadline
        self.results = []


class WriteWaiters:
    """Proposals in index order, each answered with the replies of its
    entries once they are applied: a list of [replies, offsets, lo, hi]
    pieces (entries lo..hi-1 of one applied block, whose encoded replies are
    replies[offsets[lo]:offsets[hi]]), one piece per applied block they
    span.  Or with OutcomeUnknown."""

    __slots__ = ("queue",)

    def __init__(self):
        self.queue = collections.deque()  # the Ready loop tests it: any waiting?

    def add(self, first, last, term, callback, deadline):
        w = _WriteWaiter(first, last, term, callback, deadline)
        waiters = self.queue
        if not waiters or waiters[len(waiters) - 1].first < first:
            waiters.append(w)
            return
        # A follower's forwarded proposals can come back out of index
        # order (a new leader reuses indexes an old one handed out): keep
        # the queue in index order, which applied() relies on.
        i = len(waiters)
        while i and waiters[i - 1].first >= first:
            i -= 1
        waiters.insert(i, w)

    def applied(self, first, count, replies, offsets, term_of):
        """Entries first..first+count-1 were applied, their replies encoded
        into `replies` at `offsets`; term_of(index) is the log's term."""
        last = first + count - 1
        waiters = self.queue
        while waiters and waiters[0].first <= last:
            w = waiters[0]
            if w.last < first:
                # Its entries were applied without it being matched; it
                # cannot happen, but a client must never wait forever.
                waiters.popleft()
                w.callback(OutcomeUnknown())
                continue
            if term_of(w.first) != w.term or term_of(min(w.last, last)) != w.term:
                # Another leader's entry took this index: ours never committed.
                waiters.popleft()
                w.callback(OutcomeUnknown())
                continue
            lo = max(w.first, first) - first
            hi = min(w.last, last) - first + 1
            w.results.append([replies, offsets, lo, hi])
            if w.last > last:
                break  # the rest arrives with the next committed block
            waiters.popleft()
            w.callback(w.results)

    def expire(self, now):
        """Answer the proposals whose deadline passed: OutcomeUnknown."""
        waiters = self.queue
        while waiters and waiters[0].deadline < now:
            waiters.popleft().callback(OutcomeUnknown())

    def fail_all(self, outcome):
        waiters, self.queue = self.queue, collections.deque()
        for w in waiters:
            w.callback(outcome)


class _ReadWaiter:
    """A batch of reads waiting to be confirmed (ReadIndex), then for the
    state machine to apply through `index`.  `floor`: the last write its
    connections proposed, which the reads must see."""

    __slots__ = ("floor", "callback", "deadline", "index")

    def __init__(self, floor, callback, deadline):
        self.floor = floor
        self.callback = callback
        self.deadline = deadline
        self.index = 0

    def __lt__(self, other):  # heap order among equal indexes: any
        return self.deadline < other.deadline


class ReadWaiters:
    """Read batches, answered with None once they may be served from the
    state machine as it stands, or with OutcomeUnknown (not confirmed in
    time) or NotLeaderNow.

    A batch first waits for the core's confirmation, by token in arrival
    order (which is deadline order); then, in a heap by the index it must
    see applied."""

    __slots__ = ("confirming", "to_apply", "tokens", "served")

    def __init__(self):
        self.confirming = collections.OrderedDict()  # token -> waiter
        self.to_apply = []  # heap of (index, waiter); the Ready loop tests it
        self.tokens = 0
        self.served = 0

    def new_token(self):
        """The token for the next core.read_index()."""
        self.tokens += 1
        return self.tokens

    def add(self, token, floor, callback, deadline):
        self.confirming[token] = _ReadWaiter(floor, callback, deadline)

    def confirmed(self, read_states, applied):
        """The core's read_states, (token, index) pairs; `applied`: the
        state machine's applied index."""
        for token, index in read_states:
            w = self.confirming.pop(token, None)
            if w is None:
                continue  # timed out meanwhile
            w.index = max(index, w.floor)
            if w.index <= applied:
                self.served += 1
                w.callback(None)
            else:
                heapq.heappush(self.to_apply, (w.index, w))

    def serve_applied(self, applied):
        """Serve the confirmed reads the state machine has now caught up with."""
        heap = self.to_apply
        while heap and heap[0][0] <= applied:
            self.served += 1
            heapq.heappop(heap)[1].callback(None)

    def expire(self, now):
        """Reads not confirmed by their deadline: OutcomeUnknown.  A
        confirmed read is not expired: it waits only for the local apply."""
        confirming = self.confirming
        while confirming:
            token, w = next(iter(confirming.items()))
            if w.deadline >= now:
                break
            del confirming[token]
            w.callback(OutcomeUnknown())

    def fail_all(self, outcome):
        waiters = list(self.confirming.values()) + [w for _, w in self.to_apply]
        self.confirming.clear()
        self.to_apply = []
        for w in waiters:
            w.callback(outcome)


class _TransferWaiter:
    __slots__ = ("target", "callback", "deadline")

    def __init__(self, target, callback, deadline):
        self.target = target
        self.callback = callback
        self.deadline = deadline


class TransferWaiters:
    """Leadership transfers, answered with None once the target leads, or
    with TransferFailed."""

    __slots__ = ("pending",)

    def __init__(self):
        self.pending = []

    def add(self, target, callback, deadline):
        self.pending.append(_TransferWaiter(target, callback, deadline))

    def check(self, core, now):
        """Answer the transfers whose fate is known from the core: the
        target leads, or the leader took proposals again, someone else
        leads, or time is up."""
        still = []
        for t in self.pending:
            if core.role != LEADER and core.leader_id == t.target:
                t.callback(None)
            elif ((core.role == LEADER and core.lead_transferee != t.target)
                  or (core.role != LEADER and core.leader_id not in (0, t.target))
                  or t.deadline < now):
                t.callback(TransferFailed())
            else:
                still.append(t)
        self.pending = still

    def fail_all(self, outcome):
        transfers, self.pending = self.pending, []
        for t in transfers:
            t.callback(outcome)
