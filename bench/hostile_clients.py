"""The hostile client's attacks, each against a fresh 3-node cluster
started as a user would (`python -m raftfast.cluster --nodes 3`, its
defaults), with the figure each one moves: how much the node attacked
grew, whether the connection was cut, whether other clients are still
served.  `--tree DIR` runs the cluster of another checkout (an older
build, for the figures before), the attacks being the same bytes.

    python -m bench.hostile_clients [--tree DIR] [--only NAME ...]

Attacks (the issue that asked for limits lists them):
  gets        one request of 32 GETs of a 4 MiB value, replies never read
  mset        an MSET announcing 1,000,000 arguments, then 32 MiB arguments, never finished
  log         8 MiB of live data (8 keys of 1 MiB) overwritten until 512 MiB were written
  fill        256 SETs of 1 MiB to distinct keys, with --maxmemory 64mb where the
              build has it: how many are taken, and what each node grows by
  append      APPEND past the 32 MiB a SET may store
  debug       RAFTFAST.BENCH from an ordinary client
  stranger    a process that knows the cluster id opens a peer connection to a
              follower and sends it a 256 KiB snapshot chunk
  modes       the data dir's and the peer sockets' permissions
"""
import argparse
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
BASE_PORT = 7301


def req(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class Cluster:
    """`python -m raftfast.cluster --nodes 3` from `tree`, in a temporary
    data dir; node id -> (pid, client port)."""

    def __init__(self, tree, flags=()):
        self.dir = tempfile.mkdtemp(prefix="rf-hostile")
        env = dict(os.environ, PYTHONPATH=tree)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "raftfast.cluster", "--nodes", "3", "--data-dir",
             os.path.join(self.dir, "data"), "--base-port", str(BASE_PORT), *flags],
            cwd=tree, env=env, stdout=subprocess.PIPE, text=True)
        for line in self.proc.stdout:
            if line.startswith("serving"):
                break
        else:
            raise RuntimeError("the cluster exited before it served")
        self.nodes = {}
        for pid in open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read().split():
            argv = open(f"/proc/{pid}/cmdline").read().split("\0")
            node_id = int(argv[argv.index("--id") + 1])
            self.nodes[node_id] = (int(pid), BASE_PORT + node_id)

    def leader(self):
        """(id, pid, port) of the node that says it leads."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for node_id, (pid, port) in self.nodes.items():
                try:
                    if b"raft_role:leader" in command(port, b"INFO", b"raft"):
                        return node_id, pid, port
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("no leader")

    def follower(self):
        lid = self.leader()[0]
        node_id = min(i for i in self.nodes if i != lid)
        return (node_id, *self.nodes[node_id])

    def close(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def command(port, *args, timeout=30):
    """One command on a fresh connection; its whole reply (read until it parses)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req(*args))
        return read_reply(s)


def read_reply(s):
    buf = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return buf
        buf += chunk
        if buf[:1] in b"+-:" and buf.endswith(b"\r\n"):
            return buf
        if buf[:1] == b"*" and b"\r\n" in buf:  # an array of integers (RAFTFAST.BENCH's)
            if buf.count(b"\r\n") > int(buf[1:buf.index(b"\r\n")]):
                return buf
        if buf[:1] == b"$":
            head, _, rest = buf.partition(b"\r\n")
            n = int(head[1:])
            if n < 0 or len(rest) >= n + 2:
                return buf


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(field + ":"))


def closed_within(s, seconds):
    """Did the node close s (reading and dropping what it sent meanwhile)?"""
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def serves(port):
    return command(port, b"PING", timeout=10) == b"+PONG\r\n"


def attack_gets(c):
    _, pid, port = c.leader()
    value = b"v" * (4 * MiB)
    assert command(port, b"SET", b"big", value) == b"+OK\r\n"
    before = status(pid, "VmHWM")
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(req(b"GET", b"big") * 32)
    time.sleep(3)  # let the node do whatever it does with them
    cut = closed_within(s, 1)
    grown = status(pid, "VmHWM") - before
    s.close()
    return f"leader peak memory +{grown / MiB:.1f} MiB; connection closed: {cut}; " \
           f"others served: {serves(port)}"


def attack_mset(c):
    _, pid, port = c.follower()
    before = status(pid, "VmHWM")
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    arg = b"$33554432\r\n" + b"v" * 33554432 + b"\r\n"
    sent = 0
    try:
        s.sendall(b"*1000000\r\n$4\r\nMSET\r\n")
        for _ in range(8):
            s.sendall(arg)
            sent += 1
        cut = closed_within(s, 3)
    except (BrokenPipeError, ConnectionResetError):
        cut = True
    grown = status(pid, "VmHWM") - before
    s.close()
    return (f"follower peak memory +{grown / MiB:.1f} MiB after {sent} of 8 arguments; "
            f"connection closed: {cut}; others served: {serves(port)}")


