"""The two kinds of peer connection and their handshakes.

A DialedConnection is the one this node opened to a peer: it writes this
node's HANDSHAKE, waits for the HANDSHAKE_ACK (the only frame it ever
reads), then carries this node's messages.  An AcceptedConnection is one a
peer opened: it waits for the peer's HANDSHAKE, answers with the chosen
protocol version, then only receives, handing each message over in
arrival order.  A connection that fails a check is closed and logged; the
node keeps serving.

With a cluster secret (the owner's `secret`), both ends prove they hold it
before a message is read (raftfast.runtime.peer_auth): the HANDSHAKE
carries the dialer's nonce, the ACK the acceptor's nonce and proof, and
the dialer, once it has checked that proof, sends its own in an AUTH frame
ahead of its first message.  The acceptor takes no message, admits no
large frame and learns no client URL from a peer before its AUTH checks
out.  A node with a secret and one without cannot talk: the one without
answers plainly, and the one with refuses a peer that proves nothing -
unless its secrets are optional (--cluster-secret-optional), the step by
which a cluster without a secret gets one.

Both are driven by the PeerTransport that owns them (raftfast.runtime.
transport), through these of its members:
    loop, node_id, cluster_id, client_url, max_frame_size, write_buffer_limit,
    log, hello (this node's encoded HANDSHAKE without a secret), secret (its
    peer_auth.PeerSecrets, or None), closed, on_messages,
    on_peer_state, listen_address, and its counters frames_received,
    bytes_received, reads and refused;
    attach_dialed(peer, conn), dialed_ready(peer, conn, version),
    dialed_lost(peer, conn, exc), attach_accepted(conn),
    detach_accepted(conn), learn_client_url(node_id, url), accepted_from(node_id).
"""
from raftfast._codec import (FRAME_AUTH, FRAME_HANDSHAKE, FRAME_HANDSHAKE_ACK, FRAME_MESSAGE,
                             PROTOCOL_MAX, PROTOCOL_MIN, FrameDecoder, FrameError, choose_version,
                             encode_auth, encode_handshake, encode_handshake_ack)
from raftfast.address import set_nodelay, set_peer_liveness
from raftfast.runtime.peer_auth import DIALER, LISTENER, new_nonce

__all__ = ["AcceptedConnection", "DialedConnection", "HANDSHAKE_MAX_FRAME", "HANDSHAKE_TIMEOUT"]

# Dial plus handshake; also how long an accepted connection may stay silent
# before its handshake.  Generous: a peer under load may be slow to answer.
HANDSHAKE_TIMEOUT = 5.0
# Before its handshake is accepted a connection may send only small frames:
# a stranger must not make us buffer a 64 MiB "handshake".
HANDSHAKE_MAX_FRAME = 160 << 10  # room for a cluster id and a 64 KiB client URL
OURS = (PROTOCOL_MIN, PROTOCOL_MAX)  # the version range this node offers and proves


