"""Real node processes for multi-process tests: start, kill, restart, and
ask each node over RESP what it knows.  Every process is ended by its PID.

Nodes start the way the launcher starts them (raftfast.launcher.supervisor:
the same command line, environment and child setup), synchronously."""
import os
import random
import signal
import socket
import subprocess

import redis

from raftfast.launcher.supervisor import NodeCommand, parse_ready, stop_processes
from raftfast.resp_client import RespError, call_sync, info_sync, leader_of, parse_info
from tests.support.wait import until


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def free_base_port(n):
    """A base port whose next n ports are free on 127.0.0.1 (racy, like any
    such probe): other clusters may run on this machine, e.g. on
    raftfast.cluster's default 7001..., so take a random range."""
    for _ in range(100):
        base = random.randrange(20000, 40000)
        socks = []
        try:
            for i in range(1, n + 1):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


class NodeProc:
    def __init__(self, cluster, node_id, extra_args=()):
        self.cluster = cluster
        self.id = node_id
        self.extra = list(extra_args)
        self.proc = None
        self.log_path = os.path.join(cluster.root, f"node{node_id}.log")

    @property
    def client_port(self):
        return self.cluster.client_ports[self.id]

    @property
    def client_addr(self):
        return f"127.0.0.1:{self.client_port}"

    def argv(self):
        """The node's whole command line (a subclass may build its own)."""
        c = self.cluster
        args = ["--id", str(self.id),
                "--data-dir", os.path.join(c.root, f"node{self.id}"),
                "--listen", c.peer_url(self.id),
                "--client", f"tcp://127.0.0.1:{self.client_port}",
                "--heartbeat-interval", str(c.heartbeat_ms),
                "--election-timeout", str(c.election_ms),
                "--fsync", c.fsync]
        for j in c.ids:
            if j != self.id:
                args += ["--peer", f"{j}={c.dial_url(self.id, j)}"]
        return NodeCommand.node(args + self.extra).line

    def start(self, wait_ready=True):
        """Start the node (stderr to its log), by default until its ready line."""
        with open(self.log_path, "ab") as logf:
            self.proc = NodeCommand(self.argv()).start(stdout=subprocess.PIPE, stderr=logf)
        if wait_ready:
            line = self.proc.stdout.readline()
            ready = parse_ready(line)
            if ready is None or ready.id != self.id:
                self.proc.wait(timeout=10)
                raise RuntimeError(f"node {self.id} did not start (exit {self.proc.returncode}):"
                                   f" {line!r}\n{self.log_tail()}")
        return self

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL):
        if self.alive():
            self.proc.send_signal(sig)
        if self.proc is not None:
            rc = self.proc.wait(timeout=15)
            self.proc.stdout.close()
            return rc
        return None

    def client(self, **kw):
        return redis.Redis(host="127.0.0.1", port=self.client_port, socket_timeout=10, **kw)

    def raw(self, *args):
        """Send one command on a fresh connection; the reply's first line as
        the node sent it (b"+OK", b"-MOVED 0 127.0.0.1:7001", b"$1"...)."""
        return reply_line(call_sync(self.client_addr, *args, timeout=10))

    def keys(self):
        """How many keys this node's state machine holds (INFO keyspace)."""
        db0 = parse_info(self.raw_bulk("INFO", "keyspace"))["db0"]
        return int(db0.split("keys=")[1].split(",")[0])

    def raw_bulk(self, *args):
        """One command whose reply is a bulk string, decoded."""
        return call_sync(self.client_addr, *args, timeout=10).decode()

    def info(self):
        """INFO raft as a dict of strings, or None if the node does not answer.
        Not through redis-py: it reshapes INFO values (it turns "1,2,3"
        into a list)."""
        return info_sync(self.client_addr, "raft", timeout=5)


def reply_line(reply):
    """The first line a decoded reply had on the wire."""
    if isinstance(reply, RespError):
        return b"-" + reply.encode()
    if isinstance(reply, str):
        return b"+" + reply.encode()
    if isinstance(reply, int):
        return b":%d" % reply
    if isinstance(reply, bytes):
        return b"$%d" % len(reply)
    if reply is None:
        return b"$-1"
    return b"*%d" % len(reply)


