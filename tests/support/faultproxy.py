"""A fault-injecting proxy for the directed peer links of a test cluster.

raftfast nodes send everything they originate on the connection they dialed
(docs/protocol.md), and `--peer ID=URL` says where a node dials.  So if node
i is started with `--peer j=<proxy listen address for link i->j>`, every
byte i sends to j crosses this proxy, and each direction of a node pair is
its own link that can fail on its own, as real networks do.

Per link the proxy can
  - `cut`: close the link's connections and close every new one at once
    (the dialer sees a reset and redials with backoff);
  - `blackhole`: keep accepting and reading, forward nothing either way
    (the dialer sees a silent peer: no handshake ack, no responses);
  - `delay(ms)`: forward every chunk `ms` after it arrived, in order;
  - `heal`: forward again, at once.

A blackhole drops bytes in the middle of a stream, which TCP never does: a
healed connection would hand the receiver half a frame.  So `heal` (or any
mode change away from blackhole) aborts the connections that lost bytes,
which is what a real stalled connection ends in (a timeout and a redial).

The proxy runs on its own thread with its own uvloop event loop, so it keeps
forwarding while the test thread blocks; the control methods are called from
the test thread and return once the change is in effect.
"""
import asyncio
import os
import threading
from dataclasses import dataclass, field

import uvloop

from raftfast.address import parse_address

__all__ = ["FaultProxy", "PASS", "CUT", "BLACKHOLE"]

PASS, CUT, BLACKHOLE = "pass", "cut", "blackhole"
CHUNK = 64 << 10
# Chunks queued per direction before the proxy stops reading: a delayed or
# slow link pushes back on the sender instead of buffering without bound.
QUEUE_CHUNKS = 64
UPSTREAM_CONNECT_TIMEOUT = 2.0


@dataclass
class LinkStats:
    accepted: int = 0          # connections accepted and relayed
    refused: int = 0           # connections closed at once because the link was cut
    aborted: int = 0           # live connections closed by cut or by healing a blackhole
    bytes_forwarded: int = 0
    bytes_dropped: int = 0     # swallowed by a blackhole


@dataclass(eq=False)
class _Link:
    src: int
    dst: int
    target: str                # the real --listen URL of dst
    listen: str = ""           # where src dials instead
    mode: str = PASS
    delay: float = 0.0         # seconds
    server: object = None
    relays: set = field(default_factory=set)
    stats: LinkStats = field(default_factory=LinkStats)


