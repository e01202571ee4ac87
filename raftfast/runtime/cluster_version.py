"""The cluster version: the newest formats every member of the cluster reads.

A rolling upgrade runs nodes of two releases side by side, so a node of the
newer one must not write what the older cannot read (log entries, snapshot
files, configuration entries) until every member runs the newer release.
Each node knows the cluster version from its configuration (the members
file of a new data dir, then the configuration entries of its log and the
snapshot it starts from: core/messages.py, "configuration"), so every
member switches at the same log index, and a new leader inherits it.

The leader raises it, as etcd does, once every member has shown it speaks
the newer release: a peer connection at the peer protocol that release
introduced.  The raise is a configuration entry (same members, newer
version), so it commits like any membership change and no member can miss
it.  Until then a half-done upgrade can be rolled back: the older binaries
find nothing in the data dirs they cannot read.  After it, they cannot, and
the node refuses the data dir rather than misread it.

    cluster version  release  what it allows
    1                0.1.0    the first round's formats
    2                0.2.0    peer protocol 3 (forwarding), cluster time
                              (ENTRY_TIME), the KV commands after INCR,
                              RAFT.EXEC sessions, snapshot file format 2,
                              configuration format 2
"""
import logging

from raftfast.core import LEADER
from raftfast.core import ConfChangeBusy, ConfChangeInvalid, NotLeader, TransferInProgress

__all__ = ["CLUSTER_VERSION", "RELEASES", "PROTOCOL_INTRODUCED", "VersionWatch"]

CLUSTER_VERSION = 2             # the newest this build writes
RELEASES = {1: "0.1.0", 2: "0.2.0"}
# The peer protocol version whose release first read each cluster version's
# formats: a member connected at it (or later) runs such a release.
PROTOCOL_INTRODUCED = {2: 3}

log = logging.getLogger("raftfast.cluster_version")


class VersionWatch:
    """Per tick: tell the cluster clock whether cluster time may be written,
    and, on the leader, raise the cluster version once every member speaks
    this build's peer protocol.  Holds no state of its own that matters:
    the version lives in the core's configuration."""

    def __init__(self, core, transport, cluster_clock):
        self.core = core
        self.transport = transport
        self.cluster_clock = cluster_clock
        self.cluster_clock.enabled = core.cluster_version >= 2

    def tick(self):
        core = self.core
        version = core.cluster_version
        self.cluster_clock.enabled = version >= 2
        if version >= CLUSTER_VERSION or core.role != LEADER:
            return
        need = PROTOCOL_INTRODUCED[CLUSTER_VERSION]
        for peer in core.voters | core.learners:
            if peer != core.id and self.transport.peer_version(peer) < need:
                return
        try:
            index = core.propose_conf_change("version", 0, cluster_version=CLUSTER_VERSION)
        except (ConfChangeBusy, TransferInProgress, NotLeader, ConfChangeInvalid):
            return  # a membership change or transfer first; the next tick tries again
        self.cluster_clock.enabled = True
        log.info("every member speaks raftfast %s: cluster version %d -> %d at index %d",
                 RELEASES[CLUSTER_VERSION], version, CLUSTER_VERSION, index)