def attack_log(c):
    _, _, port = c.leader()
    before = {i: status(pid, "VmRSS") for i, (pid, _) in c.nodes.items()}
    value = b"x" * MiB
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        for i in range(512):
            s.sendall(req(b"SET", b"k%d" % (i % 8), value))
            assert read_reply(s) == b"+OK\r\n"
    time.sleep(3)  # a snapshot and its compaction, if the log's size starts one
    grown = {i: (status(pid, "VmRSS") - before[i]) / MiB for i, (pid, _) in c.nodes.items()}
    return "memory per node after 512 MiB of writes to 8 MiB of data: " + ", ".join(
        f"node {i} +{g:.0f} MiB" for i, g in sorted(grown.items()))


def attack_fill(c):
    _, _, port = c.leader()
    before = {i: status(pid, "VmRSS") for i, (pid, _) in c.nodes.items()}
    value = b"x" * MiB
    taken = refused = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        for i in range(256):
            s.sendall(req(b"SET", b"fill%d" % i, value))
            reply = read_reply(s)
            taken += reply == b"+OK\r\n"
            refused += reply.startswith(b"-OOM")
    grown = {i: (status(pid, "VmRSS") - before[i]) / MiB for i, (pid, _) in c.nodes.items()}
    return f"{taken} SETs of 1 MiB taken, {refused} refused with -OOM; " + ", ".join(
        f"node {i} +{g:.0f} MiB" for i, g in sorted(grown.items()))


def attack_append(c):
    _, _, port = c.leader()
    assert command(port, b"SET", b"k", b"a" * (32 * MiB - 1024)) == b"+OK\r\n"
    reply = command(port, b"APPEND", b"k", b"b" * 2048).strip().decode()
    length = len(command(port, b"GET", b"k")) - len(b"$33555456\r\n\r\n")
    return f"APPEND of 2 KiB to a 32 MiB - 1 KiB value: {reply}; value now {length} bytes"


def attack_debug(c):
    _, _, port = c.leader()
    reply = command(port, b"RAFTFAST.BENCH", b"1", b"16", b"64", b"4").decode()
    if reply.startswith("*"):
        return "RAFTFAST.BENCH from a client: ran, " + reply.split("\r\n")[1][1:] + \
            " entries committed in 1 s"
    return "RAFTFAST.BENCH from a client: " + reply.split("\r\n")[0][:60]


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files if os.path.exists(os.path.join(d, f)))


def attack_stranger(c):
    from raftfast._codec import encode_handshake, encode_message
    from raftfast.core.messages import MSG_SNAPSHOT_CHUNK, Message
    node_id, _, port = c.follower()
    term = int(command(port, b"INFO", b"raft").split(b"raft_current_term:")[1].split(b"\r")[0])
    node_dir = os.path.join(c.dir, "data", f"node{node_id}")
    before = _dir_bytes(node_dir)
    chunk = bytes(256 << 10)
    frames = encode_handshake("raftfast", 7) + encode_message(Message(
        MSG_SNAPSHOT_CHUNK, frm=7, term=term, index=1 << 20, log_term=term, commit=0,
        hint=2 * len(chunk), context=0, entries=chunk))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(os.path.join(node_dir, "raft.sock"))
    try:
        s.sendall(frames)
    except (BrokenPipeError, ConnectionResetError):
        pass
    cut = closed_within(s, 3)
    s.close()
    time.sleep(1)
    return (f"follower data dir +{_dir_bytes(node_dir) - before} bytes from the stranger's chunk; "
            f"connection closed: {cut}; others served: {serves(port)}")


def attack_modes(c):
    data = os.path.join(c.dir, "data")
    node_dir = os.path.join(data, "node1")
    sockets = [os.path.join(data, f) for f in os.listdir(data) if f.endswith(".sock")]
    sock_modes = {oct(stat.S_IMODE(os.stat(p).st_mode)) for p in sockets}
    return (f"data dir {oct(stat.S_IMODE(os.stat(data).st_mode))}, node dir "
            f"{oct(stat.S_IMODE(os.stat(node_dir).st_mode))}, peer sockets "
            f"{', '.join(sorted(sock_modes)) or 'none'}")


ATTACKS = {"gets": attack_gets, "mset": attack_mset, "log": attack_log, "fill": attack_fill,
           "append": attack_append, "debug": attack_debug, "stranger": attack_stranger,
           "modes": attack_modes}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.hostile_clients", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=ROOT, help="the checkout whose cluster is attacked")
    ap.add_argument("--only", nargs="+", choices=sorted(ATTACKS), help="these attacks only")
    args = ap.parse_args(argv)
    tree = os.path.abspath(args.tree)
    with open(os.path.join(tree, "raftfast", "config.py")) as f:
        has_maxmemory = '"--maxmemory"' in f.read()
    for name in args.only or ATTACKS:
        flags = ["--maxmemory", "64mb"] if name == "fill" and has_maxmemory else []
        c = Cluster(tree, flags)
        try:
            print(f"{name:7} {ATTACKS[name](c)}", flush=True)
        except Exception as e:  # one attack's failure is its figure
            print(f"{name:7} failed: {e!r}", flush=True)
        finally:
            c.close()


if __name__ == "__main__":
    main()