class _Relay:
    """One accepted connection and its upstream twin, pumped both ways."""

    def __init__(self, link, down, up):
        self.link = link
        self.writers = (down[1], up[1])
        self.lost_bytes = False   # a blackhole swallowed some: the stream is broken
        self.tasks = [asyncio.ensure_future(self._pump(down[0], up[1])),
                      asyncio.ensure_future(self._pump(up[0], down[1]))]

    async def _pump(self, reader, writer):
        """Read chunks, stamp each with its due time, write them in order."""
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue(QUEUE_CHUNKS)

        async def read():
            try:
                while chunk := await reader.read(CHUNK):
                    if self.link.mode == BLACKHOLE:
                        self.lost_bytes = True
                        self.link.stats.bytes_dropped += len(chunk)
                        continue
                    await queue.put((loop.time() + self.link.delay, chunk))
            except (ConnectionError, OSError):
                pass
            await queue.put(None)  # end of stream: the writer side ends the relay

        reading = asyncio.ensure_future(read())
        try:
            while (item := await queue.get()) is not None:
                due, chunk = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)  # the delay fault itself: bytes held by design
                if self.link.mode == BLACKHOLE:  # blackholed while it was in flight
                    self.lost_bytes = True
                    self.link.stats.bytes_dropped += len(chunk)
                    continue
                writer.write(chunk)
                self.link.stats.bytes_forwarded += len(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            reading.cancel()
            # Either side ending ends both: peer connections are never half-closed.
            self.abort()

    def abort(self):
        for w in self.writers:
            w.transport.abort()
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self.link.relays.discard(self)


class FaultProxy:
    """Proxies for directed links (src, dst), controlled from another thread.

    Use as a context manager, or call start() and stop().  `socket_dir` is
    where the listening sockets of Unix links go.
    """

    def __init__(self, socket_dir=None):
        self.socket_dir = socket_dir
        self._links = {}
        self._loop = None
        self._thread = None

    # -- lifecycle -------------------------------------------------------

    def start(self):
        self._loop = uvloop.new_event_loop()
        ready = threading.Event()
        self._loop.call_soon(ready.set)
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy",
                                        daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def stop(self):
        """Close every server and connection, stop the loop, join the thread."""
        if self._loop is None:
            return
        self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _call(self, coro):
        """Run `coro` on the proxy's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # -- links -----------------------------------------------------------

    def add_link(self, src, dst, target_url, port=0):
        """Start proxying link src->dst to `target_url`; returns the URL src
        must dial: a Unix socket in `socket_dir` for a Unix target, else
        127.0.0.1:`port` (0: any free port)."""
        link = _Link(src, dst, target_url)
        self._call(self._listen(link, port))
        self._links[src, dst] = link
        return link.listen

    def links(self):
        return sorted(self._links)

    def mode(self, src, dst):
        """'pass', 'cut', 'blackhole', or 'delay <ms>' for a delayed link."""
        link = self._links[src, dst]
        if link.mode == PASS and link.delay > 0:
            return f"delay {link.delay * 1e3:g}"
        return link.mode

    def stats(self, src, dst):
        return self._links[src, dst].stats

    def connections(self, src, dst):
        """How many connections the link relays right now."""
        return len(self._links[src, dst].relays)

    # -- faults on one link ----------------------------------------------

    def cut(self, src, dst):
        self._set(src, dst, CUT)

    def blackhole(self, src, dst):
        self._set(src, dst, BLACKHOLE)

    def delay(self, src, dst, ms):
        self._set(src, dst, PASS, ms / 1000.0)

    def heal(self, src, dst):
        self._set(src, dst, PASS, 0.0)

    def _set(self, src, dst, mode, delay=None):
        self._call(self._apply(self._links[src, dst], mode, delay))

    # -- faults on groups of links ---------------------------------------

    def heal_all(self):
        for src, dst in self._links:
            self.heal(src, dst)

    def nodes(self):
        return sorted({n for link in self._links for n in link})

    def partition(self, *groups):
        """Cut both directions between nodes of different groups; links
        inside a group are left as they are.  Nodes in no group form one
        more group of their own."""
        side = {n: g for g, members in enumerate(groups) for n in members}
        for src, dst in self._links:
            if side.get(src, -1) != side.get(dst, -1):
                self.cut(src, dst)

    def isolate(self, node):
        self.partition([node])

    def cut_one_way(self, sources, destinations):
        """Cut every link from a node in `sources` to one in `destinations`
        (the reverse direction keeps working)."""
        for src in sources:
            for dst in destinations:
                if src != dst and (src, dst) in self._links:
                    self.cut(src, dst)

    def links_of(self, node):
        """Every link into or out of `node`."""
        return [k for k in self._links if node in k]

    # -- on the proxy's loop ---------------------------------------------

    async def _listen(self, link, port):
        target = parse_address(link.target)

        async def on_accept(reader, writer):
            await self._accept(link, reader, writer)

        if target.scheme == "tcp":
            link.server = await asyncio.start_server(on_accept, "127.0.0.1", port)
            port = link.server.sockets[0].getsockname()[1]
            # A TLS target is relayed as bytes: its dialer still speaks TLS to the node.
            link.listen = f"{'tls' if target.tls else 'tcp'}://127.0.0.1:{port}"
        else:
            if self.socket_dir is None:
                raise ValueError("a unix link needs FaultProxy(socket_dir=...)")
            path = os.path.join(self.socket_dir, f"link-{link.src}-{link.dst}.sock")
            link.server = await asyncio.start_unix_server(on_accept, path)
            link.listen = f"unix://{path}"

    async def _accept(self, link, reader, writer):
        if link.mode == CUT:
            link.stats.refused += 1
            writer.transport.abort()
            return
        target = parse_address(link.target)
        try:
            if target.scheme == "tcp":
                opening = asyncio.open_connection(target.host, target.port)
            else:
                opening = asyncio.open_unix_connection(target.path)
            up = await asyncio.wait_for(opening, UPSTREAM_CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            writer.transport.abort()  # the node behind is down: so is the link
            return
        if link.mode == CUT:  # cut while we were dialing
            up[1].transport.abort()
            writer.transport.abort()
            link.stats.refused += 1
            return
        link.stats.accepted += 1
        link.relays.add(_Relay(link, (reader, writer), up))

    async def _apply(self, link, mode, delay):
        link.mode = mode
        if delay is not None:
            link.delay = delay
        for relay in list(link.relays):
            if mode == CUT or (mode != BLACKHOLE and relay.lost_bytes):
                link.stats.aborted += 1
                relay.abort()

    async def _close_all(self):
        for link in self._links.values():
            link.server.close()
            for relay in list(link.relays):
                relay.abort()
        for link in self._links.values():
            await link.server.wait_closed()
            if link.listen.startswith("unix://"):
                try:
                    os.unlink(link.listen[len("unix://"):])
                except FileNotFoundError:
                    pass
        # Every task left (the aborted pumps among them) ends before the loop stops.
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
