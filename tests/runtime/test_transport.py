import asyncio
import logging
import os
import socket
import struct

import pytest
import uvloop

from raftfast._codec import (FRAME_HANDSHAKE_ACK, FRAME_MESSAGE, FrameDecoder, encode_handshake,
                             encode_handshake_ack, encode_message)
from raftfast.address import AddressInUse
from raftfast.core.messages import (MSG_APPEND, MSG_APPEND_RESP, MSG_HEARTBEAT, MSG_SNAPSHOT_ACK,
                                    MSG_SNAPSHOT_CHUNK, Message)
from raftfast.runtime.transport import PeerTransport

from tests.support.wait import until_async

LOG = logging.getLogger("test.transport")
DEADLINE = 10.0  # liveness bound for waits, not a timing assertion


def run(coro):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def block(*datas, term=1):
    return b"".join(struct.pack("<IQB", len(d), term, 0) + d for d in datas)


def until(pred, what):
    return until_async(pred, what, DEADLINE)


class Node:
    def __init__(self, nid, cluster_id="raftfast", addresses=None, **kw):
        self.id = nid
        self.got = []
        self.t = PeerTransport(asyncio.get_running_loop(), nid, cluster_id, self.got.extend,
                               addresses or {}, 1 << 20, LOG, **kw)

    async def start(self, url):
        return str(await self.t.start(url))

    def msg(self, to, i=0, **kw):
        return Message(MSG_HEARTBEAT, to=to, frm=self.id, term=1, context=i, **kw)

    async def connect(self, to):
        """Send until the dialed connection to `to` is up (early sends drop)."""
        self.t.send(self.msg(to))
        await until(lambda: self.t.is_connected(to), f"{self.id} -> {to}")


def url_for(kind, tmp_path, name):
    return f"unix://{tmp_path}/{name}.sock" if kind == "unix" else "tcp://127.0.0.1:0"


async def cluster(kind, tmp_path, n):
    nodes = [Node(i) for i in range(1, n + 1)]
    urls = {nd.id: await nd.start(url_for(kind, tmp_path, f"n{nd.id}")) for nd in nodes}
    for nd in nodes:
        for pid, url in urls.items():
            if pid != nd.id:
                nd.t.set_address(pid, url)
    return nodes, urls


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_two_nodes_exchange_in_order(kind, tmp_path):
    async def main():
        (a, b), _ = await cluster(kind, tmp_path, 2)
        try:
            await a.connect(2)
            await b.connect(1)
            del a.got[:], b.got[:]
            ents = block(b"x" * 100, b"yz")
            sent = [Message(MSG_APPEND, to=2, frm=1, term=3, index=i, log_term=2, commit=i,
                            entries=ents, count=2) for i in range(500)]
            for m in sent:
                assert a.t.send(m)
            assert b.t.send(Message(MSG_APPEND_RESP, to=1, frm=2, term=3, index=499,
                                    reject=True, hint=7))
            await until(lambda: len(b.got) == 500 and len(a.got) == 1, "deliveries")
            assert b.got == sent  # same fields, same order, `to` filled in
            assert all(m.to == 2 for m in b.got)
            assert a.got[0].reject and a.got[0].hint == 7 and a.got[0].to == 1
            st = a.t.stats()
            assert st["frames_sent"] >= 500 and st["connected"] == [2]
            assert b.t.stats()["frames_received"] >= 500
        finally:
            await a.t.close()
            await b.t.close()
    run(main())


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_three_nodes_one_frame_to_many(kind, tmp_path):
    async def main():
        nodes, _ = await cluster(kind, tmp_path, 3)
        a, b, c = nodes
        try:
            for src in nodes:
                for dst in nodes:
                    if src is not dst:
                        await src.connect(dst.id)
            for nd in nodes:
                del nd.got[:]
            m = Message(MSG_APPEND, frm=1, term=2, index=5, log_term=1, commit=4,
                        entries=block(b"abc"), count=1)
            frame = encode_message(m)
            assert a.t.send_frame(2, frame) and a.t.send_frame(3, frame)
            assert a.t.send_many([b_msg := a.msg(2, 9), a.msg(3, 9)]) == 2
            b.t.send(b.msg(3, 1))
            c.t.send(c.msg(1, 2))
            await until(lambda: len(b.got) == 2 and len(c.got) == 3 and len(a.got) == 1,
                        "deliveries")
            assert [(x.type, x.to, x.index) for x in b.got[:1] + c.got[:1]] == \
                [(MSG_APPEND, 2, 5), (MSG_APPEND, 3, 5)]
            assert b.got[0].entries == c.got[0].entries == m.entries
            assert b.got[1].context == b_msg.context == 9
            assert c.got[2].frm == 2 and a.got[0].frm == 3
        finally:
            for nd in nodes:
                await nd.t.close()
    run(main())


