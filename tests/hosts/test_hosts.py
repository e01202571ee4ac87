"""Three nodes as three hosts: each node in a network namespace of its own
with its own address on one switch (tests/support/netns.py), peers over
mutual TLS with certificates naming each host's address and a cluster
secret, clients over TCP through the network (tests/support/hosts.py).

Skipped, with the reason, where the machine does not allow network
namespaces (not root, no `ip`, namespaces or veth links refused).  A cut
takes a host's switch port down: its packets are dropped without a
word, as with a pulled cable, so nothing is refused and every timeout is
the real one.  Every namespace and link is gone after each test, failed
or not (the `net` fixture checks it)."""
import shutil
import tempfile
import threading
import time

import pytest

from raftfast.client import Client
from raftfast.resp_client import RespError
from tests.support.hosts import HostCluster
from tests.support.netns import HostNetwork, Unavailable
from tests.support.wait import until

pytestmark = pytest.mark.multiprocess

# A host that vanishes sends no reset, only silence: an attempt on it
# costs the whole socket timeout, and a lost reply is retried on the same
# host once more (a connect timeout) before the client moves on, so both
# are kept well inside the call's deadline.
CLIENT_KW = dict(socket_timeout=2, socket_connect_timeout=2, timeout=30)


@pytest.fixture
def net():
    try:
        net = HostNetwork.create(3)
    except Unavailable as e:
        pytest.skip(f"three hosts need network namespaces: {e}")
    yield net
    net.close()
    assert net.leftovers() == [], "the hosts' network was not torn down"


@pytest.fixture
def hosts(net):
    """A started HostCluster on `net`; its nodes stopped by PID and its
    directory removed afterwards, before the network goes."""
    made = []

    def make(**kw):
        c = HostCluster(tempfile.mkdtemp(prefix="rf"), net, **kw)
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


def commit_index(node):
    return int(node.info()["raft_commit_index"])


def test_three_hosts_elect_a_leader_and_replicate_over_mutual_tls(hosts, net):
    c = hosts()
    leader = c.wait_leader()
    follower = next(i for i in c.ids if i != leader)
    # A follower sends a client to the leader's host, at its advertised address.
    assert c.nodes[follower].raw("SET", "k", "v") == \
        f"-MOVED 0 {net.addr(leader)}:7001".encode()
    with Client(c.client_urls(), **CLIENT_KW) as client:
        for k in range(100):
            assert client.set(f"k{k}", k)
        index = commit_index(c.nodes[leader])
        c.wait_applied(index)
        assert [c.nodes[i].keys() for i in c.ids] == [100, 100, 100]
        assert [int(client.get(f"k{k}")) for k in range(100)] == list(range(100))
    # Each host dialed the others at their own addresses.
    for i in c.ids:
        log = open(c.nodes[i].log_path).read()
        for j in c.ids:
            if j != i:
                assert f"connected to peer {j} at tls://{net.addr(j)}:7101" in log, log


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_a_host_cut_off_cannot_serve_writes_and_catches_up_once_healed(hosts, net, role):
    c = hosts()
    leader = c.wait_leader()
    cut = leader if role == "leader" else next(i for i in c.ids if i != leader)
    rest = [i for i in c.ids if i != cut]
    with Client(c.client_urls(), **CLIENT_KW) as client:
        for k in range(20):
            client.set(f"before{k}", k)
        net.cut(cut)
        # The two hosts left elect (or keep) a leader between them and take writes.
        majority_leader = c.wait_leader(exclude=[cut])
        assert majority_leader in rest
        for k in range(20):
            assert client.set(f"during{k}", k)
        # A client on the cut-off host gets no write served: once that host
        # knows it leads nobody (a cut leader steps down by CheckQuorum), it
        # answers at once, with an error.
        node = c.nodes[cut]
        until(lambda: node.info()["raft_role"] != "leader",
              f"host {cut}, cut off, to stop leading", 15)
        reply = node.on_host_call("SET", "lost", "x", timeout=5)
        assert isinstance(reply, RespError), reply
        assert reply.kind in ("CLUSTERDOWN", "MOVED", "TRYAGAIN"), reply
        assert isinstance(node.on_host_call("GET", "during0", timeout=5), RespError)
        index = commit_index(c.nodes[majority_leader])
        assert commit_index(node) < index
        # The leader notices the silence (nothing acknowledged for a few
        # seconds ends a peer connection) and redials, rather than wait for
        # TCP's ever longer retransmissions to find the host back.
        until(lambda: f"lost connection to peer {cut} at {c.peer_url(cut)}"
                      in open(c.nodes[majority_leader].log_path).read(),
              f"host {majority_leader} to give up its connection to host {cut}", 30, 0.1)
        net.heal(cut)
        # Healed, it follows the majority's leader and catches up.
        assert c.wait_leader(timeout=30) in rest
        c.wait_applied(index, timeout=30)
        assert [c.nodes[i].keys() for i in c.ids] == [40, 40, 40]
        assert client.get("lost") is None
        assert client.set("after", 1)


