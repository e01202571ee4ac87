"""The fault proxy on its own, in front of echo servers: what each fault does
to live and new connections, and that stopping it leaves nothing behind."""
import os
import socket
import socketserver
import threading
import time

import pytest

from tests.support.faultproxy import BLACKHOLE, CUT, PASS, FaultProxy
from tests.support.wait import until


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass


class _TCPEcho(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixEcho(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class EchoServer:
    """An echo server on its own thread, at a tcp:// or unix:// URL."""

    def __init__(self, scheme, root):
        if scheme == "tcp":
            self.server = _TCPEcho(("127.0.0.1", 0), _EchoHandler)
            self.url = f"tcp://127.0.0.1:{self.server.server_address[1]}"
        else:
            path = os.path.join(root, f"echo{id(self)}.sock")
            self.server = _UnixEcho(path, _EchoHandler)
            self.url = f"unix://{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(params=["tcp", "unix"])
def scheme(request):
    return request.param


@pytest.fixture
def echo(scheme, root):
    servers = []

    def make():
        servers.append(EchoServer(scheme, root))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def proxy(root):
    with FaultProxy(socket_dir=root) as p:
        yield p


def dial(url, timeout=2.0):
    if url.startswith("tcp://"):
        host, port = url[len("tcp://"):].rsplit(":", 1)
        return socket.create_connection((host, int(port)), timeout=timeout)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(url[len("unix://"):])
    return s


def roundtrip(sock, payload):
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("closed")
        got += chunk
    return got


def is_closed(sock, within=2.0):
    """True if the peer closes `sock` (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def is_open_and_silent(sock):
    """True if `sock` is open with nothing to read, right now."""
    sock.setblocking(False)
    try:
        sock.recv(1)  # data or EOF: not silent, or not open
        return False
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def test_forwards_bytes_both_ways(proxy, echo):
    url = proxy.add_link(1, 2, echo().url)
    with dial(url) as s:
        big = os.urandom(1 << 20)
        assert roundtrip(s, b"hello") == b"hello"
        assert roundtrip(s, big) == big
    assert proxy.stats(1, 2).accepted == 1
    assert proxy.stats(1, 2).bytes_forwarded >= 2 * len(big)


def test_delay_adds_latency_each_way_and_keeps_order(proxy, echo):
    url = proxy.add_link(1, 2, echo().url)
    proxy.delay(1, 2, 100)
    assert proxy.mode(1, 2) == "delay 100"
    with dial(url) as s:
        start = time.monotonic()
        assert roundtrip(s, b"x") == b"x"
        assert time.monotonic() - start >= 0.2  # 100 ms there, 100 ms back
        # Many small writes arrive whole and in order.
        msgs = b"".join(b"%06d" % i for i in range(2000))
        for i in range(0, len(msgs), 6):
            s.sendall(msgs[i:i + 6])
        got = b""
        while len(got) < len(msgs):
            got += s.recv(65536)
        assert got == msgs
        proxy.heal(1, 2)
        start = time.monotonic()
        assert roundtrip(s, b"y") == b"y"
        assert time.monotonic() - start < 0.1


def test_cut_closes_live_connections_and_new_ones_until_healed(proxy, echo):
    url = proxy.add_link(1, 2, echo().url)
    live = dial(url)
    assert roundtrip(live, b"a") == b"a"
    proxy.cut(1, 2)
    assert proxy.mode(1, 2) == CUT
    assert is_closed(live)
    live.close()
    with dial(url) as fresh:  # the listener still accepts, then closes
        assert is_closed(fresh)
    assert proxy.stats(1, 2).refused >= 1 and proxy.stats(1, 2).aborted == 1
    proxy.heal(1, 2)
    with dial(url) as s:
        assert roundtrip(s, b"b") == b"b"


def test_blackhole_swallows_bytes_and_healing_drops_the_broken_stream(proxy, echo):
    url = proxy.add_link(1, 2, echo().url)
    live = dial(url)
    assert roundtrip(live, b"a") == b"a"
    proxy.blackhole(1, 2)
    live.sendall(b"into the void")
    with dial(url) as fresh:  # new connections are accepted and silent too
        fresh.sendall(b"hello?")
        swallowed = len(b"into the void") + len(b"hello?")
        until(lambda: proxy.stats(1, 2).bytes_dropped >= swallowed,
              "the blackhole to swallow what both connections sent", 3)
        # Live relays read and dropped every byte sent (a relay that was
        # closed, or that forwarded, would not count them): both connections
        # are still open, and nothing came back.
        assert is_open_and_silent(live) and is_open_and_silent(fresh)
        # Healing: both streams lost bytes, so both are closed, as a stalled
        # TCP connection would end; a new connection works.
        proxy.heal(1, 2)
        assert is_closed(live) and is_closed(fresh)
    live.close()
    with dial(url) as s:
        assert roundtrip(s, b"b") == b"b"


def test_a_blackhole_that_swallowed_nothing_keeps_the_connection(proxy, echo):
    url = proxy.add_link(1, 2, echo().url)
    with dial(url) as s:
        assert roundtrip(s, b"a") == b"a"
        proxy.blackhole(1, 2)
        proxy.heal(1, 2)
        assert roundtrip(s, b"b") == b"b"


def test_a_dead_target_closes_the_connection(proxy, echo):
    server = echo()
    url = proxy.add_link(1, 2, server.url)
    server.close()
    with dial(url) as s:
        assert is_closed(s)


def test_partition_isolate_and_one_way_cuts(proxy, echo):
    server = echo()
    for src in (1, 2, 3):
        for dst in (1, 2, 3):
            if src != dst:
                proxy.add_link(src, dst, server.url)
    assert proxy.nodes() == [1, 2, 3] and len(proxy.links()) == 6
    modes = lambda: {k: proxy.mode(*k) for k in proxy.links()}  # noqa: E731

    proxy.partition([1], [2, 3])
    assert modes() == {(1, 2): CUT, (2, 1): CUT, (1, 3): CUT, (3, 1): CUT,
                       (2, 3): PASS, (3, 2): PASS}
    proxy.heal_all()
    proxy.isolate(2)
    assert {k for k, m in modes().items() if m == CUT} == set(proxy.links_of(2))
    proxy.heal_all()
    proxy.cut_one_way([1], [2, 3])
    assert {k for k, m in modes().items() if m == CUT} == {(1, 2), (1, 3)}
    proxy.heal_all()
    proxy.blackhole(3, 1)
    assert modes()[3, 1] == BLACKHOLE
    proxy.heal_all()
    assert set(modes().values()) == {PASS}


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_stop_leaves_no_sockets_threads_or_files(root, echo):
    server = echo()
    fds, threads = _open_fds(), threading.active_count()
    proxy = FaultProxy(socket_dir=root).start()
    urls = [proxy.add_link(1, j, server.url) for j in (2, 3)]
    clients = [dial(u) for u in urls]
    for c in clients:
        assert roundtrip(c, b"z") == b"z"
    proxy.delay(1, 2, 50)
    clients[0].sendall(b"in flight")
    proxy.stop()
    for c in clients:
        assert is_closed(c)
        c.close()
    until(lambda: _open_fds() == fds, lambda: f"{fds} open files (have {_open_fds()})", 3)
    assert threading.active_count() == threads
    assert not [f for f in os.listdir(root) if f.startswith("link-")]
