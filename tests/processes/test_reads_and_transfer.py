"""Linearizable reads without the log (ReadIndex, lease) and
RAFT.TRANSFER_LEADER, against real node processes."""
import random
import signal
import socket

import pytest

from tests.support.node_info import counter
from tests.support.wait import until


def command(*args):
    return b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in (x if isinstance(x, bytes) else str(x).encode()
                                                for x in args))


def read_replies(sock, n):
    """n RESP2 replies (simple, error, integer, bulk or array of bulks)."""
    buf = b""
    out = []

    def need(k):
        nonlocal buf
        while len(buf) < k:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk

    def line():
        nonlocal buf
        while b"\r\n" not in buf:
            need(len(buf) + 1)
        head, buf = buf.split(b"\r\n", 1)
        return head

    def one():
        nonlocal buf
        head = line()
        if head[:1] in (b"+", b"-", b":"):
            return head
        if head[:1] == b"$":
            size = int(head[1:])
            if size < 0:
                return None
            need(size + 2)
            val, buf = buf[:size], buf[size + 2:]
            return val
        if head[:1] == b"*":
            return [one() for _ in range(int(head[1:]))]
        raise AssertionError(f"unexpected reply {head!r}")

    for _ in range(n):
        out.append(one())
    return out


def info_int(node, field):
    return int(node.info()[field])


def test_reads_are_served_without_writing_to_the_log(make_cluster):
    c = make_cluster(n=3)
    lid = c.wait_leader()
    leader = c.nodes[lid]
    r = leader.client()
    r.set("k", "v")
    r.set("n", "5")
    last = info_int(leader, "raft_last_log_index")
    for _ in range(200):
        assert r.get("k") == b"v"
        assert r.mget("k", "n", "missing") == [b"v", b"5", None]
        assert r.exists("k", "n", "missing") == 2
    assert info_int(leader, "raft_last_log_index") == last
    assert counter(leader, "raftfast_reads_served") >= 600


def test_one_connection_sees_its_own_commands_in_order(make_cluster):
    """A pipeline mixing writes and reads on one connection: every read
    sees exactly the writes sent before it, none sent after."""
    c = make_cluster(n=3)
    lid = c.wait_leader()
    rng = random.Random(7)
    with socket.create_connection(("127.0.0.1", c.nodes[lid].client_port), timeout=10) as s:
        for trial in range(20):
            model, wire, expect = {}, [], []
            for i in range(rng.randrange(5, 60)):
                key = f"t{trial}-{rng.randrange(3)}"
                what = rng.random()
                if what < 0.4:
                    val = f"{i}"
                    wire.append(command("SET", key, val))
                    model[key] = val.encode()
                    expect.append(b"+OK")
                elif what < 0.55:
                    wire.append(command("APPEND", key, "x"))
                    model[key] = model.get(key, b"") + b"x"
                    expect.append(b":%d" % len(model[key]))
                elif what < 0.85:
                    wire.append(command("GET", key))
                    expect.append(model.get(key))
                else:
                    keys = [f"t{trial}-{j}" for j in range(3)]
                    wire.append(command("MGET", *keys))
                    expect.append([model.get(k) for k in keys])
            s.sendall(b"".join(wire))
            assert read_replies(s, len(expect)) == expect


def test_a_follower_redirects_reads(make_cluster):
    c = make_cluster(n=3)
    lid = c.wait_leader()
    follower = next(n for i, n in c.nodes.items() if i != lid)
    assert follower.raw("GET", "k").startswith(b"-MOVED 0 127.0.0.1:")


@pytest.mark.parametrize("read_mode", ["readindex", "lease"])
def test_a_paused_old_leader_never_serves_a_stale_read(make_cluster, read_mode):
    """SIGSTOP the leader, let the others elect a new one and overwrite a
    key, SIGCONT the old one and ask it at once: it may redirect or time
    out, never answer with the old value.  Under a lease this holds because
    the woken leader counts the time it was stopped before it answers."""
    c = make_cluster(n=3, extra_args=("--read-mode", read_mode))
    lid = c.wait_leader()
    old = c.nodes[lid]
    old.client().set("k", "old")
    # A connection opened before the pause, so the read reaches the process
    # the moment it runs again.
    s = socket.create_connection(("127.0.0.1", old.client_port), timeout=15)
    old.proc.send_signal(signal.SIGSTOP)
    try:
        new_id = c.wait_leader(exclude=(lid,))
        c.nodes[new_id].client().set("k", "new")
        s.sendall(command("GET", "k"))
    finally:
        old.proc.send_signal(signal.SIGCONT)
    reply = read_replies(s, 1)[0]
    s.close()
    assert reply != b"old", "a deposed leader served a stale read"
    assert reply == b"new" or reply.startswith((b"-MOVED", b"-CLUSTERDOWN", b"-TIMEOUT")), reply


