"""Library nodes in their own processes (tests/support/library_node.py),
every peer link through a FaultProxy, driven over their control sockets.
Processes start the launcher's way (NodeCommand) and end by their PIDs."""
import json
import os
import signal
import socket
import subprocess

from raftfast.launcher.supervisor import NodeCommand, stop_processes
from tests.support.faultproxy import FaultProxy
from tests.support.harness import NodeProc
from tests.support.wait import until


class Control:
    """A blocking connection to one node's control socket."""

    def __init__(self, path, timeout=10.0):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")

    def call(self, **request):
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        line = self.file.readline()
        if not line:
            raise ConnectionError("the node closed its control socket")
        return json.loads(line)

    def close(self):
        self.file.close()
        self.sock.close()


class LibraryProc(NodeProc):
    """A harness node whose process is a library node: its own command
    line, ready line and control socket; alive(), kill() and log_tail()
    as any node's."""

    def __init__(self, cluster, node_id, join=False):
        super().__init__(cluster, node_id)
        self.join = join
        self.clock_skew_ms = 0
        self.control_path = os.path.join(cluster.root, f"c{node_id}.sock")

    def argv(self):
        c = self.cluster
        line = ["--id", str(self.id), "--data-dir", os.path.join(c.root, f"d{self.id}"),
                "--listen", c.peer_url(self.id), "--control", f"unix://{self.control_path}",
                *c.flags]
        for j in c.ids:
            if j != self.id:
                line += ["--peer", f"{j}={c.dial_url(self.id, j)}"]
        if self.join:
            line.append("--join")
        if self.clock_skew_ms:
            line += ["--clock-skew-ms", str(self.clock_skew_ms)]
        return line

    def start(self):
        if os.path.exists(self.control_path):
            os.unlink(self.control_path)
        cmd = NodeCommand.node(self.argv(), module="tests.support.library_node")
        with open(self.log_path, "ab") as logf:
            self.proc = cmd.start(stdout=subprocess.PIPE, stderr=logf)
        line = self.proc.stdout.readline()
        if not line.startswith(b"ready"):
            self.proc.wait(timeout=10)
            raise RuntimeError(f"library node {self.id} did not start: {line!r}\n"
                               f"{self.log_tail()}")
        return self

    def control(self):
        return Control(self.control_path)

    def call(self, **request):
        c = self.control()
        try:
            return c.call(**request)
        finally:
            c.close()


class LibraryCluster:
    """n library node processes over Unix sockets in `root`."""

    def __init__(self, root, n=3, flags=()):
        self.root = root
        self.ids = list(range(1, n + 1))
        self.flags = ["--heartbeat-interval", "30", "--election-timeout", "300", *flags]
        self.proxy = FaultProxy(socket_dir=root)
        self._dial = {}
        self.nodes = {}

    def peer_url(self, i):
        return f"unix://{self.root}/p{i}.sock"

    def dial_url(self, src, dst):
        if (src, dst) not in self._dial:
            self._dial[src, dst] = self.proxy.add_link(src, dst, self.peer_url(dst))
        return self._dial[src, dst]

    def start(self, clock_skews=None):
        """clock_skews: {id: ms} a node's wall clock runs ahead (or behind)."""
        self.proxy.start()
        for i in self.ids:
            proc = self.nodes[i] = LibraryProc(self, i)
            proc.clock_skew_ms = (clock_skews or {}).get(i, 0)
            proc.start()
        return self

    def add(self, node_id):
        """Start node_id as a joining process (every link proxied too)."""
        self.ids.append(node_id)
        for i in self.ids:
            if i != node_id:
                self.dial_url(i, node_id)
        proc = self.nodes[node_id] = LibraryProc(self, node_id, join=True).start()
        return proc

    def stop(self):
        procs = [n.proc for n in self.nodes.values() if n.alive()]
        for p in procs:
            p.send_signal(signal.SIGCONT)
        try:
            return stop_processes(procs)
        finally:
            for n in self.nodes.values():
                if n.proc is not None:
                    n.proc.stdout.close()
            self.proxy.stop()

    def leader(self, timeout=30):
        def agreed():
            seen = {}
            for i, n in self.nodes.items():
                if not n.alive():
                    continue
                try:
                    st = n.call(op="status")["ok"]
                except OSError:
                    return None
                seen[i] = st
            leaders = {st["leader_id"] for st in seen.values()}
            if len(leaders) == 1 and 0 not in leaders:
                lid = leaders.pop()
                if lid in seen and seen[lid]["role"] == "leader":
                    return lid
            return None
        return until(agreed, "library nodes agreeing on a leader", timeout)
