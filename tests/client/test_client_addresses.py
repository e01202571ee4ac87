"""The clients on nodes that serve clients over Unix sockets (a follower
answers -NOTLEADER unix:///...) and over TLS (-MOVED names host:port, and
the client must keep speaking TLS to it)."""
import asyncio
import os
import shutil
import tempfile

import pytest

from raftfast import resp_client
from raftfast.client import AsyncClient, Client
from raftfast.launcher import certs
from raftfast.tls import dial_context
from tests.support.harness import Cluster, NodeProc


class ClientURLNode(NodeProc):
    """A harness node serving clients at `url` (unix:// or tls://) instead
    of tcp://127.0.0.1:<client port>."""

    def __init__(self, cluster, node_id, url, extra_args=()):
        super().__init__(cluster, node_id, extra_args)
        self.url = url

    @property
    def client_addr(self):
        return self.url

    def argv(self):
        line = super().argv()
        line[line.index("--client") + 1] = self.url
        return line


class ClientURLCluster(Cluster):
    def __init__(self, root, scheme):
        super().__init__(root)
        extra = []
        if scheme == "tls":
            d = os.path.join(root, "tls")
            os.makedirs(d, 0o700)
            ca = certs.make_ca(d)
            cert, key = certs.issue(d, "nodes", ca)
            self.ca_file = os.path.join(d, "ca.crt")
            extra = ["--tls-cert-file", cert, "--tls-key-file", key,
                     "--tls-ca-cert-file", self.ca_file, "--tls-auth-clients", "no"]
        urls = {i: (f"unix://{root}/c{i}.sock" if scheme == "unix"
                    else f"tls://127.0.0.1:{self.client_ports[i]}") for i in self.ids}
        self.nodes = {i: ClientURLNode(self, i, urls[i], extra) for i in self.ids}


@pytest.fixture
def url_cluster():
    made = []

    def make(scheme):
        c = ClientURLCluster(tempfile.mkdtemp(prefix="rf"), scheme)
        made.append(c)
        if scheme == "tls":    # how the harness itself asks the nodes (INFO)
            resp_client.use_tls(dial_context(c.ca_file))
        return c.start()

    yield make
    resp_client.use_tls(None)
    for c in made:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


def followers_first(c, leader):
    return [c.nodes[i].url for i in c.ids if i != leader] + [c.nodes[leader].url]


def test_unix_client_sockets_follow_notleader(url_cluster):
    c = url_cluster("unix")
    leader = c.wait_leader()
    assert c.nodes[next(i for i in c.ids if i != leader)].raw("GET", "k").startswith(
        b"-NOTLEADER unix://")
    with Client(followers_first(c, leader), timeout=20) as client:
        assert client.incr("n") == 1
        assert client.leader == c.nodes[leader].url
        target = next(i for i in c.ids if i != leader)
        client.execute_command("RAFT.TRANSFER_LEADER", target)
        assert c.wait_leader() == target
        assert client.incr("n") == 2
        assert client.leader == c.nodes[target].url


def test_tls_client_ports_redirect_to_tls(url_cluster):
    c = url_cluster("tls")
    leader = c.wait_leader()
    addrs = followers_first(c, leader)
    with Client(addrs, timeout=20, ssl_ca_certs=c.ca_file) as client:
        assert client.incr("n") == 1
        assert client.leader == c.nodes[leader].url      # tls://, from a MOVED host:port

    async def run_async():
        async with AsyncClient(addrs, timeout=20, ssl_ca_certs=c.ca_file) as aclient:
            assert await aclient.incr("n") == 2
            assert aclient.leader == c.nodes[leader].url
    asyncio.run(run_async())
