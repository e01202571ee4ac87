"""The driver on a simulated loop and clock (tests/support/simdriver.py):
elections, writes, reads, transfers and their typed outcomes, with time
moved by the test, never slept through."""
import pytest

from raftfast._kv import OP_GET, OP_SET, encode_commands
from raftfast.core import FOLLOWER, LEADER, NotLeader
from raftfast.core.messages import MSG_APPEND, MSG_HEARTBEAT_RESP
from raftfast.runtime.waiters import NotLeaderNow, OutcomeUnknown, TransferFailed

from tests.support.simdriver import SimDrivers


def set_block(*pairs):
    cmds = [(OP_SET, [k, v]) for k, v in pairs]
    return encode_commands(cmds), len(cmds)


def replies_of(pieces):
    """The encoded replies a write's callback was handed, joined."""
    return b"".join(bytes(r[o[lo]:o[hi]]) for r, o, lo, hi in pieces)


class Answers:
    """A callback that records (time, answer) on the simulated clock."""

    def __init__(self, loop):
        self.loop = loop
        self.got = []

    def __call__(self, result):
        self.got.append((self.loop.now, result))

    @property
    def result(self):
        assert len(self.got) == 1, self.got
        return self.got[0][1]


def test_one_node_elects_itself_and_answers_a_write_once_it_is_durable(tmp_path):
    with SimDrivers(tmp_path) as sim:
        d = sim.wait_leader()
        assert d.is_leader and d.core.term >= 1
        answers = Answers(sim.loop)
        fsyncs = d.group_commit.fsyncs
        block, count = set_block((b"k", b"v"), (b"k2", b"v2"))
        last = d.propose(block, count, answers)
        assert answers.got == []  # never within the call
        sim.loop.run_until(lambda: answers.got, 1.0, "the write's answer")
        assert replies_of(answers.result) == b"+OK\r\n+OK\r\n"
        # Committed only after its own fsync (group commit), then applied.
        assert d.group_commit.fsyncs > fsyncs
        assert d.core.log.applied >= last
        assert d.state_machine.store.get(b"k2") == b"v2"


def test_a_stalled_node_catches_up_on_every_tick_it_missed(tmp_path):
    """After a stall (the process stopped) the first tick callback ticks the
    core once per tick period that passed: a follower that was stalled past
    its election timeout campaigns at once (with no more simulated time
    passing), where a single tick does not bring it there."""
    with SimDrivers(tmp_path) as sim:
        d = sim.nodes[1]
        sim.loop.run_ready()
        assert d.core.role == FOLLOWER
        sim.loop.run_one()  # one tick, on time
        sim.loop.run_ready()  # and what it set off, with no more time passing
        assert d.core.role == FOLLOWER and d.core.term == 0
        sim.loop.stall(0.5)  # 50 ticks: past any election timeout (10..20 ticks)
        sim.loop.run_one()  # the next tick callback, late
        sim.loop.run_ready()
        assert d.core.role != FOLLOWER and d.core.term >= 1


def test_a_read_waits_for_the_write_before_it_to_be_applied(tmp_path):
    """A read whose floor is a write not yet committed is confirmed at once
    (one voter) but served only once that write is applied."""
    with SimDrivers(tmp_path) as sim:
        d = sim.wait_leader()
        get = encode_commands([(OP_GET, [b"k"])])
        order = []

        def served(result):
            replies, offsets = d.state_machine.read(get)
            order.append(("read", result, d.core.log.applied, bytes(replies)))

        block, count = set_block((b"k", b"v"))
        last = d.propose(block, count, lambda r: order.append(("write",)))
        d.read(last, served)
        sim.loop.run_until(lambda: len(order) == 2, 1.0, "both answers")
        assert order == [("write",), ("read", None, last, b"$1\r\nv\r\n")]


def assert_unknown_after_deadline(sim, leader, answers, deadline):
    """Nothing is answered until the clock reaches `deadline`, then
    OutcomeUnknown comes by the first tick after it."""
    sim.loop.advance(deadline - sim.loop.now)
    assert answers.got == [] and leader.is_leader
    sim.loop.run_until(lambda: answers.got, 1.0, "the timeout")
    at, result = answers.got[0]
    assert isinstance(result, OutcomeUnknown)
    assert deadline < at <= deadline + leader.tick_s + 1e-9


def test_a_write_that_cannot_commit_times_out_when_the_clock_passes_its_deadline(tmp_path):
    """Appends carrying entries are lost; heartbeats are not, so the leader
    keeps its quorum and its leadership, and the write's fate stays
    unknown until its deadline passes: answered by the first tick after."""
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        sim.net.drop = lambda m: m.type == MSG_APPEND and m.count > 0
        answers = Answers(sim.loop)
        block, count = set_block((b"k", b"v"))
        proposed_at = sim.loop.now
        leader.propose(block, count, answers)
        assert_unknown_after_deadline(sim, leader, answers, proposed_at + leader.request_timeout)
        assert leader.is_leader


