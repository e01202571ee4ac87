"""Which address each peer is dialed at, as the membership changes.

The configuration in the log names every member's address; --peer flags
name some too, and a flag always wins (an operator's word over data that
came through the log).  Refreshed whenever the configuration or the leader
changes, before anything is sent to a new member.
"""
import logging

from raftfast.address import AddressError

__all__ = ["PeerAddresses"]

log = logging.getLogger("raftfast.driver")


class PeerAddresses:
    """transport: set_address(node_id, url or None), dialed_ids().
    flag_peers: node id -> URL given with --peer."""

    __slots__ = ("transport", "flag_peers", "conf_version", "leader_id")

    def __init__(self, transport, flag_peers):
        self.transport = transport
        self.flag_peers = flag_peers
        # What the addresses were last derived from; the Ready loop compares
        # the core's against these to know when to refresh.
        self.conf_version = -1
        self.leader_id = -1

    def stale(self, core):
        return core.conf_version != self.conf_version or core.leader_id != self.leader_id

    def refresh(self, core):
        """Dial every member at the address the configuration names for it,
        unless --peer names one, and forget the addresses of ids that are
        neither members, --peer'd, nor the leader.  The leader is kept even
        outside the configuration: a leader removing itself leads until
        that change commits, and its followers must still answer it."""
        transport, flags = self.transport, self.flag_peers
        self.conf_version = core.conf_version
        self.leader_id = core.leader_id
        members = core.voters | core.learners
        urls = core.urls
        for nid in members:
            url = urls.get(nid)
            if nid == core.id or nid in flags or not url:
                continue
            try:
                transport.set_address(nid, url)
            except AddressError as e:
                # A configuration from the log is data: a bad address in it
                # must not stop the node; that member just cannot be dialed.
                log.warning("member %d: cannot dial it: %s", nid, e)
        for nid in transport.dialed_ids():
            if nid not in members and nid not in flags and nid != core.leader_id:
                transport.set_address(nid, None)
        for nid in members:
            if nid != core.id:
                # Open the connection now: the first message to a member
                # would otherwise open it and be dropped, and a candidate
                # whose vote requests to new members are dropped loses the
                # election (a leadership transfer to a node just added).
                transport.dial_ahead(nid)