def test_wrong_cluster_refused_and_listener_keeps_serving(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=LOG.name)

    async def main():
        b = Node(2)
        url = await b.start(f"unix://{tmp_path}/b.sock")
        stranger = Node(7, cluster_id="other", addresses={2: url})
        friend = Node(1, addresses={2: url})
        try:
            stranger.t.send(stranger.msg(2))
            await until(lambda: b.t.stats()["connections_refused"] >= 1, "refusal")
            await friend.connect(2)
            friend.t.send(friend.msg(2, 42))
            await until(lambda: any(m.context == 42 for m in b.got), "friend's message")
            assert not stranger.t.is_connected(2)
            assert all(m.frm == 1 for m in b.got)
        finally:
            for nd in (b, stranger, friend):
                await nd.t.close()
    run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("node 7" in w and "cluster 'other'" in w for w in warnings), warnings


def raw_client(url):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(url.removeprefix("unix://"))
    s.settimeout(DEADLINE)
    return s


def read_until_closed(s):
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def run_raw(tmp_path, caplog, client, **node_kw):
    """Start node 2, run client(url) in a thread next to a good peer (both
    made with node_kw); return node 2's warnings and what it received."""
    caplog.set_level(logging.DEBUG, logger=LOG.name)

    async def main():
        b = Node(2, **node_kw)
        url = await b.start(f"unix://{tmp_path}/b.sock")
        good = Node(1, addresses={2: url}, **node_kw)
        try:
            await good.connect(2)
            result = await asyncio.to_thread(client, url)
            good.t.send(good.msg(2, 77))  # the good connection survived
            await until(lambda: any(m.context == 77 for m in b.got), "good peer's message")
            assert good.t.is_connected(2)
            return result, list(b.got)
        finally:
            await good.t.close()
            await b.t.close()
    result, got = run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return result, got, warnings


def test_version_mismatch_refused(tmp_path, caplog):
    def client(url):
        with raw_client(url) as s:
            s.sendall(encode_handshake("raftfast", 9, min_version=4, max_version=5))
            return read_until_closed(s)
    data, got, warnings = run_raw(tmp_path, caplog, client)
    assert data == b""  # closed without an ack
    assert any("version" in w for w in warnings), warnings


def test_overlapping_version_range_gets_highest_common(tmp_path, caplog):
    def client(url):
        with raw_client(url) as s:
            s.sendall(encode_handshake("raftfast", 9, min_version=1, max_version=5))
            d = FrameDecoder(1 << 16)
            while (f := d.next()) is None:
                d.feed(s.recv(4096))
            return f
    (ftype, ack), _, warnings = run_raw(tmp_path, caplog, client)
    assert ftype == FRAME_HANDSHAKE_ACK
    assert (ack.cluster_id, ack.node_id, ack.min_version, ack.max_version) == \
        ("raftfast", 2, 3, 3)
    assert warnings == []


def test_garbage_closes_only_that_connection(tmp_path, caplog):
    def client(url):
        with raw_client(url) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return read_until_closed(s)
    data, got, warnings = run_raw(tmp_path, caplog, client)
    assert data == b""
    assert any("bad frame" in w for w in warnings), warnings


