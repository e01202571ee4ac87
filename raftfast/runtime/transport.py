"""Peer transport: Raft messages over TCP and Unix sockets.

Messages are one-way, as in the Raft paper.  A node sends everything it
originates on the connection it dialed to that peer; connections it
accepted only receive.  So each direction of a link fails on its own, and
no reply is matched to a request.

Every connection opens with a handshake (cluster id, sender id, protocol
version range); the acceptor answers HANDSHAKE_ACK with the highest common
version (raftfast.runtime.peer_connections, the connections themselves).
An accepted connection that fails any check is logged and closed; the node
keeps serving.

Sending never queues without bound: until the dialed connection's handshake
is acknowledged, or while the socket is paused by flow control, messages
are dropped and counted.  Raft tolerates loss and the core retries.
"""
import asyncio
import os
import random

from raftfast._codec import PROTOCOL_MAX, encode_handshake, encode_message, message_version
from raftfast.address import Address, create_server, open_connection, parse_address
from raftfast.runtime.peer_auth import PeerSecrets
from raftfast.runtime.peer_connections import (HANDSHAKE_TIMEOUT, AcceptedConnection,
                                               DialedConnection)

__all__ = ["PeerTransport"]

BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
WRITE_BUFFER_LIMIT = 4 << 20


class _Peer:
    """The connection this node dials to one peer, and its retry state."""

    __slots__ = ("id", "addr", "proto", "writable", "task", "timer", "backoff",
                 "dialed", "failure", "version")

    def __init__(self, peer_id, addr):
        self.id = peer_id
        self.addr = addr
        self.proto = None       # its DialedConnection once connected
        self.writable = False   # acknowledged and not paused: the send fast path
        self.task = None        # the dial in progress
        self.timer = None       # the scheduled redial
        self.backoff = BACKOFF_MIN
        self.dialed = False
        # Why the last dial failed, as logged at info; the same reason again goes
        # to debug, a new one (refused, then a certificate rejected) to info.
        self.failure = None
        self.version = 0        # the protocol version its handshake ack chose


