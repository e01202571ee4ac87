"""The two kinds of peer connection and their handshakes.

A DialedConnection is the one this node opened to a peer: it writes this
node's HANDSHAKE, waits for the HANDSHAKE_ACK (the only frame it ever
reads), then carries this node's messages.  An AcceptedConnection is one a
peer opened: it waits for the peer's HANDSHAKE, answers with the chosen
protocol version, then only receives, handing each message over in
arrival order.  A connection that fails a check is closed and logged; the
node keeps serving.

Both are driven by the PeerTransport that owns them (raftfast.runtime.
transport), through these of its members:
    loop, node_id, cluster_id, client_url, max_frame_size, write_buffer_limit,
    log, hello (this node's encoded HANDSHAKE), closed, on_messages,
    on_peer_state, listen_address, and its counters frames_received,
    bytes_received, reads and refused;
    attach_dialed(peer, conn), dialed_ready(peer, conn, version),
    dialed_lost(peer, conn, exc), attach_accepted(conn),
    detach_accepted(conn), learn_client_url(node_id, url).
"""
from raftfast._codec import (FRAME_HANDSHAKE, FRAME_HANDSHAKE_ACK, FRAME_MESSAGE, PROTOCOL_MAX,
                             PROTOCOL_MIN, FrameDecoder, FrameError, choose_version,
                             encode_handshake_ack)
from raftfast.address import set_nodelay

__all__ = ["AcceptedConnection", "DialedConnection", "HANDSHAKE_MAX_FRAME", "HANDSHAKE_TIMEOUT"]

# Dial plus handshake; also how long an accepted connection may stay silent
# before its handshake.  Generous: a peer under load may be slow to answer.
HANDSHAKE_TIMEOUT = 5.0
# Before its handshake is accepted a connection may send only small frames:
# a stranger must not make us buffer a 64 MiB "handshake".
HANDSHAKE_MAX_FRAME = 160 << 10  # room for a cluster id and a 64 KiB client URL


class DialedConnection:
    """The connection this node dialed: sends, and reads only the ack."""

    __slots__ = ("owner", "peer", "transport", "decoder", "acked", "paused", "timer",
                 "failure")

    def __init__(self, owner, peer):
        self.owner = owner
        self.peer = peer
        self.transport = None
        self.decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)  # it only ever reads the ack
        self.acked = False
        self.paused = False
        self.timer = None
        self.failure = None

    def connection_made(self, transport):
        self.transport = transport
        owner = self.owner
        if not owner.attach_dialed(self.peer, self):
            transport.abort()  # reset or closed while dialing
            return
        set_nodelay(transport)
        transport.set_write_buffer_limits(high=owner.write_buffer_limit)
        transport.write(owner.hello)
        self.timer = owner.loop.call_later(HANDSHAKE_TIMEOUT, self._fail, "no handshake ack")

    def _fail(self, why):
        self.failure = why
        self.transport.abort()

    def data_received(self, data):
        self.decoder.feed(data)
        try:
            frame = self.decoder.next()
        except FrameError as e:
            return self._fail(f"bad frame: {e}")
        if frame is None:
            return
        owner = self.owner
        ftype, hs = frame
        if self.acked or ftype != FRAME_HANDSHAKE_ACK:
            return self._fail("sent something other than one handshake ack")
        if hs.cluster_id != owner.cluster_id:
            return self._fail(f"it belongs to cluster {hs.cluster_id!r}, "
                              f"not {owner.cluster_id!r}")
        if hs.node_id != self.peer.id:
            return self._fail(f"it is node {hs.node_id}, not {self.peer.id}")
        if not PROTOCOL_MIN <= hs.min_version <= PROTOCOL_MAX:
            return self._fail(f"it chose protocol v{hs.min_version}, "
                              f"we speak v{PROTOCOL_MIN}..v{PROTOCOL_MAX}")
        self.timer.cancel()
        self.acked = True
        owner.learn_client_url(hs.node_id, hs.client_url)
        owner.dialed_ready(self.peer, self, hs.min_version)

    def pause_writing(self):
        self.paused = True
        self.peer.writable = False
        owner = self.owner
        if self.acked and self.peer.proto is self and owner.on_peer_state is not None:
            owner.on_peer_state(self.peer.id, False, False)

    def resume_writing(self):
        self.paused = False
        if self.acked and self.peer.proto is self:
            self.peer.writable = True
            owner = self.owner
            if owner.on_peer_state is not None:
                owner.on_peer_state(self.peer.id, True, False)

    def eof_received(self):
        return None  # the transport closes itself (no asyncio.Protocol base to say so)

    def connection_lost(self, exc):
        if self.timer is not None:
            self.timer.cancel()
        self.owner.dialed_lost(self.peer, self, exc)


