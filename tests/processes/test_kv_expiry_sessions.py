"""Expiry on cluster time, client sessions and SCAN cursors on real node
processes: keys removed on every replica by the leader's deletions, a
RAFT.EXEC retried on a new leader answered with its first reply, a scan
finished on another leader than it started on."""
import socket

import redis

from tests.support.wait import until


def test_expired_keys_are_gone_from_every_replica(make_cluster):
    c = make_cluster(n=3, fsync="never")
    leader = c.nodes[c.wait_leader()]
    r = leader.client()
    assert r.set("short", "v", px=300) and r.set("long", "v", ex=1000) and r.set("plain", "v")
    assert 0 < r.pttl("short") <= 300 and 990 <= r.ttl("long") <= 1000 and r.ttl("plain") == -1
    # Nobody writes "short" again: the leader's proposal removes it everywhere.
    until(lambda: all(n.keys() == 2 for n in c.nodes.values()),
          lambda: f"every node to hold 2 keys: {[n.keys() for n in c.nodes.values()]}", 20)
    assert r.get("short") is None and r.exists("short", "long", "plain") == 2
    info = leader.raw_bulk("INFO", "keyspace")
    assert "keys=2,expires=1" in info
    assert r.persist("long") == 1 and r.ttl("long") == -1


def test_a_session_write_retried_on_a_new_leader_runs_once(make_cluster):
    c = make_cluster(n=3, fsync="never")
    lid = c.wait_leader()
    r = c.nodes[lid].client()
    sid = r.execute_command("RAFT.SESSION", "OPEN")
    assert isinstance(sid, int) and sid >= 1
    assert r.execute_command("RAFT.EXEC", sid, 1, "INCRBY", "n", 5) == 5
    target = next(i for i in c.ids if i != lid)
    assert c.nodes[lid].raw("RAFT.TRANSFER_LEADER", target) == b"+OK"
    assert c.wait_leader() == target
    r2 = c.nodes[target].client()
    # The reply to seq 1 was lost, say: the retry on the new leader is answered, not re-run.
    assert r2.execute_command("RAFT.EXEC", sid, 1, "INCRBY", "n", 5) == 5
    assert r2.get("n") == b"5"
    assert r2.execute_command("RAFT.EXEC", sid, 2, "INCRBY", "n", 5) == 10
    try:
        r2.execute_command("RAFT.EXEC", sid + 100, 1, "SET", "x", "1")
        raise AssertionError("an unknown session ran a command")
    except redis.ResponseError as e:
        assert str(e) == "unknown session"
    assert c.nodes[lid].raw("RAFT.EXEC", sid, 3, "SET", "x", "1").startswith(b"-MOVED")


def test_resp3_clients_get_resp3_nulls_from_sessions_and_set_options(make_cluster):
    c = make_cluster(n=1, fsync="never")
    r = c.nodes[c.wait_leader()].client(protocol=3)
    sid = r.execute_command("RAFT.SESSION", "OPEN")
    assert r.execute_command("RAFT.EXEC", sid, 1, "GETDEL", "missing") is None
    assert r.execute_command("RAFT.EXEC", sid, 1, "GETDEL", "missing") is None
    assert r.set("k", "v", nx=True) is True and r.set("k", "w", nx=True) is None
    assert r.set("k", "w", get=True) == b"v"


def test_a_scan_started_on_one_leader_finishes_on_the_next(make_cluster):
    c = make_cluster(n=3, fsync="never")
    lid = c.wait_leader()
    r = c.nodes[lid].client()
    keys = {b"key:%d" % i for i in range(300)}
    r.mset({k: b"v" for k in keys})
    cursor, first = r.scan(0, count=50)
    assert cursor != 0 and 50 <= len(first) < 300
    target = next(i for i in c.ids if i != lid)
    assert c.nodes[lid].raw("RAFT.TRANSFER_LEADER", target) == b"+OK"
    assert c.wait_leader() == target
    r2 = c.nodes[target].client()
    seen = set(first)
    while cursor != 0:
        cursor, batch = r2.scan(cursor, count=50)
        seen.update(batch)
    assert seen == keys
    assert r2.dbsize() == 300


def test_a_write_whose_reply_passes_the_output_limit_took_effect_and_closes_its_connection(
        make_cluster):
    c = make_cluster(n=1, fsync="never", extra_args=["--client-output-buffer-limit", "1000000"])
    node = c.nodes[c.wait_leader()]
    r = node.client()
    r.set("big", b"x" * 2_000_000)
    # A raw connection: redis-py would retry the GETDEL on a new one.
    with socket.create_connection(("127.0.0.1", node.client_port), timeout=10) as s:
        s.sendall(b"*2\r\n$6\r\nGETDEL\r\n$3\r\nbig\r\n")
        got = b""
        while chunk := s.recv(1 << 20):
            got += chunk
    assert got == b""   # closed, the reply never built into its buffer
    assert node.client().exists("big") == 0