class PeerTransport:
    """This node's links to its peers: one listener for the connections
    peers dial, one dialed connection per peer for what this node sends."""

    def __init__(self, loop, node_id, cluster_id, on_messages, addresses, max_frame_size,
                 logger, *, client_url="", write_buffer_limit=WRITE_BUFFER_LIMIT, secret=None,
                 tls=None):
        """secret: the cluster secrets (peer_auth.PeerSecrets) every
        connection's handshake proves both ways (peer_connections), or None.  tls: the
        (listening, dialing) ssl contexts of mutual TLS for tls://
        addresses (raftfast.tls.peer_contexts), or None."""
        self.loop = loop
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.on_messages = on_messages  # (list of one read's messages, in order)
        self.max_frame_size = max_frame_size
        self.log = logger
        self.write_buffer_limit = write_buffer_limit
        self._addresses = {pid: parse_address(url) for pid, url in addresses.items()}
        self._peers = {}
        self._inbound = set()
        self._server = None
        self._unix_inode = None
        self.closed = False     # set once close() begins
        self.listen_address = None
        self.client_url = client_url
        # One secret as bytes is the same as PeerSecrets of it alone.
        self.secret = PeerSecrets([secret]) if isinstance(secret, bytes) else secret
        self.tls = tls
        # on_peer_state(peer_id, writable, lost): flow control for the
        # driver - a paused socket stops the sender before it has to drop,
        # and a lost connection means what was written may be gone.
        self.on_peer_state = None
        self._client_urls = {}  # node id -> advertised client URL from its handshake
        self.hello = encode_handshake(cluster_id, node_id, client_url=client_url)
        self.frames_sent = self.bytes_sent = self.frames_dropped = 0
        self.frames_received = self.bytes_received = 0
        self.reads = 0  # data_received calls on accepted peer connections
        self.dials = self.reconnects = 0
        self.accepted = self.refused = 0

    # ---- listening -------------------------------------------------------

    async def start(self, listen_url):
        """Listen for peers on listen_url.  With tcp port 0 the chosen port
        is in self.listen_address."""
        addr = parse_address(listen_url)
        extra = {"ssl": self._tls_for(addr)[0]} if addr.tls else {}
        self._server = await create_server(self.loop, addr, lambda: AcceptedConnection(self),
                                           **extra)
        if addr.is_unix:
            self._unix_inode = os.stat(addr.path).st_ino
        elif addr.port == 0:
            addr = Address("tcp", host=addr.host, port=self._server.sockets[0].getsockname()[1],
                           tls=addr.tls)
        self.listen_address = addr
        return addr

    async def close(self):
        """Stop listening, close every connection, cancel dials and timers."""
        self.closed = True
        if self._server is not None:
            self._server.close()
        tasks = []
        for peer in self._peers.values():
            tasks += self._reset_peer(peer)
        self._peers.clear()
        for proto in list(self._inbound):
            proto.transport.abort()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._unix_inode is not None:
            self._unlink_own_socket()
        # Let the aborted transports deliver connection_lost before returning.
        await asyncio.sleep(0)

    def _unlink_own_socket(self):
        path = self.listen_address.path
        try:
            # Only our own file: a successor may already listen at the path.
            if os.stat(path).st_ino == self._unix_inode:
                os.unlink(path)
        except FileNotFoundError:
            pass
        self._unix_inode = None

    # ---- sending ---------------------------------------------------------

    def send(self, msg):
        """Send msg to msg.to; returns False when it was dropped."""
        if msg.frm != self.node_id:
            # A wrong sender id would make the receiver drop the connection.
            raise ValueError(f"message from {msg.frm} sent by node {self.node_id}: {msg!r}")
        peer = self._peers.get(msg.to)
        if peer is not None and peer.writable:
            if message_version(msg.type) > peer.version:
                # An older peer could not decode it: never send it one.
                self.frames_dropped += 1
                return False
            # Encoded only once the peer can take it: a dropped message
            # (say a large append under back-pressure) costs no encoding.
            return self._write(peer, encode_message(msg))
        self._drop(msg.to, peer, 1)
        return False

    def send_frame(self, to, frame):
        """Send an already encoded frame (one AppendEntries, many followers)."""
        peer = self._peers.get(to)
        if peer is not None and peer.writable:
            return self._write(peer, frame)
        self._drop(to, peer, 1)
        return False

    def _write(self, peer, frame):
        """Write one frame to a writable peer and count it; False when the
        transport turned out to be closed."""
        try:
            peer.proto.transport.write(frame)
        except RuntimeError:
            return self._closed_under_us(peer, 1)
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        return True

    def send_many(self, msgs):
        """Send a batch with one writelines per peer; returns how many were sent."""
        by_peer = {}
        for m in msgs:
            if m.frm != self.node_id:
                raise ValueError(f"message from {m.frm} sent by node {self.node_id}: {m!r}")
            by_peer.setdefault(m.to, []).append(m)
        sent = 0
        for to, batch in by_peer.items():
            peer = self._peers.get(to)
            if peer is not None and peer.writable:
                if peer.version < PROTOCOL_MAX:
                    kept = [m for m in batch if message_version(m.type) <= peer.version]
                    self.frames_dropped += len(batch) - len(kept)
                    batch = kept
                frames = [encode_message(m) for m in batch]
                try:
                    peer.proto.transport.writelines(frames)
                except RuntimeError:
                    self._closed_under_us(peer, len(frames))
                    continue
                sent += len(frames)
                self.bytes_sent += sum(map(len, frames))
            else:
                self._drop(to, peer, len(batch))
        self.frames_sent += sent
        return sent

    def _closed_under_us(self, peer, n):
        # uvloop raises on a transport closed by a write error whose
        # connection_lost has not run yet; that callback will redial.
        peer.writable = False
        self.frames_dropped += n
        return False

    def _drop(self, to, peer, n):
        self.frames_dropped += n
        if self.closed:
            return
        if peer is None:
            addr = self._addresses.get(to)
            if addr is None:
                self.log.debug("no address for node %d: dropped %d message(s)", to, n)
                return
            peer = self._peers[to] = _Peer(to, addr)
        if peer.proto is None and peer.task is None and peer.timer is None:
            self._dial(peer)  # first use: dial lazily

    def can_send(self, node_id):
        """Whether a send to node_id would be written now, not dropped."""
        peer = self._peers.get(node_id)
        return peer is not None and peer.writable

    def is_connected(self, node_id):
        """The connection dialed to node_id is up and its handshake acknowledged."""
        peer = self._peers.get(node_id)
        return (peer is not None and peer.proto is not None and peer.proto.acked
                and not peer.proto.transport.is_closing())

    def peer_version(self, node_id):
        """The protocol version of the connection dialed to node_id, or 0
        while there is none (the snapshot transfer needs version 2)."""
        peer = self._peers.get(node_id)
        return peer.version if peer is not None and peer.proto is not None else 0

    def peer_client_url(self, node_id):
        """The client URL node_id advertised in its last handshake, or None."""
        return self._client_urls.get(node_id)

    def set_address(self, node_id, url):
        """Dial node_id at url from now on (None forgets it); an open
        connection to an old address is closed."""
        addr = None if url is None else parse_address(url)
        if self._addresses.get(node_id) == addr:
            return
        if addr is None:
            self._addresses.pop(node_id, None)
        else:
            self._addresses[node_id] = addr
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            self._reset_peer(peer)

    def dial_ahead(self, node_id):
        """Dial node_id now if it has an address and no connection yet."""
        if self.closed or node_id in self._peers:
            return
        addr = self._addresses.get(node_id)
        if addr is not None:
            peer = self._peers[node_id] = _Peer(node_id, addr)
            self._dial(peer)

    def dialed_ids(self):
        """The ids this transport has an address for (a copy)."""
        return list(self._addresses)

    def stats(self):
        return {
            "frames_sent": self.frames_sent, "bytes_sent": self.bytes_sent,
            "frames_received": self.frames_received, "bytes_received": self.bytes_received,
            "reads": self.reads,
            "frames_dropped": self.frames_dropped, "dials": self.dials,
            "reconnects": self.reconnects, "connections_accepted": self.accepted,
            "connections_refused": self.refused,
            "connected": sorted(p for p in self._peers if self.is_connected(p)),
        }

    # ---- dialing ---------------------------------------------------------

    def _dial(self, peer):
        peer.timer = None
        self.dials += 1
        if peer.dialed:
            self.reconnects += 1
        peer.dialed = True
        peer.task = self.loop.create_task(self._connect(peer))

    def _tls_for(self, addr):
        if self.tls is None:
            raise OSError(f"{addr}: a tls:// peer address, and this node has no peer TLS "
                          "certificates")
        return self.tls

    async def _connect(self, peer):
        try:
            addr = peer.addr
            extra = ({"ssl": self._tls_for(addr)[1], "server_hostname": addr.host}
                     if addr.tls else {})
            await asyncio.wait_for(
                open_connection(self.loop, addr, lambda: DialedConnection(self, peer), **extra),
                HANDSHAKE_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as e:
            peer.task = None
            self._dial_failed(peer, f"cannot connect: {e or 'timed out'}")
        else:
            peer.task = None

    def _dial_failed(self, peer, why):
        level = self.log.debug if why == peer.failure else self.log.info
        level("peer %d at %s: %s (retrying)", peer.id, peer.addr, why)
        peer.failure = why
        self._schedule_redial(peer)

    def _schedule_redial(self, peer):
        if self.closed or self._peers.get(peer.id) is not peer:
            return
        # Jitter keeps nodes that lost the same peer from redialing in lockstep.
        delay = random.uniform(peer.backoff / 2, peer.backoff)
        peer.backoff = min(peer.backoff * 2, BACKOFF_MAX)
        peer.timer = self.loop.call_later(delay, self._dial, peer)

    def _reset_peer(self, peer):
        """Close the peer's connection and stop retrying; returns tasks to await."""
        peer.writable = False
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None
        tasks = []
        if peer.task is not None:
            peer.task.cancel()
            tasks.append(peer.task)
            peer.task = None
        if peer.proto is not None:
            peer.proto.transport.abort()
            peer.proto = None
        return tasks

    # ---- for its connections (peer_connections) -----------------------------

    def attach_dialed(self, peer, proto):
        """proto connected to peer; False when the peer was reset or the
        transport closed while it dialed (proto then closes)."""
        if self.closed or self._peers.get(peer.id) is not peer or peer.proto is not None:
            return False
        peer.proto = proto
        return True

    def dialed_ready(self, peer, proto, version):
        peer.version = version
        peer.backoff = BACKOFF_MIN
        peer.failure = None
        peer.writable = not proto.paused
        if self.on_peer_state is not None:
            self.on_peer_state(peer.id, peer.writable, False)
        self.log.info("connected to peer %d at %s (protocol v%d)", peer.id, peer.addr, version)

    def dialed_lost(self, peer, proto, exc):
        if peer.proto is not proto:
            return  # an older connection, already replaced or reset
        peer.proto = None
        peer.writable = False
        if proto.acked and self.on_peer_state is not None:
            self.on_peer_state(peer.id, False, True)
        if proto.acked:
            self.log.info("lost connection to peer %d at %s%s", peer.id, peer.addr,
                          f": {exc}" if exc else "")
            self._schedule_redial(peer)
        else:
            self._dial_failed(peer, proto.failure or (
                "closed by the peer before its handshake ack (another cluster id or "
                "protocol version?)" if exc is None else f"connection lost: {exc}"))

    def attach_accepted(self, proto):
        """A peer connected; False once the transport is closing."""
        if self.closed:
            return False
        self._inbound.add(proto)
        self.accepted += 1
        return True

    def detach_accepted(self, proto):
        self._inbound.discard(proto)

    def accepted_from(self, node_id):
        """Node node_id just dialed us and passed the handshake: it is up.
        If our own dial to it is waiting out a backoff (it was down), dial
        now: the wait grows to BACKOFF_MAX, and a restarted node would hear
        nothing from this node for that long (several election timeouts),
        which holds up its catch-up and any leadership transfer to it."""
        peer = self._peers.get(node_id)
        if self.closed or peer is None or peer.timer is None:
            return
        peer.timer.cancel()
        peer.backoff = BACKOFF_MIN
        self._dial(peer)

    def learn_client_url(self, node_id, url):
        if not url or node_id not in self._addresses:
            # Only nodes we dial (configured peers, members) name where
            # clients go: a stranger's handshake must not steer MOVED, nor
            # grow this table one id at a time.
            return
        try:
            parse_address(url)
        except ValueError:
            # Not worth closing a working link over; MOVED just cannot name it.
            self.log.warning("node %d advertises a bad client address %r", node_id, url)
            return
        self._client_urls[node_id] = url