class AcceptedConnection:
    """A connection a peer dialed to us: handshake, then receive only."""

    __slots__ = ("owner", "transport", "decoder", "peer_id", "timer", "who")

    def __init__(self, owner):
        self.owner = owner
        self.transport = None
        self.decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        self.peer_id = 0
        self.timer = None
        self.who = "?"

    def connection_made(self, transport):
        self.transport = transport
        owner = self.owner
        if not owner.attach_accepted(self):
            transport.abort()
            return
        set_nodelay(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
            self.who = f"{host}:{peer[1]}"
        else:
            self.who = f"a unix socket client on {owner.listen_address}"
        self.timer = owner.loop.call_later(HANDSHAKE_TIMEOUT, self._refuse,
                                           f"no handshake within {HANDSHAKE_TIMEOUT:g} s")

    def _refuse(self, why):
        owner = self.owner
        owner.refused += 1
        who = f"node {self.peer_id} ({self.who})" if self.peer_id else self.who
        owner.log.warning("closed peer connection from %s: %s", who, why)
        self.transport.abort()

    def data_received(self, data):
        owner = self.owner
        owner.reads += 1
        owner.bytes_received += len(data)
        decoder = self.decoder
        decoder.feed(data)
        msgs = []
        try:
            while not self.transport.is_closing():
                try:
                    frame = decoder.next()
                except FrameError as e:
                    return self._refuse(f"bad frame: {e}")
                if frame is None:
                    return
                ftype, obj = frame
                if ftype == FRAME_MESSAGE and self.peer_id:
                    if obj.frm != self.peer_id:
                        return self._refuse(f"message from {obj.frm} on node "
                                            f"{self.peer_id}'s connection")
                    obj.to = owner.node_id
                    owner.frames_received += 1
                    msgs.append(obj)
                elif ftype == FRAME_HANDSHAKE and not self.peer_id:
                    if not self._accept(obj):
                        return
                elif ftype == FRAME_MESSAGE:
                    return self._refuse("message before the handshake")
                else:
                    return self._refuse(f"unexpected frame type {ftype} after the handshake"
                                        if self.peer_id else
                                        f"frame type {ftype} where a handshake was expected")
        finally:
            # The read's messages in arrival order, also those before a
            # frame that closed the connection: they were well formed.
            if msgs:
                owner.on_messages(msgs)

    def _accept(self, hs):
        owner = self.owner
        if hs.cluster_id != owner.cluster_id:
            self._refuse(f"node {hs.node_id} is from cluster {hs.cluster_id!r}, "
                         f"not {owner.cluster_id!r}")
            return False
        version = choose_version(hs.min_version, hs.max_version)
        if version is None:
            self._refuse(f"node {hs.node_id} speaks protocol v{hs.min_version}..v"
                         f"{hs.max_version}, we speak v{PROTOCOL_MIN}..v{PROTOCOL_MAX}")
            return False
        if hs.node_id == owner.node_id:
            self._refuse(f"the peer claims our own node id {hs.node_id}")
            return False
        self.timer.cancel()
        self.peer_id = hs.node_id
        self.decoder.set_max_frame_size(owner.max_frame_size)
        owner.learn_client_url(hs.node_id, hs.client_url)
        self.transport.write(encode_handshake_ack(owner.cluster_id, owner.node_id, version,
                                                  owner.client_url))
        owner.log.debug("accepted node %d from %s (protocol v%d)", hs.node_id, self.who, version)
        return True

    def pause_writing(self):
        pass  # it writes only its handshake ack

    def resume_writing(self):
        pass

    def eof_received(self):
        return None  # the transport closes itself (no asyncio.Protocol base to say so)

    def connection_lost(self, exc):
        if self.timer is not None:
            self.timer.cancel()
        self.owner.detach_accepted(self)