def test_a_leader_stopped_while_cut_off_does_not_trust_its_old_lease(make_cluster):
    """The lease's own danger: the leader is stopped (SIGSTOP, a long GC
    pause) and cut off; the others elect a new leader and overwrite a key;
    the old one wakes, still cut off, hearing of no newer term.  Its lease
    counted in ticks would look fresh, so it must count the time it was
    stopped (the driver catches up on the monotonic clock) and not answer
    from the lease."""
    c = make_cluster(n=3, proxied=True, extra_args=("--read-mode", "lease"))
    lid = c.wait_leader()
    old = c.nodes[lid]
    old.client().set("k", "old")
    for _ in range(20):  # keep the lease fresh right up to the pause
        assert old.client().get("k") == b"old"
    s = socket.create_connection(("127.0.0.1", old.client_port), timeout=15)
    old.proc.send_signal(signal.SIGSTOP)
    c.proxy.isolate(lid)
    new_id = c.wait_leader(exclude=(lid,))
    c.nodes[new_id].client().set("k", "new")
    s.sendall(command("GET", "k"))
    old.proc.send_signal(signal.SIGCONT)
    reply = read_replies(s, 1)[0]
    s.close()
    assert reply != b"old", "a stopped leader answered from a lease that had run out"
    assert reply.startswith((b"-MOVED", b"-CLUSTERDOWN", b"-TIMEOUT")), reply


def test_lease_reads_are_served_and_write_nothing(make_cluster):
    c = make_cluster(n=3, extra_args=("--read-mode", "lease"))
    lid = c.wait_leader()
    leader = c.nodes[lid]
    r = leader.client()
    r.set("k", "v")
    last = info_int(leader, "raft_last_log_index")
    rounds = counter(leader, "raftfast_read_rounds")
    for _ in range(100):
        assert r.get("k") == b"v"
    assert info_int(leader, "raft_last_log_index") == last
    # Reads under a lease do not each start a heartbeat round (the periodic
    # heartbeats still run: allow those).
    assert counter(leader, "raftfast_read_rounds") - rounds < 100


# ------------------------------------------------------ leadership transfer


def test_transfer_leader_hands_over_and_answers_ok(make_cluster):
    c = make_cluster(n=3)
    lid = c.wait_leader()
    leader = c.nodes[lid]
    leader.client().set("before", "1")
    target = next(i for i in c.ids if i != lid)
    assert leader.raw("RAFT.TRANSFER_LEADER", target) == b"+OK"
    assert c.wait_leader() == target
    assert leader.raw("SET", "k", "v").startswith(b"-MOVED")
    assert c.nodes[target].client().get("before") == b"1"


def test_transfer_to_itself_is_ok_and_bad_targets_are_refused(make_cluster):
    c = make_cluster(n=3)
    lid = c.wait_leader()
    leader = c.nodes[lid]
    assert leader.raw("RAFT.TRANSFER_LEADER", lid) == b"+OK"
    assert leader.raw("RAFT.TRANSFER_LEADER", 99) == b"-ERR node 99 is not a voter"
    assert leader.raw("RAFT.TRANSFER_LEADER", "x").startswith(b"-ERR node id must be")
    assert leader.raw("RAFT.TRANSFER_LEADER").startswith(b"-ERR wrong number of arguments")
    follower = next(n for i, n in c.nodes.items() if i != lid)
    assert follower.raw("RAFT.TRANSFER_LEADER", lid).startswith(b"-MOVED")
    assert c.wait_leader() == lid


def test_writes_get_tryagain_during_a_transfer_and_work_again_after_it_times_out(make_cluster):
    c = make_cluster(n=3)
    lid = c.wait_leader()
    leader = c.nodes[lid]
    target = next(i for i in c.ids if i != lid)
    c.nodes[target].proc.send_signal(signal.SIGSTOP)  # it can never take over
    try:
        with socket.create_connection(("127.0.0.1", leader.client_port), timeout=15) as s:
            s.sendall(command("RAFT.TRANSFER_LEADER", target))
            # The transfer is under way once writes are refused; a probe
            # written before that only touches a key of its own.
            until(lambda: leader.raw("SET", "probe", "x") == b"-TRYAGAIN leadership transfer "
                                                                 b"in progress",
                  "the leader to refuse writes during the transfer", 10)
            assert leader.raw("SET", "k", "v") == b"-TRYAGAIN leadership transfer in progress"
            assert leader.raw("GET", "k") in (b"$-1",)  # reads still work
            assert read_replies(s, 1) == [b"-TIMEOUT transfer did not complete"]
        assert leader.raw("SET", "k", "v") == b"+OK"
    finally:
        c.nodes[target].proc.send_signal(signal.SIGCONT)
    # The TimeoutNow waited in the stopped target's socket: woken, it may
    # still start an election (Raft's transfer has no expiry on it).  Either
    # way the cluster settles on one leader holding the write.
    lid = c.wait_leader()
    assert c.nodes[lid].client().get("k") == b"v"
