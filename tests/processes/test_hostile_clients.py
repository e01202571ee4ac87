"""The hostile client, against real nodes: each attack of the issue that
asked for limits, and each limit, holds; the node keeps serving other
clients and loses nothing it acknowledged.  (The unfinished MSET and the
limits on one connection are in test_resp_server.py.)"""
import shutil
import socket
import tempfile

import pytest

from tests.processes.test_resp_server import Conn, req
from tests.support.harness import Cluster
from tests.support.wait import until

pytestmark = pytest.mark.multiprocess

OOM = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
MiB = 1 << 20


@pytest.fixture
def cluster_of():
    made = []

    def make(n=1, extra=(), per_node=None):
        c = Cluster(tempfile.mkdtemp(prefix="rf"), n=n, extra_args=extra)
        for i, args in (per_node or {}).items():
            c.nodes[i].extra += args
        made.append(c)
        return c
    yield make
    for c in made:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


def peak_rss(node):
    with open(f"/proc/{node.proc.pid}/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))


def info_section(node, section):
    text = node.raw_bulk("INFO", section)
    return dict(ln.split(":", 1) for ln in text.splitlines() if ":" in ln)


def test_reads_whose_replies_would_pass_the_output_limit_are_not_built(cluster_of):
    """The issue's first attack: one 1 KiB request of 32 GETs of a 4 MiB
    value, replies never read, grew the leader by 244 MiB.  With the
    default --client-output-buffer-limit (64 MiB) the replies are sized
    first, the connection is closed, and the node grows by far less."""
    c = cluster_of(n=1).start()
    node = c.nodes[c.wait_leader()]
    value = b"v" * (4 * MiB)
    setter = Conn(node.client_port)
    setter.send(req(b"SET", b"big", value))
    setter.expect(b"+OK\r\n")
    before = peak_rss(node)
    s = socket.create_connection(("127.0.0.1", node.client_port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(req(b"GET", b"big") * 32)
    assert until(lambda: s.recv(1 << 20) == b"" or None, "the connection to be closed", 30)
    s.close()
    grown = peak_rss(node) - before
    assert grown < 64 * MiB, grown
    setter.send(req(b"GET", b"big"))
    setter.expect(b"$%d\r\n" % len(value) + value + b"\r\n")  # served, and nothing lost
    setter.close()
    assert "--client-output-buffer-limit" in node.log_tail()


def test_append_cannot_grow_a_value_past_proto_max_bulk_len(cluster_of):
    c = cluster_of(n=3, extra=["--proto-max-bulk-len", "1mb"]).start()
    leader = c.nodes[c.wait_leader()]
    conn = Conn(leader.client_port)
    part = b"a" * (600 << 10)
    conn.send(req(b"SET", b"k", part) + req(b"APPEND", b"k", part) + req(b"APPEND", b"k", b"b"))
    conn.expect(b"+OK\r\n-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
                b":%d\r\n" % (len(part) + 1))
    conn.close()
    # Every replica refused the same APPEND: a follower made leader holds
    # the same value.
    follower = next(i for i in c.ids if i != leader.id)
    c.wait_applied(int(leader.info()["raft_last_applied"]))
    assert leader.raw("RAFT.TRANSFER_LEADER", str(follower)) == b"+OK"
    assert c.wait_leader() == follower
    assert c.nodes[follower].raw("GET", "k") == b"$%d" % (len(part) + 1)


def test_the_log_in_memory_stays_under_snapshot_log_bytes(cluster_of):
    c = cluster_of(n=1, extra=["--snapshot-log-bytes", "2mb", "--snapshot-entries", "0"]).start()
    node = c.nodes[c.wait_leader()]
    conn = Conn(node.client_port)
    for i in range(60):
        conn.send(req(b"SET", b"k%d" % (i % 5), b"x" * (100 << 10)))
        conn.expect(b"+OK\r\n")
    conn.close()

    def compacted():
        mem = info_section(node, "memory")
        return mem if int(mem["raftfast_log_bytes"]) <= 2 * MiB else None
    until(compacted, "the log in memory to be compacted under 2 MiB", 15)
    assert int(node.info()["raft_first_log_index"]) > 20  # trailing entries trimmed too
    assert node.keys() == 5


def test_maxmemory_on_a_voter_stops_growing_writes_at_the_leader(cluster_of):
    """Node 3 has 6 MiB; the others no limit.  Once node 3 reports more,
    the leader refuses SET, APPEND and INCR with Redis's OOM error, while
    GET and DEL go on; deleting keys lets writes in again, and so does a
    voter that stops reporting (it does not hold the cluster hostage)."""
    c = cluster_of(n=3, extra=["--maxmemory", "0"],
                   per_node={3: ["--maxmemory", "6mb"]}).start()
    lid = c.wait_leader()
    if lid == 3:
        c.nodes[3].raw("RAFT.TRANSFER_LEADER", "1")
        lid = c.wait_leader(exclude=())
    leader = c.nodes[lid]
    conn = Conn(leader.client_port)
    value = b"x" * (512 << 10)
    written = 0
    for i in range(60):
        conn.send(req(b"SET", b"k%d" % i, value))
        reply = conn.read(5)
        if reply == OOM[:5]:
            conn.expect(OOM[5:])
            break
        assert reply == b"+OK\r\n"
        written += 1
    else:
        pytest.fail("60 SETs of 512 KiB never hit node 3's 6 MiB")
    assert info_section(leader, "memory")["maxmemory"] == "0"  # the voter's report refused it
    conn.send(req(b"APPEND", b"k0", b"y") + req(b"INCR", b"n") + req(b"GET", b"k0")
              + req(b"EXISTS", b"k0"))
    conn.expect(OOM + OOM + b"$%d\r\n" % len(value) + value + b"\r\n:1\r\n")
    conn.send(req(b"DEL", *[b"k%d" % i for i in range(written)]))
    conn.expect(b":%d\r\n" % written)

    def set_ok(key):
        def attempt():
            conn.send(req(b"SET", key, b"v"))
            return conn.read(5) == b"+OK\r\n" or (conn.expect(OOM[5:]) and None)
        return attempt
    until(set_ok(b"after-del"), "writes to be taken again after DEL", 15)
    # Fill node 3 again, then stop it: its last report ages out.
    for i in range(60):
        conn.send(req(b"SET", b"k%d" % i, value))
        if conn.read(5) == OOM[:5]:
            conn.expect(OOM[5:])
            break
    c.nodes[3].kill()
    until(set_ok(b"after-kill"), "writes to be taken once node 3 stops reporting", 15)
    conn.close()


def test_clients_together_past_maxmemory_clients_lose_the_biggest(cluster_of):
    c = cluster_of(n=1, extra=["--maxmemory-clients", "4mb"]).start()
    node = c.nodes[c.wait_leader()]
    greedy = socket.create_connection(("127.0.0.1", node.client_port), timeout=30)
    greedy.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20000000\r\n")
    try:
        for _ in range(6):
            greedy.sendall(b"v" * MiB)
        closed = until(lambda: greedy.recv(1) == b"" or None, "the greedy client to be closed", 15)
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    greedy.close()
    assert closed
    other = Conn(node.client_port)
    other.send(req(b"PING"))
    other.expect(b"+PONG\r\n")
    other.close()
    assert info_section(node, "stats")["evicted_clients"] == "1"
