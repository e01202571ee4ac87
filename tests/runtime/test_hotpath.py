"""The hot path's batching seen from the runtime and the server: one
encoding of an append for every follower, proposals within the batch
limits.  (Windows, back-pressure and one ack per batch are scripts in
testdata/.)"""
import asyncio
import types

import pytest

from raftfast.runtime.cluster_time import ClusterClock
from raftfast.runtime.cluster_version import CLUSTER_VERSION

from tests.core.interaction import Env
from tests.support.client_transport import FakeClientTransport
from tests.support.entrylog import block_count
from tests.support.simnet import make_block


def elected_leader():
    """Node 1 of three, leading, both followers replicating."""
    env = Env()
    for line in ("add-nodes 3", "campaign 1", "stabilize quiet"):
        env.run(line)
    return env.nodes[1].raft


class FakeTransport:
    def __init__(self):
        self.frames = []

    def send(self, m):
        self.frames.append((m.to, "msg"))
        return True

    def send_frame(self, to, frame):
        self.frames.append((to, frame))
        return True


def test_the_leader_encodes_one_append_once_for_every_follower(monkeypatch):
    from raftfast.runtime import driver as driver_mod
    encoded = []
    real = driver_mod.encode_message

    def counting(m):
        encoded.append(m)
        return real(m)
    monkeypatch.setattr(driver_mod, "encode_message", counting)
    r = elected_leader()
    r.propose(make_block([b"e1", b"e2"]))
    rd = r.ready()
    d = driver_mod.RaftDriver.__new__(driver_mod.RaftDriver)
    d.transport, d.core = FakeTransport(), r
    d.appends_sent = d.entries_sent = d.append_frames_encoded = 0
    d.cluster_clock = ClusterClock(lambda: 1000)
    d._send(rd.messages)
    frames = [f for to, f in d.transport.frames if f != "msg"]
    assert len(frames) == 2 and frames[0] is frames[1]
    assert len(encoded) == 1 and d.append_frames_encoded == 1


class FakeDriver:
    # Every member reads this release's formats (server/version_gate.py).
    core = types.SimpleNamespace(cluster_version=CLUSTER_VERSION)

    def __init__(self):
        self.proposals = []
        self.callbacks = []
        self.is_leader = True

    def propose(self, block, count, callback):
        self.proposals.append((bytes(block), count))
        self.callbacks.append(callback)
        return sum(n for _, n in self.proposals)  # the last entry's index

    def process_now(self):
        pass


@pytest.mark.parametrize("max_entries,max_bytes", [(8, 1 << 20), (1000, 300), (3, 100)])
def test_proposals_respect_the_batch_limits(max_entries, max_bytes):
    from raftfast.config import Config
    from raftfast.server.connection import ClientProtocol
    from raftfast.server.server import RespServer
    loop = asyncio.new_event_loop()
    try:
        cfg = Config(node_id=1, data_dir="x", listen="tcp://127.0.0.1:1", client="tcp://127.0.0.1:2",
                     max_batch_entries=max_entries, max_batch_bytes=max_bytes)
        drv = FakeDriver()
        server = RespServer(loop, cfg, drv, dict)
        conns = [ClientProtocol(server) for _ in range(3)]
        for c in conns:
            c.connection_made(FakeClientTransport())
        pipeline = b"".join(b"*3\r\n$3\r\nSET\r\n$2\r\nk%d\r\n$20\r\n%s\r\n" % (i % 10, b"v" * 20)
                            for i in range(25))
        for c in conns:
            c.data_received(pipeline)
        server.batcher.flush()
        assert sum(n for _, n in drv.proposals) == 75
        for block, n in drv.proposals:
            assert block_count(block) == n
            assert n <= max_entries
            assert len(block) <= max_bytes or n == 1
    finally:
        loop.close()


