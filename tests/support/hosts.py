"""A harness Cluster whose nodes run as separate hosts would: node i on
host i of a HostNetwork (tests/support/netns.py), started with
`ip netns exec rf-<tag>-i python -m raftfast.node ...`, with the same
ports on every host, peers over mutual TLS at the host's own address with
a certificate naming only that address, the cluster secret, and clients
on every interface (`tcp://0.0.0.0:7001`) advertised at the host's address.

The test reaches a node's client port over the network, as a client on
another machine would (`client_addr`, `client()`, `raw()`), or from the
node's own host (`info()`, `on_host_call()`), which still works when the
host is cut off: the harness's waits (wait_leader, wait_applied) see every
live node, cut off or not.
"""
import redis

from raftfast.resp_client import call_sync, info_sync
from tests.support.harness import Cluster, NodeProc, reply_line

CLIENT_PORT = 7001
PEER_PORT = 7101


class HostNode(NodeProc):
    @property
    def net(self):
        return self.cluster.net

    @property
    def host(self):
        return self.net.addr(self.id)

    @property
    def client_addr(self):
        return f"{self.host}:{CLIENT_PORT}"

    @property
    def client_url(self):
        return f"tcp://{self.client_addr}"

    def argv(self):
        line = super().argv()
        line[line.index("--client") + 1] = f"tcp://0.0.0.0:{CLIENT_PORT}"
        return [*self.net.exec_prefix(self.id), *line, "--advertise-client", self.client_url]

    def client(self, **kw):
        kw.setdefault("socket_timeout", 10)
        kw.setdefault("socket_connect_timeout", 5)
        return redis.Redis(host=self.host, port=CLIENT_PORT, **kw)

    def info(self):
        """INFO raft asked on the node's own host, or None if it does not answer."""
        return self.net.on_host(self.id, info_sync, self.client_addr, "raft", timeout=5)

    def on_host_call(self, *args, timeout=10):
        """One command from a client on the node's own host: the decoded
        reply (a RespError for an error reply); OSError if none came."""
        return self.net.on_host(self.id, call_sync, self.client_addr, *args, timeout=timeout)

    def on_host_raw(self, *args, timeout=10):
        """on_host_call's reply as its first line on the wire (b"+OK", b"-MOVED ...")."""
        return reply_line(self.on_host_call(*args, timeout=timeout))


class HostCluster(Cluster):
    """n = net.n nodes, node i on host i; the harness's Cluster otherwise
    (start, stop, wait_leader, wait_applied)."""

    node_class = HostNode

    def __init__(self, root, net, heartbeat_ms=100, election_ms=1000, **kw):
        self.net = net
        super().__init__(root, n=net.n, transport="tls", heartbeat_ms=heartbeat_ms,
                         election_ms=election_ms, **kw)
        self.client_ports = {i: CLIENT_PORT for i in self.ids}
        self.peer_ports = {i: PEER_PORT for i in self.ids}

    def peer_url(self, i):
        return f"tls://{self.net.addr(i)}:{PEER_PORT}"

    def cert_hosts(self, i):
        return (self.net.addr(i),)

    def client_urls(self):
        return [self.nodes[i].client_url for i in self.ids]