def test_message_before_handshake_refused(tmp_path, caplog):
    def client(url):
        with raw_client(url) as s:
            s.sendall(encode_message(Message(MSG_HEARTBEAT, frm=9, term=1, context=5)))
            return read_until_closed(s)
    _, got, warnings = run_raw(tmp_path, caplog, client)
    assert not any(m.frm == 9 for m in got)
    assert any("message before the handshake" in w for w in warnings), warnings


def test_message_with_other_sender_refused(tmp_path, caplog):
    def client(url):
        with raw_client(url) as s:
            s.sendall(encode_handshake("raftfast", 9)
                      + encode_message(Message(MSG_HEARTBEAT, frm=9, term=1, context=1))
                      + encode_message(Message(MSG_HEARTBEAT, frm=8, term=1, context=2)))
            return read_until_closed(s)
    _, got, warnings = run_raw(tmp_path, caplog, client)
    assert [m.context for m in got if m.frm == 9] == [1]
    assert not any(m.frm == 8 for m in got)
    assert any("node 9" in w and "message from 8" in w for w in warnings), warnings


def test_dialer_checks_who_answers(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=LOG.name)

    async def main():
        b = Node(5)
        url = await b.start(f"unix://{tmp_path}/b.sock")
        a = Node(1, addresses={2: url})  # a believes node 2 listens there
        try:
            a.t.send(a.msg(2))
            await until(lambda: a.t.stats()["dials"] >= 2, "a redial")
            assert not a.t.is_connected(2) and b.got == []
        finally:
            await a.t.close()
            await b.t.close()
    run(main())
    assert any("it is node 5, not 2" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_reconnect_after_peer_restarts(kind, tmp_path):
    async def main():
        (a, b), urls = await cluster(kind, tmp_path, 2)
        b2 = None
        try:
            await a.connect(2)
            await b.t.close()
            await until(lambda: not a.t.is_connected(2), "a to notice")
            b2 = Node(2)
            await b2.start(urls[2])  # same address; tcp reuses the chosen port
            await until(lambda: a.t.is_connected(2), "a to reconnect")
            assert a.t.send(a.msg(2, 5))
            await until(lambda: [m.context for m in b2.got] == [5], "delivery after restart")
            assert a.t.stats()["reconnects"] >= 1
        finally:
            await a.t.close()
            if b2:
                await b2.t.close()
    run(main())


def test_messages_to_a_down_peer_are_dropped_not_queued(tmp_path):
    async def main():
        url = f"unix://{tmp_path}/b.sock"
        a = Node(1, addresses={2: url})
        b = None
        try:
            results = [a.t.send(a.msg(2, i)) for i in range(1000)]
            assert not any(results)
            assert a.t.stats()["frames_dropped"] == 1000
            await until(lambda: a.t.stats()["dials"] >= 3, "redials with backoff")
            assert not a.t.is_connected(2)
            b = Node(2)
            await b.start(url)
            await a.connect(2)
            a.t.send(a.msg(2, 5000))
            await until(lambda: any(m.context == 5000 for m in b.got), "new message")
            # Nothing sent while b was down arrived later.
            assert all(m.context == 0 or m.context >= 1000 for m in b.got)
            assert not any(0 < m.context < 1000 for m in b.got)
        finally:
            await a.t.close()
            if b:
                await b.t.close()
    run(main())


def test_unknown_peer_is_dropped_with_debug_log(caplog):
    caplog.set_level(logging.DEBUG, logger=LOG.name)

    async def main():
        a = Node(1)
        assert a.t.send(a.msg(99)) is False
        assert a.t.stats()["frames_dropped"] == 1 and a.t.stats()["dials"] == 0
        await a.t.close()
    run(main())
    assert any("no address for node 99" in r.getMessage() for r in caplog.records)


def test_flow_control_drops_while_paused(tmp_path):
    async def main():
        (a, b), _ = await cluster("unix", tmp_path, 2)
        a.t.write_buffer_limit = 64 << 10
        # Reconnect so the small limit applies to the new connection.
        url = str(b.t.listen_address)
        a.t.set_address(2, None)
        a.t.set_address(2, url)
        try:
            await a.connect(2)
            inbound = next(iter(b.t._inbound))
            inbound.transport.pause_reading()  # b stops reading: a's buffers fill
            big = Message(MSG_APPEND, to=2, frm=1, term=1, entries=block(b"z" * 60000),
                          count=1)
            sent = 0
            while a.t.send(big):
                sent += 1
                assert sent < 10_000, "writes never paused"
                if sent % 16 == 0:
                    await asyncio.sleep(0)  # let the loop move bytes into the kernel
            dropped = a.t.stats()["frames_dropped"]
            assert not a.t.can_send(2) and a.t.is_connected(2)
            assert a.t.send(big) is False
            assert a.t.stats()["frames_dropped"] == dropped + 1
            inbound.transport.resume_reading()
            await until(lambda: a.t.can_send(2), "writes to resume")
            await until(lambda: len(b.got) >= sent, "the accepted frames to arrive")
            assert len(b.got) == sent
        finally:
            await a.t.close()
            await b.t.close()
    run(main())


def test_stale_unix_socket_removed_live_one_kept(tmp_path):
    path = str(tmp_path / "n.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)  # as a SIGKILLed node leaves it
    s.close()

    async def main():
        a = Node(1)
        await a.start(f"unix://{path}")
        other = Node(3)
        try:
            with pytest.raises(AddressInUse):
                await other.start(f"unix://{path}")
            b = Node(2, addresses={1: f"unix://{path}"})
            await b.connect(1)  # the live listener still serves
            await b.t.close()
        finally:
            await other.t.close()
            await a.t.close()
        assert not os.path.exists(path)  # a clean close removes its own socket
    run(main())


def open_sockets():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # the directory's own fd, gone by now
    return n


def test_close_leaks_no_sockets_or_tasks(tmp_path):
    async def main():
        # Sockets only: libuv keeps a spare /dev/null fd per loop once it accepts.
        sockets_before = open_sockets()
        (a, b), _ = await cluster("tcp", tmp_path, 2)
        await a.connect(2)
        await b.connect(1)
        a.t.set_address(3, "tcp://127.0.0.1:1")  # a peer that refuses: a redial timer runs
        a.t.send(a.msg(3))
        await until(lambda: a.t.stats()["dials"] >= 4, "dials to node 3")
        await a.t.close()
        await b.t.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        # A closed transport's sockets are released by the loop's own
        # callbacks: wait for them, bounded.
        await until(lambda: open_sockets() == sockets_before, "the sockets to be closed")
    run(main())


def test_set_address_moves_the_connection(tmp_path):
    async def main():
        b = Node(2)
        url1 = await b.start(f"unix://{tmp_path}/b1.sock")
        b2 = Node(2)
        url2 = await b2.start(f"unix://{tmp_path}/b2.sock")
        a = Node(1, addresses={2: url1})
        try:
            await a.connect(2)
            a.t.set_address(2, url2)
            assert not a.t.is_connected(2)
            await a.connect(2)
            a.t.send(a.msg(2, 3))
            await until(lambda: any(m.context == 3 for m in b2.got), "delivery at new address")
            assert not any(m.context == 3 for m in b.got)
        finally:
            for nd in (a, b, b2):
                await nd.t.close()
    run(main())


def test_handshakes_carry_client_urls_of_known_peers_only(tmp_path):
    async def main():
        # b knows how to dial node 1 (a), not node 3 (a stranger).
        b = Node(2, addresses={1: f"unix://{tmp_path}/a.sock"}, client_url="tcp://10.0.0.2:7002")
        url = await b.start(f"unix://{tmp_path}/b.sock")
        a = Node(1, addresses={2: url}, client_url="tcp://10.0.0.1:7001")
        stranger = Node(3, addresses={2: url}, client_url="tcp://10.6.6.6:6666")
        try:
            assert a.t.peer_client_url(2) is None
            await a.connect(2)  # a learns b's from the ack, b learns a's from the handshake
            await stranger.connect(2)
            await until(lambda: b.t.peer_client_url(1) is not None, "b to learn a's url")
            return (a.t.peer_client_url(2), b.t.peer_client_url(1), b.t.peer_client_url(3),
                    b.t.peer_client_url(9))
        finally:
            for nd in (a, b, stranger):
                await nd.t.close()
    assert run(main()) == ("tcp://10.0.0.2:7002", "tcp://10.0.0.1:7001", None, None)


def test_send_rejects_a_foreign_sender_id():
    async def main():
        a = Node(1, addresses={2: "tcp://127.0.0.1:1"})
        with pytest.raises(ValueError, match="message from 5"):
            a.t.send(Message(MSG_HEARTBEAT, to=2, frm=5))
        await a.t.close()
    run(main())


def test_a_huge_frame_before_the_handshake_is_refused_from_its_header(tmp_path, caplog):
    def client(url):
        with raw_client(url) as s:
            # A header announcing a 1 MiB handshake: refused before any body
            # is buffered (after the handshake, 1 MiB frames are fine here).
            s.sendall(struct.pack("<IBBHI", 1 << 20, 1, 1, 0, 0))
            return read_until_closed(s)
    data, got, warnings = run_raw(tmp_path, caplog, client)
    assert data == b""
    assert any("exceeds the limit" in w for w in warnings), warnings


def chunk_msg(frm, to, data=b"snapshot bytes"):
    return Message(MSG_SNAPSHOT_CHUNK, to=to, frm=frm, term=3, index=40, log_term=2, commit=0,
                   hint=len(data), context=1, entries=data)


def test_current_peers_exchange_snapshot_messages(tmp_path):
    async def main():
        (a, b), _ = await cluster("unix", tmp_path, 2)
        try:
            await a.connect(2)
            await b.connect(1)
            assert a.t.peer_version(2) == 3 and b.t.peer_version(1) == 3
            del a.got[:], b.got[:]
            assert a.t.send(chunk_msg(1, 2))
            assert b.t.send(Message(MSG_SNAPSHOT_ACK, to=1, frm=2, term=3, index=40,
                                    log_term=2, commit=14))
            await until(lambda: b.got and a.got, "deliveries")
            assert b.got == [chunk_msg(1, 2)]
            assert a.got[0].type == MSG_SNAPSHOT_ACK and a.got[0].commit == 14
        finally:
            await a.t.close()
            await b.t.close()
    run(main())


def test_a_v1_peer_never_receives_snapshot_messages(tmp_path):
    """A peer of the previous release acks the handshake with version 1:
    the snapshot transfer types are dropped at the sender, everything else
    still goes, in v1 frames."""
    async def main():
        frames = []

        async def v1_peer(reader, writer):
            dec = FrameDecoder(1 << 20)
            acked = False
            while data := await reader.read(65536):
                dec.feed(data)
                while (f := dec.next()) is not None:
                    if not acked:
                        writer.write(encode_handshake_ack("raftfast", 2, 1))
                        acked = True
                    else:
                        frames.append(f)
            writer.close()

        path = str(tmp_path / "v1.sock")
        server = await asyncio.start_unix_server(v1_peer, path)
        a = Node(1, addresses={2: f"unix://{path}"})
        try:
            await a.connect(2)
            assert a.t.peer_version(2) == 1
            dropped = a.t.stats()["frames_dropped"]
            assert not a.t.send(chunk_msg(1, 2))
            assert a.t.send_many([chunk_msg(1, 2), a.msg(2, 5)]) == 1
            assert a.t.send(a.msg(2, 6))
            assert a.t.stats()["frames_dropped"] == dropped + 2
            await until(lambda: sum(m.context in (5, 6) for _, m in frames) == 2,
                        "the heartbeats")
            assert all(ft == FRAME_MESSAGE and m.type == MSG_HEARTBEAT for ft, m in frames)
        finally:
            await a.t.close()
            server.close()
            await server.wait_closed()
    run(main())
