"""The hot path's batching seen from the runtime and the server: one
encoding of an append for every follower, proposals within the batch
limits.  (Windows, back-pressure and one ack per batch are scripts in
testdata/.)"""
import asyncio

import pytest

from tests.core.interaction import Env
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
    d._send(rd.messages)
    frames = [f for to, f in d.transport.frames if f != "msg"]
    assert len(frames) == 2 and frames[0] is frames[1]
    assert len(encoded) == 1 and d.append_frames_encoded == 1


class FakeDriver:
    def __init__(self):
        self.proposals = []
        self.is_leader = True

    def propose(self, block, count, callback):
        self.proposals.append((bytes(block), count))
        return sum(n for _, n in self.proposals)  # the last entry's index


class FakeConnTransport:
    def __init__(self):
        self.out = []

    def write(self, b):
        self.out.append(b)

    def writelines(self, bs):
        self.out.extend(bs)

    def is_closing(self):
        return False

    def get_extra_info(self, name):
        return None


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
            c.connection_made(FakeConnTransport())
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