def test_a_deposed_leader_answers_its_writes_outcome_unknown_and_its_reads_not_leader(tmp_path):
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        me = leader.core.id
        sim.net.drop = lambda m: me in (m.frm, m.to)  # the leader is cut off
        write, read = Answers(sim.loop), Answers(sim.loop)
        block, count = set_block((b"k", b"v"))
        leader.propose(block, count, write)
        leader.read(0, read)
        # CheckQuorum: it steps down within an election timeout or two,
        # long before the write's own deadline.
        sim.loop.run_until(lambda: not leader.is_leader, 1.0, "the step-down")
        sim.loop.run_ready()
        assert isinstance(write.result, OutcomeUnknown)
        assert isinstance(read.result, NotLeaderNow)
        with pytest.raises(NotLeader):
            leader.read(0, read)


def test_a_transfer_completes_once_the_target_leads(tmp_path):
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        target = min(i for i in sim.nodes if i != leader.core.id)
        answers = Answers(sim.loop)
        leader.transfer_leadership(target, answers)
        sim.loop.run_until(lambda: answers.got, 1.0, "the transfer's answer")
        assert answers.result is None
        assert sim.nodes[target].core.role == LEADER


def test_a_transfer_to_an_unreachable_node_fails_in_time(tmp_path):
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        target = min(i for i in sim.nodes if i != leader.core.id)
        sim.net.drop = lambda m: target in (m.frm, m.to)
        answers = Answers(sim.loop)
        started = sim.loop.now
        leader.transfer_leadership(target, answers)
        sim.loop.run_until(lambda: answers.got, 1.0, "the transfer's answer")
        at, result = answers.got[0]
        assert isinstance(result, TransferFailed)
        assert at <= started + leader.transfer_timeout + leader.tick_s + 1e-9
        assert leader.is_leader  # the other follower keeps its quorum


def test_a_read_that_is_never_confirmed_times_out_when_the_clock_passes_its_deadline(tmp_path):
    """The followers' heartbeat answers arrive (the leader keeps its quorum)
    but never acknowledge a heartbeat round, so no read is confirmed."""
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        me = leader.core.id

        def unacknowledged(m):
            if m.type == MSG_HEARTBEAT_RESP and m.to == me:
                m.context = 0

        sim.net.alter = unacknowledged
        answers = Answers(sim.loop)
        leader.read(0, answers)
        assert_unknown_after_deadline(sim, leader, answers, sim.loop.now + leader.request_timeout)


def test_stop_answers_everything_still_waiting(tmp_path):
    sim = SimDrivers(tmp_path, voters=(1, 2, 3))
    leader = sim.wait_leader()
    me = leader.core.id
    target = min(i for i in sim.nodes if i != me)
    sim.net.drop = lambda m: me in (m.frm, m.to)
    write, read, transfer = Answers(sim.loop), Answers(sim.loop), Answers(sim.loop)
    block, count = set_block((b"k", b"v"))
    leader.propose(block, count, write)
    leader.read(0, read)
    leader.transfer_leadership(target, transfer)
    sim.loop.advance(0.02)  # a few ticks: nothing can complete
    assert write.got == read.got == transfer.got == []
    leader.stop()
    assert isinstance(write.result, OutcomeUnknown)
    assert isinstance(read.result, NotLeaderNow)
    assert isinstance(transfer.result, TransferFailed)
    sim.close()


class _ExhaustedStateMachine:
    """A state machine that finds no memory to apply anything."""

    def __init__(self, inner):
        self.inner = inner

    def apply(self, block):
        raise MemoryError

    def apply_replies(self, block):
        raise MemoryError

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_out_of_memory_while_applying_a_committed_entry_stops_the_node(tmp_path):
    """A replica that skipped an entry would hold something the others do
    not: a MemoryError while applying stops the node (its exit is 1), and
    the write waiting on it is not answered as if applied."""
    sim = SimDrivers(tmp_path)
    d = sim.wait_leader()
    d.state_machine = _ExhaustedStateMachine(d.state_machine)
    answers = Answers(sim.loop)
    d.propose(*set_block((b"k", b"v")), answers)
    sim.loop.run_until(lambda: sim.fatal, 1.0, "the node to stop")
    assert [(node, "MemoryError" in why) for node, why in sim.fatal] == [(1, True)]
    assert all(not isinstance(got, list) for _, got in answers.got)  # never "applied"
    assert d.core.log.applied < d.core.log.committed
    sim.fatal.clear()  # the stop this test asked for
    sim.close()
