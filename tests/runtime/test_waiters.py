"""The waiters on their own: which answer each client gets, and when, as
typed outcomes (never protocol text)."""
import pytest

from raftfast.core import FOLLOWER, LEADER
from raftfast.runtime.waiters import (NotLeaderNow, OutcomeUnknown, ReadWaiters,
                                      RequestFailed, TransferFailed, TransferWaiters,
                                      WriteWaiters)


def test_the_outcomes_are_request_failures_and_carry_no_text():
    for cls in (OutcomeUnknown, NotLeaderNow, TransferFailed):
        assert issubclass(cls, RequestFailed)
        assert str(cls()) == ""


def test_a_write_spanning_two_applied_blocks_gets_both_pieces():
    w = WriteWaiters()
    got = []
    w.add(5, 8, 2, got.append, deadline=10.0)
    term_of = lambda i: 2  # noqa: E731
    w.applied(4, 3, b"A", "offsets-1", term_of)  # entries 4..6
    assert got == []
    w.applied(7, 4, b"B", "offsets-2", term_of)  # entries 7..10
    assert got == [[[b"A", "offsets-1", 1, 3], [b"B", "offsets-2", 0, 2]]]
    assert not w.queue


def test_a_write_whose_index_another_leader_took_is_outcome_unknown():
    w = WriteWaiters()
    got = []
    w.add(5, 5, 2, got.append, deadline=10.0)
    w.applied(5, 1, b"", None, lambda i: 3)
    assert len(got) == 1 and isinstance(got[0], OutcomeUnknown)


def test_writes_expire_once_the_clock_passes_their_deadline_in_order():
    w = WriteWaiters()
    got = []
    w.add(1, 1, 1, lambda r: got.append((1, r)), deadline=10.0)
    w.add(2, 2, 1, lambda r: got.append((2, r)), deadline=11.0)
    w.expire(10.0)
    assert got == []  # at the deadline, not past it
    w.expire(10.5)
    assert [n for n, _ in got] == [1] and isinstance(got[0][1], OutcomeUnknown)
    w.fail_all(NotLeaderNow())
    assert [n for n, _ in got] == [1, 2] and isinstance(got[1][1], NotLeaderNow)


def test_a_confirmed_read_waits_for_its_index_and_its_floor_to_be_applied():
    r = ReadWaiters()
    got = []
    for floor in (3, 9):
        token = r.new_token()
        r.add(token, floor, lambda res, f=floor: got.append((f, res)), deadline=10.0)
    r.confirmed([(1, 5), (2, 5)], applied=4)  # both confirmed at index 5
    assert got == []
    r.serve_applied(5)
    assert got == [(3, None)]  # the read with floor 9 must see index 9
    r.serve_applied(8)
    assert got == [(3, None)]
    r.serve_applied(9)
    assert got == [(3, None), (9, None)] and r.served == 2


def test_an_unconfirmed_read_expires_and_a_confirmed_one_does_not():
    r = ReadWaiters()
    got = []
    for _ in range(2):
        r.add(r.new_token(), 0, got.append, deadline=10.0)
    r.confirmed([(1, 7)], applied=3)
    r.expire(12.0)
    assert len(got) == 1 and isinstance(got[0], OutcomeUnknown)
    r.confirmed([(2, 7)], applied=3)  # too late: it was answered already
    r.serve_applied(7)
    assert got[1:] == [None]


class _Core:
    def __init__(self, role, leader_id, lead_transferee=0):
        self.role, self.leader_id, self.lead_transferee = role, leader_id, lead_transferee


@pytest.mark.parametrize("core,answer", [
    (_Core(LEADER, 1, lead_transferee=2), "waiting"),
    (_Core(FOLLOWER, 2), None),                          # the target leads
    (_Core(FOLLOWER, 0), "waiting"),                     # nobody leads yet
    (_Core(LEADER, 1, lead_transferee=0), TransferFailed),  # abandoned: proposals resumed
    (_Core(FOLLOWER, 3), TransferFailed),                # someone else leads
])
def test_a_transfer_is_answered_once_its_fate_is_known(core, answer):
    t = TransferWaiters()
    got = []
    t.add(2, got.append, deadline=10.0)
    t.check(core, now=5.0)
    if answer == "waiting":
        assert got == [] and len(t.pending) == 1
        t.check(core, now=10.5)
        assert isinstance(got[0], TransferFailed)
    elif answer is None:
        assert got == [None]
    else:
        assert isinstance(got[0], answer)