class Writer(threading.Thread):
    """SET w<n> n through one raftfast.Client, one at a time; `acked` holds
    every n the cluster acknowledged, `errors` every call that failed."""

    def __init__(self, urls):
        super().__init__(daemon=True)
        self.client = Client(urls, **CLIENT_KW)
        self.acked = []
        self.errors = []
        self.halt = threading.Event()
        self.longest_wait = 0.0   # the longest one write took, in seconds

    def run(self):
        n = 0
        while not self.halt.is_set():
            n += 1
            started = time.monotonic()
            try:
                if self.client.set(f"w{n}", n):
                    self.acked.append(n)
            except Exception as e:  # recorded; the test fails on any
                self.errors.append(f"w{n}: {e!r}")
            self.longest_wait = max(self.longest_wait, time.monotonic() - started)

    def wait_acked(self, more, what):
        target = len(self.acked) + more
        until(lambda: len(self.acked) >= target or self.errors,
              lambda: f"{more} more writes acknowledged {what} (have {len(self.acked)}, "
                      f"errors {self.errors})", 30)
        assert not self.errors, self.errors

    def stop(self):
        self.halt.set()
        self.join(30)
        self.client.close()
        assert not self.is_alive(), "the writer did not stop"


def test_a_client_follows_the_leader_across_hosts_through_a_cut(hosts, net):
    c = hosts()
    old = c.wait_leader()
    writer = Writer(c.client_urls())
    writer.start()
    try:
        writer.wait_acked(20, "before the cut")
        net.cut(old)
        new = c.wait_leader(exclude=[old])
        assert new != old
        writer.wait_acked(50, f"with the leader's host {old} cut off")
        assert writer.client.leader == c.nodes[new].client_url
        net.heal(old)
        writer.wait_acked(20, "after healing")
    finally:
        writer.stop()
    assert not writer.errors, writer.errors
    acked = writer.acked
    # Every acknowledged write is there, on every host, exactly once.
    index = commit_index(c.nodes[c.wait_leader()])
    c.wait_applied(index, timeout=30)
    assert [c.nodes[i].keys() for i in c.ids] == [len(acked)] * 3
    with Client(c.client_urls(), **CLIENT_KW) as client:
        values = client.mget([f"w{n}" for n in acked])
    assert [int(v) for v in values] == acked


class MisnamedCertCluster(HostCluster):
    """Host 3's peer certificate names 127.0.0.1, not its address."""

    def cert_hosts(self, i):
        return ("127.0.0.1",) if i == 3 else super().cert_hosts(i)


def test_a_host_whose_certificate_does_not_name_its_address_is_refused(net):
    c = MisnamedCertCluster(tempfile.mkdtemp(prefix="rf"), net)
    try:
        c.start()
        leader = c.wait_leader(exclude=[3])
        with Client([c.nodes[i].client_url for i in (1, 2)], **CLIENT_KW) as client:
            assert client.set("k", "v")
        index = commit_index(c.nodes[leader])
        c.wait_applied(index, ids=[1, 2])
        # Hosts 1 and 2 refuse to send anything to host 3, so it never learns
        # the write, and say why (first the port was closed: that host 3 had
        # not started yet is logged too, and a new reason must not hide behind it).
        for i in (1, 2):
            until(lambda: f"peer 3 at {c.peer_url(3)}: cannot connect: [SSL: "
                          "CERTIFICATE_VERIFY_FAILED]" in open(c.nodes[i].log_path).read(),
                  f"host {i} to log why it refused host 3's certificate", 15)
        assert int(c.nodes[3].info()["raft_last_applied"]) < index
        assert c.nodes[3].info()["raft_role"] != "leader"
    finally:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)
