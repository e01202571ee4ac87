"""raftfast.Client and AsyncClient against real node processes: following
the leader through a transfer and a crash, waiting out a cluster without
a leader, and writes whose reply is lost applied exactly once (or
reported as OutcomeUnknown without sessions)."""
import asyncio
import threading

import pytest

from raftfast.client import AsyncClient, Client
from raftfast.client_calls import Session
from raftfast.errors import NotLeader, OutcomeUnknown
from tests.client.reply_proxy import ReplyProxy
from tests.support.wait import until


def followers_first(cluster, leader):
    """Every node's client address, the leader's last: the client must find it."""
    ids = [i for i in cluster.ids if i != leader] + [leader]
    return [cluster.nodes[i].client_addr for i in ids]


def tcp(node):
    return f"tcp://{node.client_addr}"


def counter(cluster, leader, key):
    return int(cluster.nodes[leader].client().get(key))


class Background:
    """One call on a thread; result() joins it and returns or raises."""

    def __init__(self, fn):
        self._out = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn):
        try:
            self._out["value"] = fn()
        except BaseException as e:  # handed to the test's thread
            self._out["error"] = e

    def alive(self):
        return self._thread.is_alive()

    def result(self, timeout=30):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not return"
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]


def test_follows_the_leader_through_a_transfer_and_a_crash(make_cluster):
    c = make_cluster()
    first = c.wait_leader()
    with Client(followers_first(c, first), timeout=20) as client:
        assert client.incr("n") == 1
        assert client.leader == tcp(c.nodes[first])

        # A transfer asked through the client goes to the leader (MOVED).
        target = next(i for i in c.ids if i != first)
        assert client.execute_command("RAFT.TRANSFER_LEADER", target) in (b"OK", "OK", True)
        assert c.wait_leader() == target
        assert client.incr("n") == 2
        assert client.leader == tcp(c.nodes[target])

        c.nodes[target].kill()
        assert client.incr("n") == 3        # retried until a new leader answers
        third = c.wait_leader(exclude=(target,))
        assert client.leader == tcp(c.nodes[third])
        assert client.get("n") == b"3"

    async def run_async():
        async with AsyncClient(followers_first(c, third), timeout=20) as aclient:
            assert await aclient.incr("n") == 4
            assert aclient.leader == tcp(c.nodes[third])
            assert sorted([k async for k in aclient.scan_iter()]) == [b"n"]
    asyncio.run(run_async())
    assert counter(c, third, "n") == 4


def test_no_leader_not_leader_after_the_deadline_then_waits_for_one(make_cluster):
    c = make_cluster()
    leader = c.wait_leader()
    gone = [leader, next(i for i in c.ids if i != leader)]
    survivor = next(i for i in c.ids if i not in gone)
    for i in gone:
        c.nodes[i].kill()
    until(lambda: c.nodes[survivor].raw("GET", "k").startswith(b"-CLUSTERDOWN"),
          "the survivor to know it has no leader", timeout=15)

    with Client([c.nodes[survivor].client_addr], timeout=1.0) as client:
        with pytest.raises(NotLeader):
            client.get("k")
        with pytest.raises(NotLeader):      # the session cannot be opened either
            client.set("k", "v")

    addrs = [c.nodes[i].client_addr for i in (survivor, gone[1])]
    with Client(addrs, timeout=30) as client:
        call = Background(lambda: client.incr("k"))
        # No leader can exist before the restart: the call is still retrying.
        assert call.alive()
        c.nodes[gone[1]].start()
        assert call.result() == 1
    assert counter(c, c.wait_leader(exclude=(leader,)), "k") == 1


def test_a_lost_reply_is_applied_once_across_a_leader_change(make_cluster):
    c = make_cluster()
    leader = c.wait_leader()
    proxy = ReplyProxy(c.nodes[leader].client_port)
    try:
        with Client([proxy.addr], timeout=20) as client:
            # The reply is lost; the retry (same session, same seq) gets the first reply.
            proxy.arm(b"INCR", lose="reply")
            assert client.incr("n") == 1
            assert proxy.lost.is_set()
            assert counter(c, leader, "n") == 1

            # Without sessions the same loss is an unknown outcome, not a retry...
            with Client([proxy.addr], sessions=False, timeout=20) as plain:
                proxy.arm(b"INCR", lose="reply")
                with pytest.raises(OutcomeUnknown):
                    plain.incr("n")
                assert counter(c, leader, "n") == 2     # ...though it was applied
                proxy.arm(b"INCR", lose="request")
                with pytest.raises(OutcomeUnknown):
                    plain.incr("n")
                assert counter(c, leader, "n") == 2     # ...or not

            # Lost reply, then the leader changes before the retry gets through.
            proxy.arm(b"INCR", lose="reply", hold=True)
            call = Background(lambda: client.incr("n"))
            assert proxy.lost.wait(10)
            target = next(i for i in c.ids if i != leader)
            c.nodes[leader].client().execute_command("RAFT.TRANSFER_LEADER", target)
            assert c.wait_leader() == target
            proxy.release()
            assert call.result() == 3       # the first reply, from the new leader's replay
            assert client.leader == tcp(c.nodes[target])
            assert counter(c, target, "n") == 3
    finally:
        proxy.close()


