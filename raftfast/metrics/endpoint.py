"""--metrics tcp://HOST:PORT: GET /metrics over HTTP/1.x, on the node's own
event loop.

Why on the loop and not in prometheus_client's server thread: the
collector reads state the loop changes (the core's progress per follower,
the log's indexes, the memory guard), and from the loop it reads all of it
between two passes, as one consistent picture; from a thread it could read
half a pass, or a dict while the loop resizes it.  A scrape costs a
millisecond or so, every few seconds, and only when someone scrapes.

What a stranger can do to the port: every connection gets one request of
at most MAX_REQUEST_BYTES, read within REQUEST_TIMEOUT_S, answered and
closed; a malformed one is answered 400 and closed, one too large or too
slow is closed; past MAX_CONNECTIONS at once, new ones are closed at once.
Nothing it sends reaches the rest of the node.
"""
import asyncio
import logging

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from raftfast.address import parse_address

__all__ = ["serve_metrics", "MetricsEndpoint", "MAX_REQUEST_BYTES", "REQUEST_TIMEOUT_S", "MAX_CONNECTIONS"]

log = logging.getLogger("raftfast.metrics")

MAX_REQUEST_BYTES = 8192   # a scraper's request line and headers fit many times over
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32


async def serve_metrics(loop, url, registry):
    """registry (prometheus_client's) served at url; the endpoint, to close
    when the node stops.  OSError when the address cannot be bound."""
    endpoint = MetricsEndpoint(loop, registry)
    log.info("serving metrics at %s", await endpoint.start(url))
    return endpoint


class MetricsEndpoint:
    """Serves registry (prometheus_client's) at /metrics."""

    def __init__(self, loop, registry):
        self.loop = loop
        self.registry = registry
        self.connections = set()
        self.scrapes = 0
        self.url = None  # once started: http://HOST:PORT/metrics, the port bound
        self._server = None

    async def start(self, url):
        """Listen at url (tcp://HOST:PORT); the URL scrapers use, with the
        port actually bound."""
        addr = parse_address(url)
        self._server = await self.loop.create_server(lambda: _MetricsRequest(self),
                                                     addr.host, addr.port)
        port = self._server.sockets[0].getsockname()[1]
        host = f"[{addr.host}]" if ":" in addr.host else addr.host
        self.url = f"http://{host}:{port}/metrics"
        return self.url

    async def close(self):
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.connections):
            conn.transport.abort()
        await self._server.wait_closed()
        self._server = None

    def response(self, request_line):
        """(status, body, Content-Length) for one request line (bytes); a
        HEAD gets the length of the body it is not sent."""
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _plain(400, b"Bad Request\n")
        method, target = parts[0], parts[1]
        if target.split(b"?", 1)[0] != b"/metrics":
            return _plain(404, b"Not Found: the metrics are at /metrics\n")
        if method not in (b"GET", b"HEAD"):
            return _plain(405, b"Method Not Allowed\n")
        try:
            body = generate_latest(self.registry)
        except Exception:
            log.exception("collecting metrics failed")
            return _plain(500, b"Internal Server Error\n")
        self.scrapes += 1
        return 200, (body if method == b"GET" else b""), len(body)


def _plain(status, text):
    return status, text, len(text)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


class _MetricsRequest(asyncio.Protocol):
    """One connection: one request, one answer, closed."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.transport = None
        self.buf = bytearray()
        self.timer = None
        self.answered = False

    def connection_made(self, transport):
        self.transport = transport
        endpoint = self.endpoint
        if len(endpoint.connections) >= MAX_CONNECTIONS:
            transport.abort()
            return
        endpoint.connections.add(self)
        self.timer = endpoint.loop.call_later(REQUEST_TIMEOUT_S, transport.abort)

    def connection_lost(self, exc):
        self.endpoint.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data):
        if self.answered:
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            end = self.buf.find(b"\n\n")  # a bare-LF client (nc, hand-typed)
        if end < 0:
            if len(self.buf) > MAX_REQUEST_BYTES:
                self.transport.abort()
            return
        if end > MAX_REQUEST_BYTES:
            self.transport.abort()
            return
        self.answered = True
        request_line = bytes(self.buf[:self.buf.find(b"\n")]).rstrip(b"\r")
        status, body, length = self.endpoint.response(request_line)
        ctype = CONTENT_TYPE_LATEST if status == 200 else "text/plain; charset=utf-8"
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()  # after what was written is sent
