"""Real node processes for multi-process tests: start, kill, restart, and
ask each node over RESP what it knows.  Every process is ended by its PID."""
import os
import random
import signal
import socket
import subprocess
import sys
import time

import redis


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

    def argv(self):
        c = self.cluster
        args = [sys.executable, "-m", "raftfast.node", "--id", str(self.id),
                "--data-dir", os.path.join(c.root, f"node{self.id}"),
                "--listen", c.peer_url(self.id),
                "--client", f"tcp://127.0.0.1:{self.client_port}",
                "--heartbeat-interval", str(c.heartbeat_ms),
                "--election-timeout", str(c.election_ms),
                "--fsync", c.fsync]
        for j in c.ids:
            if j != self.id:
                args += ["--peer", f"{j}={c.dial_url(self.id, j)}"]
        return args + self.extra

    def start(self, wait_ready=True):
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=logf,
                                     stdin=subprocess.DEVNULL)
        logf.close()
        if wait_ready:
            line = self.proc.stdout.readline().decode()
            if not line.startswith(f"ready id={self.id} "):
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
        """Send one command over a raw socket; returns the reply's first line."""
        req = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a), a) for a in (x if isinstance(x, bytes) else str(x).encode()
                                                    for x in args))
        with socket.create_connection(("127.0.0.1", self.client_port), timeout=10) as s:
            s.sendall(req)
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return buf.split(b"\r\n", 1)[0]

    def keys(self):
        """How many keys this node's state machine holds (INFO keyspace)."""
        line = [ln for ln in self.raw_bulk("INFO", "keyspace").splitlines() if ln.startswith("db0:")]
        return int(line[0].split("keys=")[1].split(",")[0])

    def raw_bulk(self, *args):
        req = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a), a) for a in (str(x).encode() for x in args))
        with socket.create_connection(("127.0.0.1", self.client_port), timeout=10) as s:
            s.sendall(req)
            buf = b""
            while b"\r\n" not in buf:
                buf += s.recv(65536)
            head, _, rest = buf.partition(b"\r\n")
            size = int(head[1:])
            while len(rest) < size + 2:
                rest += s.recv(65536)
        return rest[:size].decode()

    def info(self):
        """INFO raft as a dict of strings, or None if the node does not answer.
        Read over a raw socket: redis-py reshapes INFO values (it turns
        "1,2,3" into a list)."""
        try:
            with socket.create_connection(("127.0.0.1", self.client_port), timeout=5) as s:
                s.sendall(b"*2\r\n$4\r\nINFO\r\n$4\r\nraft\r\n")
                buf = b""
                while b"\r\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        return None
                    buf += chunk
                head, _, rest = buf.partition(b"\r\n")
                if not head.startswith(b"$"):
                    return None
                size = int(head[1:])
                while len(rest) < size + 2:
                    chunk = s.recv(65536)
                    if not chunk:
                        return None
                    rest += chunk
        except OSError:
            return None
        text = rest[:size].decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class Cluster:
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
        self.nodes = {i: NodeProc(self, i, extra_args) for i in self.ids}

    def peer_url(self, i):
        if self.transport == "unix":
            return f"unix://{self.root}/node{i}.sock"
        return f"tcp://127.0.0.1:{self.peer_ports[i]}"

    def dial_url(self, src, dst):
        """What node `src` is told (`--peer`) to dial for node `dst`: `dst`'s
        own address here; a subclass may route the link through a proxy."""
        return self.peer_url(dst)

    def start(self):
        for node in self.nodes.values():
            node.start()
        return self

    def stop(self):
        for node in self.nodes.values():
            if node.alive():
                node.proc.send_signal(signal.SIGTERM)
        codes = {}
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    codes[node.id] = node.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    codes[node.id] = node.proc.wait()
                node.proc.stdout.close()
                node.proc = None
        return codes

    def wait_leader(self, timeout=30, exclude=()):
        """The id of the leader every live node agrees on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = {i: n.info() for i, n in self.nodes.items() if n.alive() and i not in exclude}
            leaders = {i for i, inf in infos.items() if inf and inf.get("raft_role") == "leader"}
            if len(leaders) == 1:
                lid = leaders.pop()
                term = infos[lid]["raft_current_term"]
                if all(inf and inf.get("raft_leader_id") == str(lid)
                       and inf.get("raft_current_term") == term for inf in infos.values()):
                    return lid
            time.sleep(0.05)
        raise AssertionError("no leader agreed on:\n" + "\n".join(
            f"--- node {i}\n{n.log_tail(15)}" for i, n in self.nodes.items()))

    def wait_applied(self, index, ids=None, timeout=30):
        deadline = time.monotonic() + timeout
        ids = ids or [i for i, n in self.nodes.items() if n.alive()]
        while time.monotonic() < deadline:
            infos = {i: self.nodes[i].info() for i in ids}
            if all(inf and int(inf["raft_last_applied"]) >= index for inf in infos.values()):
                return infos
            time.sleep(0.05)
        raise AssertionError(f"nodes {ids} did not apply up to {index}: {infos}")