def test_connections_are_not_read_past_the_window_of_writes_in_flight():
    """A leader holds at most its window of proposed, unanswered writes
    (plus what one read brings): past it, the connections that deliver more
    stop being read, and every one resumes once answers make room."""
    from raftfast.config import Config
    from raftfast.runtime.waiters import OutcomeUnknown
    from raftfast.server.connection import ClientProtocol
    from raftfast.server.server import RespServer
    loop = asyncio.new_event_loop()
    try:
        value = 64 << 10
        cfg = Config(node_id=1, data_dir="x", listen="tcp://127.0.0.1:1", client="tcp://127.0.0.1:2",
                     max_batch_entries=4, max_inflight_bytes=10 * value)
        drv = FakeDriver()
        server = RespServer(loop, cfg, drv, dict)
        batcher = server.batcher
        conns = [ClientProtocol(server) for _ in range(3)]
        for c in conns:
            c.connection_made(FakeClientTransport())
        request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n" % (value, b"v" * value)
        conns[0].data_received(request * 8)  # two full batches proposed: under the window
        assert conns[0].transport.reading and batcher.unanswered_bytes >= 8 * value
        conns[1].data_received(request * 4)  # one more: past it
        conns[2].data_received(request)
        assert [c.transport.reading for c in conns] == [True, False, False]
        assert batcher.unanswered_bytes + len(batcher.buf) > 10 * value
        assert batcher.throttles == 2  # INFO raftfast_client_reads_paused
        batcher.flush()
        assert [n for _, n in drv.proposals] == [4, 4, 4, 1]
        drv.callbacks[3](OutcomeUnknown())  # 12 entries in flight: still past the window
        assert [c.transport.reading for c in conns] == [True, False, False]
        drv.callbacks[0](OutcomeUnknown())  # 8: room (an answer is an answer, failed or not)
        assert all(c.transport.reading for c in conns) and not batcher.throttled
        assert conns[0].transport.out  # the failures were answered
        assert batcher.window_bytes == 10 * value  # --max-inflight-bytes: below two batches
        # A connection its client stopped reading stays paused for that.
        conns[1].pause_writing()
        conns[1].data_received(request * 8)
        assert not conns[1].transport.reading and conns[1].throttled
        for cb in drv.callbacks[1:3] + drv.callbacks[4:]:
            cb(OutcomeUnknown())
        assert not conns[1].throttled and not conns[1].transport.reading
        conns[1].resume_writing()
        assert conns[1].transport.reading
    finally:
        loop.close()


def test_a_connection_paused_by_a_batch_that_is_refused_is_read_again():
    """A window smaller than a batch: the gathered bytes alone pause the
    connection, and when the flush is refused (leadership moved) no answer
    will come to resume it, so the refusal does."""
    from raftfast.config import Config
    from raftfast.core import NotLeader
    from raftfast.server.connection import ClientProtocol
    from raftfast.server.server import RespServer

    class DeposedDriver(FakeDriver):
        core = types.SimpleNamespace(leader_id=0, cluster_version=CLUSTER_VERSION)  # nobody leads

        def propose(self, block, count, callback):
            self.is_leader = False
            raise NotLeader(0)

    loop = asyncio.new_event_loop()
    try:
        value = 64 << 10
        cfg = Config(node_id=1, data_dir="x", listen="tcp://127.0.0.1:1", client="tcp://127.0.0.1:2",
                     max_inflight_bytes=4 * value)
        server = RespServer(loop, cfg, DeposedDriver(), dict)
        server.leader_client_url = lambda leader: None
        conn = ClientProtocol(server)
        conn.connection_made(FakeClientTransport())
        request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n" % (value, b"v" * value)
        conn.data_received(request * 5)
        assert not conn.transport.reading and conn.throttled
        server.batcher.flush()
        assert conn.transport.reading and not conn.throttled
        assert b"".join(conn.transport.out) == b"-CLUSTERDOWN No raft leader\r\n" * 5
    finally:
        loop.close()


def test_the_window_of_writes_in_flight_is_two_batches():
    from raftfast.config import Config
    from raftfast.server.server import RespServer
    loop = asyncio.new_event_loop()
    try:
        for batch, inflight, window in ((1 << 20, 8 << 20, 2 << 20), (1 << 20, 1 << 20, 1 << 20)):
            cfg = Config(node_id=1, data_dir="x", listen="tcp://127.0.0.1:1",
                         client="tcp://127.0.0.1:2", max_batch_bytes=batch,
                         max_inflight_bytes=inflight)
            assert RespServer(loop, cfg, FakeDriver(), dict).batcher.window_bytes == window
    finally:
        loop.close()
