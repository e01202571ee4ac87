"""The clients' decisions (raftfast.client_calls) without a cluster: what
each answer means for each kind of command, redirects, backoff and the
deadline.  Errors are built by redis-py's own parser from the wire text
the nodes send, so they are the objects the clients see."""
import random

import pytest
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError, TimeoutError

from raftfast.address import Address, AddressError
from raftfast.client_calls import (OPEN, OTHER, READ, WRITE, Backoff, Call, Router, Session,
                                   check_redis_kwargs, kind_of, command_name, node_kwargs,
                                   parse_targets)
from raftfast.errors import NotLeader, OutcomeUnknown, RaftError

SEEDS = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]


def reply(text):
    """The exception redis-py raises for the error reply `-text`."""
    return BaseParser.parse_error(text)


def make_call(args=("SET", "k", "v"), kind=None, deadline=100.0, session=None, seeds=SEEDS,
              tls=False):
    router = Router(parse_targets(seeds, tls))
    call = Call(args, kind or kind_of(command_name(args)), router, deadline, 10.0,
                Backoff(rng=random.Random(1)), tls)
    if session is not None:
        call.take_session(session)
    return call


def lost():
    return ConnectionError("Connection closed by server.")


# ---- names, kinds, addresses ------------------------------------------------

@pytest.mark.parametrize("args, kind", [
    (("SET", "k", "v"), WRITE), (("incrby", "k", 2), WRITE), ((b"DEL", "k"), WRITE),
    (("GET", "k"), READ), (("SCAN", 0), READ), (("PING",), READ),
    (("CONFIG GET", "*"), OTHER), (("RAFT.TRANSFER_LEADER", 2), OTHER),
    (("GETEX", "k"), OTHER)])
def test_kinds(args, kind):
    assert kind_of(command_name(args)) is kind


def test_addresses():
    assert [str(a) for a in parse_targets(
        ["h1:1", "tcp://h2:2", "unix:///tmp/n.sock", "tls://h3:3", "h1:1"], tls=False)] == [
        "tcp://h1:1", "tcp://h2:2", "unix:///tmp/n.sock", "tls://h3:3"]
    assert [str(a) for a in parse_targets("h1:1", tls=True)] == ["tls://h1:1"]
    with pytest.raises(ValueError):
        parse_targets([], tls=False)
    with pytest.raises(AddressError):
        parse_targets(["http://h:1"], tls=False)


def test_redis_keywords():
    retry = object()
    unix = node_kwargs(Address("unix", path="/tmp/n.sock"), {"ssl": True, "password": "p"}, retry)
    assert unix == {"unix_socket_path": "/tmp/n.sock", "password": "p", "retry": retry,
                    "retry_on_error": []}
    tls = node_kwargs(Address("tcp", host="h", port=1, tls=True), {}, retry)
    assert (tls["host"], tls["port"], tls["ssl"]) == ("h", 1, True)
    for taken in ({"host": "h"}, {"retry": None}, {"retry_on_timeout": True}):
        with pytest.raises(TypeError):
            check_redis_kwargs(taken)


def test_backoff_grows_jittered_and_capped():
    b = Backoff(base=0.02, cap=0.5, rng=random.Random(7))
    for n in range(12):
        d = min(0.5, 0.02 * 2 ** n)
        assert d / 2 <= b.delay(n) <= d
    with pytest.raises(ValueError):
        Backoff(base=0.5, cap=0.1)


def test_router_moves_on_round_robin_and_follows_redirects():
    r = Router(parse_targets(SEEDS, tls=False))
    r.move_on(r.seeds[0])
    assert r.leader == r.seeds[1]
    r.move_on(r.seeds[0])           # another call already moved on: no change
    assert r.leader == r.seeds[1]
    elsewhere = Address("tcp", host="10.0.0.9", port=7009)
    r.follow(elsewhere)
    assert (r.leader, r.named) == (elsewhere, elsewhere)
    r.move_on(elsewhere)            # a named leader that fails: back to the given ones
    assert r.leader == r.seeds[2]


# ---- redirects ----------------------------------------------------------------

def test_moved_and_notleader_are_followed_at_once():
    call = make_call()
    assert call.refused(call.router.leader, reply("MOVED 0 127.0.0.1:7002"), 0.0) == 0.0
    assert str(call.router.leader) == "tcp://127.0.0.1:7002"
    assert call.refused(call.router.leader, reply("NOTLEADER unix:///tmp/n3.sock"), 0.0) == 0.0
    assert str(call.router.leader) == "unix:///tmp/n3.sock"
    call = make_call(tls=True)
    call.refused(call.router.leader, reply("MOVED 0 [::1]:7002"), 0.0)
    assert str(call.router.leader) == "tls://[::1]:7002"
    with pytest.raises(RaftError):
        call.refused(call.router.leader, reply("NOTLEADER nowhere"), 0.0)


def test_redirects_in_a_loop_back_off():
    call = make_call()
    delays = [call.refused(call.router.leader, reply("MOVED 0 127.0.0.1:7002"), 0.0)
              for _ in range(10)]
    assert delays[:len(SEEDS) + 1] == [0.0] * (len(SEEDS) + 1)
    assert delays[len(SEEDS) + 1] > 0