class Cluster:
    node_class = NodeProc  # a subclass may run its nodes another way

    def __init__(self, root, n=3, transport="unix", fsync="always", heartbeat_ms=50,
                 election_ms=500, extra_args=()):
        self.root = root
        self.ids = list(range(1, n + 1))
        self.transport = transport
        self.fsync = fsync
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        ports = free_ports(2 * n)
        self.client_ports = dict(zip(self.ids, ports[:n]))
        self.peer_ports = dict(zip(self.ids, ports[n:]))
        self.nodes = {i: self.node_class(self, i, extra_args) for i in self.ids}
        if transport == "tls":
            self.secure_peers()

    def peer_url(self, i):
        if self.transport == "unix":
            return f"unix://{self.root}/node{i}.sock"
        if self.transport == "tls":
            return f"tls://127.0.0.1:{self.peer_ports[i]}"
        return f"tcp://127.0.0.1:{self.peer_ports[i]}"

    def secure_peers(self):
        """Transport "tls": mutual TLS between peers (a private CA and a
        certificate per node in root/tls) and a cluster secret, as
        `raftfast.cluster --tls` runs them."""
        from raftfast.launcher import certs
        from raftfast.launcher.layout import ensure_secret
        d = os.path.join(self.root, "tls")
        os.makedirs(d, 0o700, exist_ok=True)
        ca = certs.make_ca(d)
        secret = ensure_secret(self.root)
        for i, node in self.nodes.items():
            cert, key = certs.issue(d, f"node{i}", ca, self.cert_hosts(i))
            node.extra += ["--peer-tls-cert-file", cert, "--peer-tls-key-file", key,
                           "--peer-tls-ca-cert-file", os.path.join(d, "ca.crt"),
                           "--cluster-secret-file", secret]

    def cert_hosts(self, i):
        """The addresses node i's peer certificate names: the hosts its
        peers dial it at."""
        return ("127.0.0.1", "localhost")

    def dial_url(self, src, dst):
        """What node `src` is told (`--peer`) to dial for node `dst`: `dst`'s
        own address here; a subclass may route the link through a proxy."""
        return self.peer_url(dst)

    def start(self):
        for node in self.nodes.values():
            node.start()
        return self

    def stop(self):
        """SIGTERM every running node, SIGKILL any still running after 15 s;
        {id: exit code}."""
        running = [n for n in self.nodes.values() if n.proc is not None]
        codes = stop_processes([n.proc for n in running], timeout=15)
        for node in running:
            node.proc.stdout.close()
            node.proc = None
        return {n.id: code for n, code in zip(running, codes)}

    def wait_leader(self, timeout=30, exclude=()):
        """The id of the leader every live node agrees on."""
        def agreed():
            infos = {i: n.info() for i, n in self.nodes.items() if n.alive() and i not in exclude}
            lid = leader_of(infos)
            if lid is None:
                return None
            term = infos[lid]["raft_current_term"]
            return lid if all(inf and inf.get("raft_leader_id") == str(lid)
                              and inf.get("raft_current_term") == term
                              for inf in infos.values()) else None
        def what():
            return "a leader every live node agrees on; their logs:\n" + "\n".join(
                f"--- node {i}\n{n.log_tail(15)}" for i, n in self.nodes.items())
        return until(agreed, what, timeout, 0.05)

    def wait_applied(self, index, ids=None, timeout=30):
        """Every node of `ids` (default: the live ones) applied up to index: their INFO."""
        ids = ids or [i for i, n in self.nodes.items() if n.alive()]
        seen = {}

        def applied():
            seen.update({i: self.nodes[i].info() for i in ids})
            if all(inf and int(inf["raft_last_applied"]) >= index for inf in seen.values()):
                return dict(seen)
            return None
        return until(applied, lambda: f"nodes {ids} to apply up to {index}: {seen}", timeout, 0.05)
