"""Addresses as URLs, and listening/dialing on them.

    tcp://HOST:PORT            HOST is an IPv4 literal, a hostname or [IPv6]
    tls://HOST:PORT            the same, the connection wrapped in TLS
    unix:///absolute/path.sock

Peer traffic and clients use the same forms, so the node, the transport and
the cluster launcher all parse and bind through this module.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import asyncio

__all__ = ["Address", "AddressError", "AddressInUse", "parse_address",
           "create_server", "open_connection", "set_nodelay", "set_peer_liveness"]

# sun_path is 108 bytes on Linux, one of them the terminating NUL.
UNIX_PATH_MAX: int = 107

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_WILDCARDS = ("0.0.0.0", "::")


class AddressError(ValueError):
    """A URL that is not a usable address; the message names it and says why."""

    def __init__(self, url: object, why: str) -> None:
        super().__init__(f"bad address {url!r}: {why}")
        self.url = url
        self.why = why


class AddressInUse(OSError):
    """Something already listens on the address."""


class Address:
    """A parsed URL: scheme "tcp" with host and port, or "unix" with path.
    A tls:// URL is a "tcp" Address with tls set: everything about the
    socket is TCP's, and whoever listens or dials wraps it in TLS."""

    __slots__ = ("scheme", "host", "port", "path", "tls")
    scheme: str
    host: str | None
    port: int | None
    path: str | None
    tls: bool

    def __init__(self, scheme: str, host: str | None = None, port: int | None = None,
                 path: str | None = None, tls: bool = False) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path
        self.tls = tls

    @property
    def is_wildcard(self) -> bool:
        return self.scheme == "tcp" and self.host in _WILDCARDS

    @property
    def is_unix(self) -> bool:
        return self.scheme == "unix"

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = cast(str, self.host)  # a tcp Address always has host and port
        host = f"[{host}]" if ":" in host else host
        return f"{'tls' if self.tls else 'tcp'}://{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Address({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Address) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def parse_address(url: str | Address) -> Address:
    """Parse `url` into an Address, or raise AddressError saying what is wrong."""
    if isinstance(url, Address):
        return url
    if not isinstance(url, str):
        raise AddressError(url, "not a string")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise AddressError(url, "expected tcp://HOST:PORT, tls://HOST:PORT or "
                                "unix:///absolute/path.sock")
    if scheme == "unix":
        return _parse_unix(url, rest)
    if scheme in ("tcp", "tls"):
        return _parse_tcp(url, rest, scheme)
    raise AddressError(url, f"unknown scheme {scheme!r} (use tcp, tls or unix)")


def _parse_unix(url: str, path: str) -> Address:
    if not path.startswith("/"):
        raise AddressError(url, "a unix socket path must be absolute (unix:///dir/name.sock)")
    if "\0" in path:
        raise AddressError(url, "the path contains a NUL byte")
    if path.endswith("/"):
        raise AddressError(url, "the path names a directory, not a socket file")
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise AddressError(url, f"the path is longer than {UNIX_PATH_MAX} bytes, "
                                "the limit for unix sockets")
    return Address("unix", path=path)