def test_clusterdown_moves_on_and_tryagain_waits():
    call = make_call()
    first = call.router.leader
    assert call.refused(first, reply("CLUSTERDOWN No raft leader"), 0.0) == 0.0
    assert call.router.leader != first
    here = call.router.leader
    assert call.refused(here, reply("TRYAGAIN leadership transfer in progress"), 0.0) > 0
    assert call.router.leader == here


def test_not_leader_at_the_deadline_names_the_last_redirect():
    call = make_call(args=("GET", "k"), deadline=1.0)
    call.refused(call.router.leader, reply("MOVED 0 127.0.0.1:7002"), 0.0)
    with pytest.raises(NotLeader) as e:
        call.refused(call.router.leader, reply("CLUSTERDOWN No raft leader"), 1.0)
    assert e.value.leader_url == "tcp://127.0.0.1:7002"
    assert e.value.leader_id == 0
    assert "No raft leader" in str(e.value)


def test_connection_refused_moves_on_and_auth_failures_are_raised():
    call = make_call(args=("GET", "k"))
    first = call.router.leader
    assert call.connect_failed(first, ConnectionError("refused"), 0.0) == 0.0
    assert call.router.leader != first
    with pytest.raises(ConnectionError, match="invalid"):
        call.connect_failed(call.router.leader, reply("WRONGPASS invalid username-password"),
                            0.0)


# ---- what a lost reply or an unknown outcome does to each kind --------------------

def test_reads_and_session_opens_are_retried_after_anything():
    for kind in (READ, OPEN):
        call = make_call(args=("GET", "k"), kind=kind)
        here = call.router.leader
        assert call.lost(here, TimeoutError("Timeout reading"), 0.0) == 0.0
        assert call.refused(here, reply("TIMEOUT outcome unknown"), 0.0) > 0
        assert not call.maybe_applied


@pytest.mark.parametrize("args", [("INCR", "n"), ("RAFT.NODE", "ADD", 4, "tcp://h:1")])
def test_without_a_session_an_unknown_fate_is_outcome_unknown(args):
    call = make_call(args=args)
    with pytest.raises(OutcomeUnknown):
        call.lost(call.router.leader, lost(), 0.0)
    call = make_call(args=args)
    with pytest.raises(OutcomeUnknown):
        call.refused(call.router.leader, reply("TIMEOUT outcome unknown"), 0.0)
    # A definite answer that only sounds like one is the command's own.
    call = make_call(args=args)
    assert call.refused(call.router.leader, reply("TIMEOUT transfer did not complete"), 0.0) \
        is None


def test_a_session_write_is_sent_again_with_the_same_seq():
    session = Session(42, seq=6)
    call = make_call(args=("INCR", "n"), session=session)
    first = call.wire_args()
    assert first == ("RAFT.EXEC", 42, 7, "INCR", "n")
    call.lost(call.router.leader, lost(), 0.0)
    call.refused(call.router.leader, reply("TIMEOUT outcome unknown"), 0.0)
    call.refused(call.router.leader, reply("MOVED 0 127.0.0.1:7003"), 0.0)
    assert call.wire_args() == first
    assert call.maybe_applied
    # The next write in the session takes the next number.
    assert make_call(args=("DEL", "n"), session=session).wire_args()[:3] == ("RAFT.EXEC", 42, 8)


def test_a_session_write_that_may_have_applied_is_outcome_unknown_at_the_deadline():
    call = make_call(args=("INCR", "n"), session=Session(1), deadline=1.0)
    call.lost(call.router.leader, lost(), 0.0)
    with pytest.raises(OutcomeUnknown):
        call.refused(call.router.leader, reply("CLUSTERDOWN No raft leader"), 1.0)


def test_an_unknown_session_is_replaced_when_no_attempt_may_have_applied():
    old = Session(5, seq=3)
    call = make_call(args=("INCR", "n"), session=old)
    assert call.refused(call.router.leader, reply("ERR unknown session"), 0.0) == 0.0
    assert old.dead and call.session is None
    call.take_session(Session(9))
    assert call.wire_args() == ("RAFT.EXEC", 9, 1, "INCR", "n")


def test_an_unknown_session_after_an_attempt_that_may_have_applied_is_outcome_unknown():
    call = make_call(args=("INCR", "n"), session=Session(5))
    call.lost(call.router.leader, lost(), 0.0)
    with pytest.raises(OutcomeUnknown, match="expired"):
        call.refused(call.router.leader, reply("ERR unknown session"), 0.0)


def test_refusals_after_a_lost_attempt_say_nothing_about_it():
    oom = "OOM command not allowed when used memory > 'maxmemory'."
    call = make_call(args=("SET", "k", "v"), session=Session(5))
    assert call.refused(call.router.leader, reply(oom), 0.0) is None     # raised as OOM
    call.lost(call.router.leader, lost(), 0.0)
    for text in (oom, "NOAUTH Authentication required.",
                 "ERR stale sequence number 3: the session already ran 4"):
        with pytest.raises(OutcomeUnknown):
            call.refused(call.router.leader, reply(text), 0.0)
    # The command's own error is its first reply, replayed: authoritative.
    assert call.refused(call.router.leader,
                        reply("ERR value is not an integer or out of range"), 0.0) is None


def test_after_a_lost_reply_the_retry_goes_to_the_next_node():
    for kind, session in ((READ, None), (WRITE, Session(3))):
        call = make_call(args=("GET", "k") if kind == READ else ("INCR", "n"), kind=kind,
                         session=session)
        gone = call.router.leader
        call.lost(gone, lost(), 0.0)
        assert call.router.leader != gone