class DialedConnection:
    """The connection this node dialed: sends, and reads only the ack."""

    __slots__ = ("owner", "peer", "transport", "decoder", "acked", "paused", "timer",
                 "failure", "nonce")

    def __init__(self, owner, peer):
        self.owner = owner
        self.peer = peer
        self.transport = None
        self.decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)  # it only ever reads the ack
        self.acked = False
        self.paused = False
        self.timer = None
        self.failure = None
        self.nonce = None  # with a secret: this connection's, fresh

    def connection_made(self, transport):
        self.transport = transport
        owner = self.owner
        if not owner.attach_dialed(self.peer, self):
            transport.abort()  # reset or closed while dialing
            return
        set_nodelay(transport)
        set_peer_liveness(transport)
        transport.set_write_buffer_limits(high=owner.write_buffer_limit)
        if owner.secret is None:
            transport.write(owner.hello)
        else:
            self.nonce = new_nonce()
            transport.write(encode_handshake(owner.cluster_id, owner.node_id,
                                             client_url=owner.client_url, nonce=self.nonce))
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
        if owner.secret is None:
            if hs.proof is not None:
                return self._fail("it proves a cluster secret and this node has none")
        elif not self._prove(hs):
            return
        self.timer.cancel()
        self.acked = True
        owner.learn_client_url(hs.node_id, hs.client_url)
        owner.dialed_ready(self.peer, self, hs.min_version)

    def _prove(self, hs):
        """Check the acceptor's proof, then send ours; False once failed."""
        owner = self.owner
        secret = owner.secret
        if hs.proof is None:
            if secret.optional:
                owner.log.warning("peer %d at %s proves no cluster secret; let in because "
                                  "--cluster-secret-optional", self.peer.id, self.peer.addr)
                return True
            self._fail("it did not prove the cluster secret (it has none, or is of a "
                       "release before peer authentication)")
            return False
        theirs = hs.offered
        if not theirs[0] <= hs.min_version <= theirs[1]:
            self._fail(f"it chose protocol v{hs.min_version} outside its own "
                       f"v{theirs[0]}..v{theirs[1]}")
            return False
        binding = (owner.cluster_id, owner.node_id, self.peer.id, self.nonce, hs.nonce, OURS,
                   theirs)
        if not secret.accepts(LISTENER, hs.proof, *binding):
            self._fail("it failed to prove the cluster secret")
            return False
        ours = secret.prove(DIALER, *binding)
        # Ahead of any message: the acceptor reads nothing else before it.
        self.transport.write(encode_auth(hs.min_version, ours))
        return True

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

    __slots__ = ("owner", "transport", "decoder", "peer_id", "timer", "who", "proving")

    def __init__(self, owner):
        self.owner = owner
        self.transport = None
        self.decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        self.peer_id = 0
        self.timer = None
        self.who = "?"
        # With a secret, between our ACK and the peer's AUTH: (its
        # handshake, the chosen version, the proof it owes us).
        self.proving = None

    def connection_made(self, transport):
        self.transport = transport
        owner = self.owner
        if not owner.attach_accepted(self):
            transport.abort()
            return
        set_nodelay(transport)
        set_peer_liveness(transport)
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
                elif ftype == FRAME_HANDSHAKE and not self.peer_id and self.proving is None:
                    if not self._accept(obj):
                        return
                elif ftype == FRAME_AUTH and self.proving is not None:
                    if not self._proved(obj):
                        return
                elif ftype == FRAME_MESSAGE:
                    return self._refuse("message before the peer proved the cluster secret"
                                        if self.proving is not None else
                                        "message before the handshake")
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
        secret = owner.secret
        if secret is None or (hs.nonce is None and secret.optional):
            # A plain answer.  Without a secret this node lets in whoever
            # dials, and a dialer that wants a proof sees none and leaves; a
            # node in optional mode lets in a peer that proves nothing.
            if secret is not None:
                owner.log.warning("node %d (%s) proves no cluster secret; let in because "
                                  "--cluster-secret-optional", hs.node_id, self.who)
            self.transport.write(encode_handshake_ack(owner.cluster_id, owner.node_id, version,
                                                      owner.client_url))
            self._admit(hs, version)
            return True
        if hs.nonce is None:
            self._refuse(f"node {hs.node_id} did not prove the cluster secret (it has none, "
                         "or is of a release before peer authentication)")
            return False
        nonce = new_nonce()
        binding = (owner.cluster_id, hs.node_id, owner.node_id, hs.nonce, nonce,
                   (hs.min_version, hs.max_version), OURS)
        ours = secret.prove(LISTENER, *binding)
        self.proving = (hs, version, binding)
        self.transport.write(encode_handshake_ack(
            owner.cluster_id, owner.node_id, version, owner.client_url, offered=OURS,
            nonce=nonce, proof=ours))
        return True

    def _proved(self, dialer_proof):
        hs, version, binding = self.proving
        self.proving = None
        if not self.owner.secret.accepts(DIALER, dialer_proof, *binding):
            self._refuse(f"node {hs.node_id} failed to prove the cluster secret")
            return False
        self._admit(hs, version)
        return True

    def _admit(self, hs, version):
        """From here on the connection carries hs.node_id's messages."""
        owner = self.owner
        self.timer.cancel()
        self.peer_id = hs.node_id
        self.decoder.set_max_frame_size(owner.max_frame_size)
        owner.learn_client_url(hs.node_id, hs.client_url)
        owner.accepted_from(hs.node_id)
        owner.log.debug("accepted node %d from %s (protocol v%d)", hs.node_id, self.who, version)

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
