import asyncio
import os
import socket

import pytest
import uvloop

from raftfast.address import (Address, AddressError, AddressInUse, create_server, open_connection,
                              parse_address)


def run(coro):
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@pytest.mark.parametrize("url,host,port", [
    ("tcp://127.0.0.1:7001", "127.0.0.1", 7001),
    ("tcp://node-3.example.com:80", "node-3.example.com", 80),
    ("tcp://localhost:0", "localhost", 0),
    ("tcp://[::1]:9000", "::1", 9000),
    ("tcp://[fe80::1:2]:65535", "fe80::1:2", 65535),
    ("tcp://0.0.0.0:7001", "0.0.0.0", 7001),
])
def test_parse_tcp_round_trips(url, host, port):
    a = parse_address(url)
    assert (a.scheme, a.host, a.port, a.path) == ("tcp", host, port, None)
    assert str(a) == url
    assert parse_address(str(a)) == a


def test_parse_unix_round_trips():
    a = parse_address("unix:///tmp/x/raft.sock")
    assert (a.scheme, a.host, a.port, a.path) == ("unix", None, None, "/tmp/x/raft.sock")
    assert str(a) == "unix:///tmp/x/raft.sock"
    assert a.is_unix and not a.is_wildcard


@pytest.mark.parametrize("url,wild", [
    ("tcp://0.0.0.0:1", True), ("tcp://[::]:1", True),
    ("tcp://127.0.0.1:1", False), ("tcp://[::1]:1", False), ("tcp://example.org:1", False),
])
def test_is_wildcard(url, wild):
    assert parse_address(url).is_wildcard is wild


@pytest.mark.parametrize("url,why", [
    ("127.0.0.1:7001", "expected tcp://"),
    ("http://127.0.0.1:80", "unknown scheme"),
    ("tcp://127.0.0.1", "missing :PORT"),
    ("tcp://:7001", "missing host"),
    ("tcp://127.0.0.1:http", "not a number"),
    ("tcp://127.0.0.1:-1", "not a number"),
    ("tcp://127.0.0.1:65536", "out of range"),
    ("tcp://127.0.0.1:7001/x", "only HOST:PORT"),
    ("tcp://user@host:1", "only HOST:PORT"),
    ("tcp://::1:7001", "must be in brackets"),
    ("tcp://[::1:7001", "unclosed"),
    ("tcp://[zz::1]:7001", "not an IPv6 address"),
    ("tcp://[::1]7001", "missing :PORT"),
    ("tcp://300.1.1.1:7001", "not an IPv4 address"),
    ("tcp://bad_host:7001", "not a valid hostname"),
    ("tcp://-bad.example:7001", "not a valid hostname"),
    ("unix://relative/raft.sock", "must be absolute"),
    ("unix:///tmp/dir/", "directory"),
    ("unix:///" + "x" * 120 + ".sock", "longer than 107 bytes"),
])
def test_bad_addresses_name_url_and_reason(url, why):
    with pytest.raises(AddressError) as ei:
        parse_address(url)
    msg = str(ei.value)
    assert repr(url) in msg and why in msg
    assert "\n" not in msg
    assert isinstance(ei.value, ValueError)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Client(asyncio.Protocol):
    def __init__(self):
        self.got = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        if not self.got.done():
            self.got.set_result(data)


async def echo_round_trip(url):
    loop = asyncio.get_running_loop()
    server = await create_server(loop, url, Echo)
    try:
        if url.startswith("tcp"):
            port = server.sockets[0].getsockname()[1]
            url = f"tcp://127.0.0.1:{port}"
        transport, proto = await open_connection(loop, url, Client)
        transport.write(b"ping")
        assert await asyncio.wait_for(proto.got, 5) == b"ping"
        if url.startswith("tcp"):
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        transport.close()
    finally:
        server.close()
        await server.wait_closed()


def test_tcp_server_and_connection():
    run(echo_round_trip("tcp://127.0.0.1:0"))


def test_unix_server_and_connection(tmp_path):
    run(echo_round_trip(f"unix://{tmp_path}/a.sock"))


def test_stale_unix_socket_file_is_removed(tmp_path):
    path = str(tmp_path / "stale.sock")
    # A socket bound and closed without unlink is what a SIGKILLed node leaves.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    assert os.path.exists(path)
    run(echo_round_trip(f"unix://{path}"))


def test_live_unix_socket_is_not_removed(tmp_path):
    path = str(tmp_path / "live.sock")
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    owner.bind(path)
    owner.listen(8)
    ino = os.stat(path).st_ino
    try:
        async def main():
            with pytest.raises(AddressInUse, match="address in use"):
                await create_server(asyncio.get_running_loop(), f"unix://{path}", Echo)
        run(main())
        assert os.stat(path).st_ino == ino
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)  # the original owner still answers
        c.close()
    finally:
        owner.close()


def test_regular_file_at_unix_path_is_not_removed(tmp_path):
    path = tmp_path / "file.sock"
    path.write_text("keep me")

    async def main():
        with pytest.raises(AddressInUse, match="not a socket"):
            await create_server(asyncio.get_running_loop(), f"unix://{path}", Echo)
    run(main())
    assert path.read_text() == "keep me"


def test_tcp_port_in_use():
    async def main():
        loop = asyncio.get_running_loop()
        first = await create_server(loop, "tcp://127.0.0.1:0", Echo)
        port = first.sockets[0].getsockname()[1]
        try:
            with pytest.raises(AddressInUse, match=f"tcp://127.0.0.1:{port}"):
                await create_server(loop, f"tcp://127.0.0.1:{port}", Echo)
        finally:
            first.close()
            await first.wait_closed()
    run(main())


def test_address_equality_and_passthrough():
    a = parse_address("tcp://h:1")
    assert parse_address(a) is a
    assert a == Address("tcp", host="h", port=1)
    assert len({a, parse_address("tcp://h:1")}) == 1


def test_tls_urls_are_tcp_addresses_marked_tls():
    a = parse_address("tls://127.0.0.1:7001")
    assert (a.scheme, a.host, a.port, a.tls) == ("tcp", "127.0.0.1", 7001, True)
    assert str(a) == "tls://127.0.0.1:7001" and str(parse_address("tls://[::1]:1")) == "tls://[::1]:1"
    assert a != parse_address("tcp://127.0.0.1:7001") and not parse_address("tcp://h:1").tls
    assert parse_address("tls://0.0.0.0:1").is_wildcard
    with pytest.raises(AddressError, match="only HOST:PORT may follow tls://"):
        parse_address("tls://h:1/x")
