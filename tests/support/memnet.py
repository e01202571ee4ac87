"""Peers on one FakeLoop: the transport side of in-memory runtime tests.

Every message goes through the peer codec (encoded, then decoded, as on
the wire, so no two nodes ever share a message object) and arrives
`latency` simulated seconds later, in order per link, unless the test's
`drop(msg)` says it is lost; the test's `alter(msg)` may change it on the
way.  A node that is not on the net is
unreachable: send() returns False, as a transport with no connection does.
"""
from raftfast._codec import FRAME_MESSAGE, FrameDecoder, encode_message

__all__ = ["MemNet", "MemTransport"]


class MemNet:
    def __init__(self, loop, latency=0.001):
        self.loop = loop
        self.latency = latency
        self.nodes = {}      # node id -> receive(msgs) (a driver's step_read)
        self.drop = None     # drop(msg) -> True: lost on the way
        self.alter = None    # alter(msg): changes it in flight
        self.delivered = 0
        self.dropped = 0

    def transport(self, node_id):
        return MemTransport(self, node_id)

    def attach(self, node_id, receive):
        self.nodes[node_id] = receive

    def detach(self, node_id):
        self.nodes.pop(node_id, None)

    def carry(self, to, frame):
        if to not in self.nodes:
            return False
        decoder = FrameDecoder()
        decoder.feed(frame)
        ftype, msg = decoder.next()
        assert ftype == FRAME_MESSAGE
        msg.to = to
        if self.drop is not None and self.drop(msg):
            self.dropped += 1
            return True  # written; the network lost it
        if self.alter is not None:
            self.alter(msg)
        self.loop.call_later(self.latency, self._deliver, msg)
        return True

    def _deliver(self, msg):
        receive = self.nodes.get(msg.to)
        if receive is not None:
            self.delivered += 1
            receive([msg])  # one message per read


class AddressBook:
    """PeerTransport's address book alone: who is dialed, and at what URL."""

    def __init__(self, addresses=None):
        self.addresses = dict(addresses or {})
        self.dialed_ahead = set()  # ids dial_ahead() was asked to dial

    def set_address(self, node_id, url):
        if url is None:
            self.addresses.pop(node_id, None)
        else:
            self.addresses[node_id] = url

    def dialed_ids(self):
        return list(self.addresses)

    def dial_ahead(self, node_id):
        self.dialed_ahead.add(node_id)


class MemTransport(AddressBook):
    """The methods of runtime.transport.PeerTransport the driver calls."""

    def __init__(self, net, node_id):
        super().__init__()
        self.net = net
        self.node_id = node_id

    def send(self, msg):
        return self.net.carry(msg.to, encode_message(msg))

    def send_frame(self, to, frame):
        return self.net.carry(to, frame)

    def can_send(self, peer):
        return peer in self.net.nodes

    def peer_version(self, peer):
        return 2
