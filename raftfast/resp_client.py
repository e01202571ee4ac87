"""A small RESP client for the tools around the nodes: the launcher, the
benchmarks and the tests.

- call(addr, *args): one command on a fresh connection, its decoded reply;
- info(addr, section): a node's INFO section as a dict, or None;
- leader_of(infos): which node leads, from the INFO of several;
- find_leader(addr): the leader's address, by following a probe's redirects;
- Connection, call_sync, info_sync: the same for synchronous callers
  (blocking sockets), which also pipeline on a Connection.

Replies decode the same way everywhere (RespReplyParser): simple strings
as str, errors as RespError, integers as int, bulk strings as bytes (or
None), arrays as lists.  Addresses are Address objects, URLs
(tcp://HOST:PORT, unix:///path) or "host:port".

Not for the hot path: the load generator keeps its own connections and
counts `+OK` replies in bulk, falling back to this parser for the rest.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any, Union

from raftfast.address import Address, AddressError, open_connection, parse_address

# Where a tool may point: an Address, a URL, or "host:port".
Target = Union[Address, str]
# A decoded reply: str, RespError, int, bytes, None, or a list of them.
Reply = Any

__all__ = ["RespError", "RespReplyParser", "INCOMPLETE", "encode_command", "address", "show",
           "call", "parse_info", "info", "leader_of", "find_leader", "Connection", "call_sync",
           "info_sync"]


class RespError(str):
    """An error reply; its first word is the kind (MOVED, ERR, TIMEOUT...)."""

    @property
    def kind(self) -> str:
        return self.split(" ", 1)[0] if self else "ERR"


class _Incomplete:
    __slots__ = ()

    def __repr__(self):
        return "INCOMPLETE"


INCOMPLETE = _Incomplete()


class RespReplyParser:
    """Incremental RESP2 parser: feed bytes, then take replies (or, on a
    server's side, the requests, which are arrays of bulk strings)."""

    __slots__ = ("_buf", "_pos")

    INCOMPLETE = INCOMPLETE

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf = self._buf[self._pos:] + data if self._pos else self._buf + data
        self._pos = 0

    def take(self) -> Reply:
        """The next whole reply, or INCOMPLETE; ValueError for bytes that are not RESP."""
        r, pos = self._parse(self._pos)
        if r is INCOMPLETE:
            return INCOMPLETE
        self._pos = pos
        return r

    @property
    def consumed(self) -> int:
        """Bytes of the buffer taken so far (since the last feed)."""
        return self._pos

    def _parse(self, pos):
        buf = self._buf
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return INCOMPLETE, pos
        kind, line = buf[pos:pos + 1], buf[pos + 1:end]
        nxt = end + 2
        if kind == b"+":
            return line.decode("utf-8", "replace"), nxt
        if kind == b"-":
            return RespError(line.decode("utf-8", "replace")), nxt
        if kind == b":":
            return int(line), nxt
        if kind == b"$":
            n = int(line)
            if n < 0:
                return None, nxt
            if len(buf) < nxt + n + 2:
                return INCOMPLETE, pos
            return buf[nxt:nxt + n], nxt + n + 2
        if kind == b"*":
            n = int(line)
            if n < 0:
                return None, nxt
            items = []
            for _ in range(n):
                item, nxt = self._parse(nxt)
                if item is INCOMPLETE:
                    return INCOMPLETE, pos
                items.append(item)
            return items, nxt
        raise ValueError(f"not a RESP2 reply: {buf[pos:pos + 40]!r}")


def encode_command(*args: bytes | str | int) -> bytes:
    """A command as a RESP array of bulk strings; str and int arguments are encoded."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, (bytes, bytearray)):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def address(addr: Target) -> Address:
    """An Address from an Address, a URL, or "host:port" (host defaults to 127.0.0.1)."""
    if isinstance(addr, str) and "://" not in addr:
        host, _, port = addr.rpartition(":")
        addr = f"tcp://{host or '127.0.0.1'}:{port}"
    return parse_address(addr)


def show(addr: Target) -> str:
    """"host:port" for TCP, the URL for a Unix socket: how tools print a target."""
    addr = address(addr)
    return f"{addr.host}:{addr.port}" if addr.scheme == "tcp" else str(addr)


# ---- asyncio -------------------------------------------------------------------------

class _OneReply(asyncio.Protocol):
    def __init__(self):
        self.parser = RespReplyParser()
        self.reply = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.parser.feed(data)
        try:
            r = self.parser.take()
        except ValueError as e:
            r = e
        if r is not INCOMPLETE and not self.reply.done():
            self.reply.set_result(r)

    def connection_lost(self, exc):
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("connection closed"))


_tls_context: ssl.SSLContext | None = None


def use_tls(context: ssl.SSLContext | None) -> None:
    """The ssl context (raftfast.tls.dial_context) for tls:// addresses."""
    global _tls_context
    _tls_context = context


_password: bytes | None = None


def use_password(password: bytes | None) -> None:
    """The password every connection of this process AUTHs with first
    (a cluster started with --requirepass-file); None: no AUTH."""
    global _password
    _password = password


class AuthRefused(ConnectionError):
    """The node did not take the password: a wrong one, or none expected."""


def _check_auth(reply: Reply) -> None:
    if reply != "OK":
        raise AuthRefused(f"AUTH refused: {reply}")


async def open_client(loop: asyncio.AbstractEventLoop, addr: Target,
                      factory: Any, timeout: float = 5.0) -> tuple[asyncio.Transport, Any]:
    """A client connection to addr (TLS when it is a tls:// address),
    authenticated with use_password's password before factory's protocol
    takes it over.  AuthRefused when the password is refused."""
    a = address(addr)
    if _password is None:
        return await asyncio.wait_for(open_connection(loop, a, factory, **_tls_args(a)), timeout)
    transport, first = await asyncio.wait_for(
        open_connection(loop, a, _OneReply, **_tls_args(a)), timeout)
    try:
        transport.write(encode_command("AUTH", _password))
        _check_auth(await asyncio.wait_for(first.reply, timeout))
    except BaseException:
        transport.close()
        raise
    proto = factory()
    transport.set_protocol(proto)
    proto.connection_made(transport)
    return transport, proto


def _tls_args(a: Address) -> dict[str, Any]:
    if not a.tls:
        return {}
    if _tls_context is None:
        raise ConnectionError(f"{a}: a TLS address, and no TLS context (resp_client.use_tls)")
    return {"ssl": _tls_context, "server_hostname": a.host}


async def call(addr: Target, *args: bytes | str | int, timeout: float = 5.0) -> Reply:
    """One command on a fresh connection to addr; its decoded reply.  Raises
    OSError (asyncio.TimeoutError among them) or ValueError (not RESP)."""
    transport, proto = await open_client(asyncio.get_running_loop(), addr, _OneReply, timeout)
    try:
        transport.write(encode_command(*args))
        r = await asyncio.wait_for(proto.reply, timeout)
    finally:
        transport.close()
    if isinstance(r, ValueError):
        raise r
    return r


def parse_info(text: bytes | str) -> dict[str, str]:
    """`field:value` lines of an INFO reply as a dict (section headers skipped)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


async def info(addr: Target, section: str = "raft",
               timeout: float = 2.0) -> dict[str, str] | None:
    """INFO `section` of the node at addr as a dict, or None if it does not answer one."""
    try:
        reply = await call(addr, "INFO", section, timeout=timeout)
    except (OSError, asyncio.TimeoutError, ValueError):
        return None
    return parse_info(reply) if isinstance(reply, bytes) else None


def leader_of(infos: dict[int, dict[str, str] | None]) -> int | None:
    """Of {node id: INFO raft dict}, the id of the node that says it leads
    in the highest term, or None."""
    best = None
    for nid, inf in infos.items():
        if inf and inf.get("raft_role") == "leader":
            term = _int(inf.get("raft_current_term"))
            if best is None or term > best[0]:
                best = (term, nid)
    return best[1] if best else None


def _int(s: str | None, default: int = 0) -> int:
    try:
        return int(s)
    except (TypeError, ValueError):
        return default


async def find_leader(addr: Target, timeout: float = 10.0) -> Address:
    """Send one probe SET; follow `-MOVED slot host:port` and `-NOTLEADER url`,
    and wait out `-CLUSTERDOWN`, `-TRYAGAIN` and `-TIMEOUT`; returns the
    leader's Address.  ConnectionError when no leader is found."""
    addr = address(addr)
    deadline = time.monotonic() + timeout
    while True:
        r = await call(addr, "SET", "raftfast:loadgen:probe", "1", timeout=timeout)
        if not isinstance(r, RespError):
            return addr
        try:
            if r.kind == "MOVED":
                addr = address(r.split()[-1])
                continue
            if r.kind == "NOTLEADER":
                addr = parse_address(r.split()[-1])
                continue
        except (AddressError, ValueError, IndexError):
            raise ConnectionError(f"cannot follow the redirect {str(r)!r}") from None
        if r.kind not in ("CLUSTERDOWN", "TRYAGAIN", "TIMEOUT") or time.monotonic() > deadline:
            raise ConnectionError(f"{show(addr)} refused the probe SET: {r}")
        await asyncio.sleep(0.1)


# ---- blocking ------------------------------------------------------------------------

class Connection:
    """A blocking connection for synchronous callers.  send() and reply()
    apart let a caller pipeline: send many, then read as many replies."""

    def __init__(self, addr: Target, timeout: float = 10.0) -> None:
        a = address(addr)
        if a.scheme == "tcp":
            self.sock = socket.create_connection((a.host, a.port), timeout=timeout)
            if a.tls:
                tls = _tls_args(a)
                self.sock = tls["ssl"].wrap_socket(self.sock, server_hostname=a.host)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(a.path)
            except OSError:
                self.sock.close()
                raise
        self.parser = RespReplyParser()
        if _password is not None:
            try:
                _check_auth(self.call("AUTH", _password))
            except BaseException:
                self.sock.close()
                raise

    def send(self, *args: bytes | str | int) -> None:
        self.sock.sendall(encode_command(*args))

    def send_raw(self, data: bytes) -> None:
        """Requests encoded by the caller (e.g. many at once)."""
        self.sock.sendall(data)

    def reply(self) -> Reply:
        """The next decoded reply; ConnectionError if the server closes first."""
        while (r := self.parser.take()) is INCOMPLETE:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.parser.feed(data)
        return r

    def call(self, *args: bytes | str | int) -> Reply:
        self.send(*args)
        return self.reply()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def call_sync(addr: Target, *args: bytes | str | int, timeout: float = 10.0) -> Reply:
    """call() for synchronous callers: one command on a fresh connection."""
    with Connection(addr, timeout) as c:
        return c.call(*args)


def info_sync(addr: Target, section: str = "raft",
              timeout: float = 5.0) -> dict[str, str] | None:
    """info() for synchronous callers: a dict, or None if the node does not answer one."""
    try:
        reply = call_sync(addr, "INFO", section, timeout=timeout)
    except (OSError, ValueError):
        return None
    return parse_info(reply) if isinstance(reply, bytes) else None
