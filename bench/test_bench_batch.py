"""The protocol's cost per batch: one proposed block of 1, 16 or 1024
entries carried through three Raft cores in one process, from the leader's
proposal to every node's apply, with no disk, no sockets and no event loop.
What this measures is the per-batch Python of the core (Ready, advance,
message handling, progress and commit bookkeeping) plus the compiled
entry log; a regression of the leader's or the followers' code shows here
first (`pytest bench/ --benchmark-only --benchmark-compare`).

Two figures per batch size: the whole round (leader and both followers),
and the followers' share alone (each steps one append and answers it).
"""
import collections

import pytest

from raftfast.core import LEADER, CoreConfig, Raft
from raftfast.core.messages import ENTRY_NORMAL, MSG_APPEND, HardState
from benchutil import VALUE_SIZE, report
from tests.support.entrylog import EntryLog, encode_entries

BATCHES = [1, 16, 1024]


class Trio:
    """Three cores whose Readys are carried out at once: writes count as
    durable immediately, and every message goes into one queue."""

    def __init__(self):
        voters = (1, 2, 3)
        self.cores = {i: Raft(CoreConfig(i, voters, seed=i, max_inflight=1 << 16),
                              EntryLog(), HardState(), 0, 0) for i in voters}
        self.queue = collections.deque()
        self.applied = 0
        leader = self.cores[1]
        leader.campaign()
        self.settle()
        assert leader.role == LEADER
        self.leader = leader

    def process(self, core):
        while core.has_ready():
            rd = core.ready()
            self.queue.extend(rd.messages)
            for m in rd.persist_messages:
                if m.to == core.id:
                    core.step(m)
                else:
                    self.queue.append(m)
            if rd.committed is not None:
                self.applied += rd.committed[2]
            core.advance(rd)

    def settle(self, only=None):
        """Deliver until nothing moves (or, with `only`, deliver only the
        messages `only` accepts and leave the rest queued)."""
        cores, queue = self.cores, self.queue
        for core in cores.values():
            self.process(core)
        while queue:
            m = queue.popleft()
            if only is not None and not only(m):
                queue.append(m)
                if all(not only(x) for x in queue):
                    return
                continue
            core = cores[m.to]
            core.step(m)
            self.process(core)


def block_of(n):
    value = b"v" * VALUE_SIZE
    return encode_entries([(0, ENTRY_NORMAL, value)] * n)


@pytest.mark.parametrize("n", BATCHES)
def test_batch_through_three_cores(benchmark, n):
    trio, block = Trio(), block_of(n)

    def one_round():
        trio.leader.propose(block)
        trio.settle()

    benchmark(one_round)
    report(benchmark, items=n, unit="entries")
    assert trio.applied >= 3 * n  # every node applied the batches


@pytest.mark.parametrize("n", BATCHES)
def test_batch_on_the_followers(benchmark, n):
    """The followers' part alone: the leader's appends are made once per
    round outside the timing, then the followers step them and answer."""
    trio, block = Trio(), block_of(n)

    def setup():
        trio.settle()  # finish the previous round (acks, commit)
        trio.leader.propose(block)
        trio.process(trio.leader)
        return (), {}

    def followers():
        trio.settle(only=lambda m: m.type == MSG_APPEND)

    benchmark.pedantic(followers, setup=setup, rounds=2000 if n < 1024 else 300)
    report(benchmark, items=n, unit="entries")