def test_a_reply_that_never_comes_is_a_timeout_retried_with_the_same_seq(make_cluster):
    c = make_cluster()
    leader = c.wait_leader()
    proxy = ReplyProxy(c.nodes[leader].client_port)
    try:
        with Client([proxy.addr], timeout=20, socket_timeout=0.5) as client:
            proxy.arm(b"INCR", lose="silence")
            assert client.incr("n") == 1
            assert proxy.lost.is_set()
        with Client([proxy.addr], sessions=False, timeout=20, socket_timeout=0.5) as plain:
            proxy.arm(b"INCR", lose="silence")
            with pytest.raises(OutcomeUnknown):
                plain.incr("n")
        assert counter(c, leader, "n") == 2
    finally:
        proxy.close()


def test_a_lost_reply_is_applied_once_when_the_leader_dies(make_cluster):
    c = make_cluster()
    leader = c.wait_leader()
    proxy = ReplyProxy(c.nodes[leader].client_port)
    others = [c.nodes[i].client_addr for i in c.ids if i != leader]
    try:
        with Client([proxy.addr] + others, timeout=20) as client:
            assert client.incr("n") == 1
            # The leader applies the INCR, its reply is lost, and it dies
            # before the retry reaches it: the retry finds the new leader,
            # which answers from the replicated session.
            proxy.arm(b"INCR", lose="reply", hold=True)
            call = Background(lambda: client.incr("n"))
            assert proxy.lost.wait(10)
            c.nodes[leader].kill()
            proxy.release()
            assert call.result() == 2
            new = c.wait_leader(exclude=(leader,))
            assert client.leader == tcp(c.nodes[new])
            assert counter(c, new, "n") == 2
    finally:
        proxy.close()


def test_a_write_left_without_a_quorum_is_applied_once_when_one_returns(make_cluster):
    c = make_cluster()
    leader = c.wait_leader()
    followers = [i for i in c.ids if i != leader]
    with Client([c.nodes[i].client_addr for i in c.ids], timeout=30) as client:
        assert client.incr("n") == 1
        before = int(c.nodes[leader].info()["raft_last_log_index"])
        for f in followers:
            c.nodes[f].kill()
        # Proposed by a leader that can no longer commit it: its fate is
        # unknown until a quorum is back, and the client keeps asking.
        call = Background(lambda: client.incr("n"))
        until(lambda: int(c.nodes[leader].info()["raft_last_log_index"]) > before,
              "the INCR in the lone leader's log", timeout=10)
        until(lambda: (c.nodes[leader].info() or {}).get("raft_role") != "leader",
              "the lone leader to step down", timeout=15)
        assert call.alive()
        for f in followers:
            c.nodes[f].start()
        assert call.result() == 2
        assert counter(c, c.wait_leader(), "n") == 2


def test_an_expired_session_is_replaced_unless_an_attempt_may_have_applied(make_cluster):
    c = make_cluster()
    leader = c.wait_leader()
    proxy = ReplyProxy(c.nodes[leader].client_port)
    # No session id this high was ever opened: the cluster answers
    # "unknown session", as for one that expired.
    never_opened = 1 << 60
    try:
        with Client([proxy.addr], timeout=20) as client:
            client._pool._idle.append(Session(never_opened))
            assert client.incr("n") == 1            # refused, so sent again in a new session
            assert counter(c, leader, "n") == 1

            client._pool._idle[:] = [Session(never_opened)]
            proxy.arm(b"INCR", lose="request")      # the client cannot know it was lost
            with pytest.raises(OutcomeUnknown):
                client.incr("n")
            assert counter(c, leader, "n") == 1

        async def run_async():
            async with AsyncClient([proxy.addr], timeout=20) as aclient:
                proxy.arm(b"INCR", lose="reply")
                assert await aclient.incr("n") == 2
                assert proxy.lost.is_set()
        asyncio.run(run_async())
        assert counter(c, leader, "n") == 2
    finally:
        proxy.close()


def test_threads_and_tasks_share_one_client(make_cluster):
    c = make_cluster()
    leader = c.wait_leader()
    addrs = followers_first(c, leader)
    with Client(addrs, max_sessions=3, timeout=20) as client:
        calls = [Background(lambda: [client.incr("n") for _ in range(25)]) for _ in range(6)]
        replies = [r for call in calls for r in call.result()]
        # Every INCR applied once, each answered with its own value.
        assert sorted(replies) == list(range(1, 151))
        assert len(client._pool._idle) <= 3

    async def run_async():
        async with AsyncClient(addrs, max_sessions=3, timeout=20) as aclient:
            replies = await asyncio.gather(*(aclient.incr("n") for _ in range(60)))
            assert sorted(replies) == list(range(151, 211))
    asyncio.run(run_async())
    assert counter(c, leader, "n") == 210
