"""The hot path's flow control and batching, as behaviour: windows,
back-pressure, batch limits, encode-once, one ack per batch."""
import asyncio

import pytest

from tests.support.entrylog import EntryLog, block_count
from raftfast.core import REPLICATE, CoreConfig, Raft
from raftfast.core.messages import MSG_APPEND, MSG_APPEND_RESP, Message
from tests.support.simnet import make_block


def leader(max_inflight=4, max_inflight_bytes=0, max_msg_bytes=1 << 20):
    r = Raft(CoreConfig(1, (1, 2, 3), max_inflight=max_inflight,
                        max_inflight_bytes=max_inflight_bytes, max_msg_bytes=max_msg_bytes,
                        seed=1), EntryLog(1))
    r.campaign()
    r.votes = {1: True, 2: True}
    r.become_leader()
    drain(r)
    for peer in (2, 3):  # both followers have the noop: pipelining on
        r.progress[peer].match = r.log.last_index
        r.progress[peer].become_replicate()
    return r


def drain(r):
    sent = []
    while r.has_ready():
        rd = r.ready()
        sent += rd.messages + [m for m in rd.persist_messages if m.to != r.id]
        r.advance(rd)
    return sent


def appends_to(msgs, peer):
    return [m for m in msgs if m.type == MSG_APPEND and m.to == peer and m.count]


def test_the_inflight_window_caps_unacknowledged_appends():
    r = leader(max_inflight=4)
    sent = []
    for i in range(20):
        r.propose(make_block([b"x%d" % i]))
        sent += drain(r)
    assert len(appends_to(sent, 2)) == 4
    assert r.progress[2].is_paused()
    # An acknowledgement frees the window and the next append goes out.
    first = appends_to(sent, 2)[0]
    r.step(Message(MSG_APPEND_RESP, to=1, frm=2, term=r.term, index=first.index + first.count))
    assert len(appends_to(drain(r), 2)) >= 1


def test_the_inflight_window_is_also_capped_in_bytes():
    r = leader(max_inflight=100, max_inflight_bytes=300)
    sent = []
    for i in range(20):
        r.propose(make_block([b"y" * 50]))
        sent += drain(r)
    apps = appends_to(sent, 2)
    # Each message is one 63-byte entry; the window closes once 300 bytes are out.
    assert sum(len(m.entries) for m in apps[:-1]) < 300 <= sum(len(m.entries) for m in apps)


def test_one_append_carries_at_most_the_byte_limit():
    r = leader(max_inflight=100, max_msg_bytes=200)
    r.progress[2].flow_paused = True
    r.propose(make_block([b"z" * 40] * 20))
    drain(r)
    r.set_flow_paused(2, False)
    apps = appends_to(drain(r), 2)
    assert all(len(m.entries) <= 200 for m in apps)
    # Contiguous messages that reach the end of the log.
    assert all(a.index + a.count == b.index for a, b in zip(apps, apps[1:]))
    assert apps[0].index == 1 and apps[-1].index + apps[-1].count == r.log.last_index
    assert sum(m.count for m in apps) == 20 and len(apps) >= 20 * 53 // 200


def test_a_paused_socket_stops_appends_until_it_resumes():
    r = leader(max_inflight=100)
    r.set_flow_paused(2, True)
    for i in range(5):
        r.propose(make_block([b"p%d" % i]))
    sent = drain(r)
    assert appends_to(sent, 2) == [] and len(appends_to(sent, 3)) == 5
    assert r.progress[2].state == REPLICATE  # paused, not demoted to probe
    r.set_flow_paused(2, False)
    resumed = appends_to(drain(r), 2)
    assert sum(m.count for m in resumed) == 5


def test_a_follower_acknowledges_a_batch_of_appends_once():
    from raftfast.core.messages import HardState
    f = Raft(CoreConfig(2, (1, 2, 3), seed=2), EntryLog(1), HardState(1, 1, 0))
    idx = 0
    for i in range(3):
        blk = make_block([b"a", b"b"])
        from tests.support.entrylog import decode_entries, encode_entries
        blk = encode_entries([(1, 0, d) for _, _, d in decode_entries(blk)])
        f.step(Message(MSG_APPEND, to=2, frm=1, term=1, index=idx, log_term=1 if idx else 0,
                       entries=blk, count=2))
        idx += 2
    rd = f.ready()
    acks = [m for m in rd.persist_messages if m.type == MSG_APPEND_RESP and m.to == 1]
    assert [(m.index, m.reject) for m in acks] == [(6, False)]


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
    r = leader(max_inflight=100)
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