def _parse_tcp(url: str, rest: str, scheme: str = "tcp") -> Address:
    if any(c in rest for c in "/?#@"):
        raise AddressError(url, f"only HOST:PORT may follow {scheme}:// (no path, query or "
                                "user)")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise AddressError(url, "unclosed '[' in an IPv6 host")
        host, tail = rest[1:end], rest[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(url, f"{host!r} is not an IPv6 address") from None
        if not tail.startswith(":"):
            raise AddressError(url, "missing :PORT")
        port_s = tail[1:]
    else:
        host, sep, port_s = rest.rpartition(":")
        if not sep:
            raise AddressError(url, "missing :PORT")
        if ":" in host:
            raise AddressError(url, f"an IPv6 host must be in brackets: {scheme}://[::1]:PORT")
        if not host:
            raise AddressError(url, "missing host")
        _check_host(url, host)
    if not port_s.isdigit() or not port_s.isascii():
        raise AddressError(url, f"port {port_s!r} is not a number")
    port = int(port_s)
    if port > 65535:
        raise AddressError(url, f"port {port} is out of range (0-65535)")
    return Address("tcp", host=host, port=port, tls=scheme == "tls")


def _check_host(url: str, host: str) -> None:
    # All-digit dotted names must be IPv4 literals; 300.1.1.1 is a typo, not a hostname.
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise AddressError(url, f"{host!r} is not an IPv4 address") from None
        return
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise AddressError(url, f"{host!r} is not a valid hostname")


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn off Nagle on a TCP transport: Raft frames are latency-bound."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the connection may already be gone; nothing to tune then


# A peer's host can vanish without a word (a pulled cable, a dead switch
# port, a partition): TCP then retransmits at a doubling interval, and a
# link that comes back is used again only at the next retransmission, which
# after a one-minute cut is some twenty seconds later.  Data left unacknowledged
# for PEER_USER_TIMEOUT_MS ends the connection instead, and the dialer
# redials at its own pace.  The accepting end only reads, so it finds a dead
# connection by keepalive probes.  A peer that is alive but stopped (a paused
# process) still has its kernel acknowledge both, and keeps its connections.
PEER_USER_TIMEOUT_MS = 5000
PEER_KEEPALIVE_IDLE_S = 5
PEER_KEEPALIVE_INTERVAL_S = 2
PEER_KEEPALIVE_PROBES = 3


def set_peer_liveness(transport: asyncio.BaseTransport) -> None:
    """Have the kernel end a TCP peer connection whose other end went
    silent (TCP_USER_TIMEOUT and keepalive), where the platform has them."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_USER_TIMEOUT", PEER_USER_TIMEOUT_MS),
                        ("TCP_KEEPIDLE", PEER_KEEPALIVE_IDLE_S),
                        ("TCP_KEEPINTVL", PEER_KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", PEER_KEEPALIVE_PROBES)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    try:
        for level, option, value in options:
            sock.setsockopt(level, option, value)
    except OSError:
        pass  # the connection may already be gone; nothing to tune then


def is_local_peer(transport: asyncio.BaseTransport) -> bool:
    """The other end of this connection is on this machine: a Unix socket,
    or TCP from a loopback address (IPv4-mapped IPv6 included).  Unknown
    counts as not local."""
    if isinstance(transport.get_extra_info("sockname"), (str, bytes)):
        return True  # AF_UNIX: its address is a path
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return False
    try:
        ip = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


async def create_server(loop: asyncio.AbstractEventLoop, addr: str | Address,
                        protocol_factory: Callable[[], asyncio.BaseProtocol],
                        unix_mode: int = 0o600, **kwargs: Any) -> asyncio.AbstractServer:
    """Listen on `addr` (Address or URL); returns the asyncio Server.

    For unix addresses an existing socket file is removed only when
    connecting to it is refused (a killed process left it behind); if
    something answers, AddressInUse is raised and the file is left alone.
    The socket file gets unix_mode (connecting takes write permission, so
    0600: only this user).
    """
    addr = parse_address(addr)
    if addr.scheme == "tcp":
        try:
            return await loop.create_server(protocol_factory, addr.host, addr.port, **kwargs)
        except OSError as e:
            raise _bind_error(addr, e) from e
    sock = _bind_unix(addr, unix_mode)
    try:
        return await loop.create_unix_server(protocol_factory, sock=sock, **kwargs)
    except BaseException:
        sock.close()
        raise


def _bind_error(addr: Address, e: OSError) -> OSError:
    if e.errno == errno.EADDRINUSE:
        return AddressInUse(errno.EADDRINUSE, f"address in use: {addr}")
    return OSError(e.errno, f"cannot listen on {addr}: {e.strerror or e}")


def _bind_unix(addr: Address, mode: int) -> socket.socket:
    # Bind the socket ourselves: loop.create_unix_server(path=...) deletes any
    # socket file at the path unconditionally, even one a live node listens on.
    path = cast(str, addr.path)  # a unix Address always has a path
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(path)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise _bind_error(addr, e) from e
            _remove_if_stale(addr)
            try:
                sock.bind(path)
            except OSError as e2:
                raise _bind_error(addr, e2) from e2
        os.chmod(path, mode)  # before listen(): nobody else connects meanwhile
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def _remove_if_stale(addr: Address) -> None:
    path = cast(str, addr.path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # gone in the meantime; the retried bind will tell
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressInUse(errno.EADDRINUSE,
                           f"address in use: {addr} (the path exists and is not a socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a stale file from a killed process
        return
    except OSError as e:
        # Anything but "refused" (a full backlog, a timeout) may mean a live owner.
        raise AddressInUse(errno.EADDRINUSE, f"address in use: {addr} ({e})") from e
    finally:
        probe.close()
    raise AddressInUse(errno.EADDRINUSE,
                       f"address in use: {addr} (another process is listening on it)")


async def open_connection(loop: asyncio.AbstractEventLoop, addr: str | Address,
                          protocol_factory: Callable[[], asyncio.BaseProtocol],
                          **kwargs: Any) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """Dial `addr` (Address or URL); returns (transport, protocol)."""
    addr = parse_address(addr)
    if addr.scheme == "tcp":
        transport, protocol = await loop.create_connection(
            protocol_factory, cast(str, addr.host), cast(int, addr.port), **kwargs)
        set_nodelay(transport)
        return transport, protocol
    return await loop.create_unix_connection(protocol_factory, addr.path, **kwargs)
