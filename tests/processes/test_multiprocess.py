"""Whole nodes as separate processes, talking over Unix or TCP sockets,
driven by real Redis clients (redis-py with its RESP3 defaults, redis-cli)."""
import os
import shutil
import signal
import socket
import subprocess

import pytest
import redis

pytestmark = pytest.mark.multiprocess


def leader_client(c):
    return c.nodes[c.wait_leader()].client()


@pytest.mark.parametrize("n,transport", [(3, "unix"), (5, "tcp")])
def test_writes_are_replicated_to_every_node(make_cluster, n, transport):
    c = make_cluster(n, transport)
    lid = c.wait_leader()
    with c.nodes[lid].client() as r:
        assert r.connection_pool.connection_kwargs.get("protocol") in (None, 3, "3")
        for i in range(50):
            assert r.set(f"k{i}", f"v{i}") is True
        assert r.get("k7") == b"v7"
        assert r.execute_command("INCR", "ctr") == 1 and r.append("k1", "x") == 3
        commit = int(c.nodes[lid].info()["raft_commit_index"])
    infos = c.wait_applied(commit)
    assert {inf["raft_leader_id"] for inf in infos.values()} == {str(lid)}
    # Every state machine holds the same 51 keys (k0..k49 and ctr).
    assert {i: node.keys() for i, node in c.nodes.items()} == {i: 51 for i in c.ids}
    assert {inf["raft_voters"] for inf in infos.values()} == {",".join(map(str, c.ids))}


def test_followers_redirect_to_the_leader(make_cluster):
    c = make_cluster(3, "unix")
    lid = c.wait_leader()
    follower = next(i for i in c.ids if i != lid)
    with c.nodes[follower].client() as r:
        with pytest.raises(redis.exceptions.MovedError) as ei:
            r.set("a", "b")
        assert str(ei.value) == f"0 127.0.0.1:{c.nodes[lid].client_port}"
        with pytest.raises(redis.exceptions.MovedError):
            r.get("a")
        assert r.ping() is True  # served by any node
    moved = f"-MOVED 0 127.0.0.1:{c.nodes[lid].client_port}".encode()
    assert c.nodes[follower].raw("SET", "a", "b") == moved
    assert c.nodes[follower].raw("GET", "a") == moved
    assert c.nodes[lid].raw("GET", "a") == b"$-1"  # the redirected SET took no effect


def test_redis_cli_sets_and_gets_through_the_leader(make_cluster):
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli (Debian's redis-tools) is not installed")
    c = make_cluster(5, "unix")
    lid = c.wait_leader()
    port = str(c.nodes[lid].client_port)

    def cli(port, *args):
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                              text=True, timeout=20).stdout.strip()

    assert cli(port, "SET", "greeting", "hello world") == "OK"
    assert cli(port, "GET", "greeting") == "hello world"
    for i, node in c.nodes.items():
        if i != lid:
            assert cli(node.client_port, "GET", "greeting") == f"MOVED 0 127.0.0.1:{port}"


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_sigkill_of_the_leader_loses_no_acknowledged_write(make_cluster, transport):
    c = make_cluster(3, transport)
    old = c.wait_leader()
    acked = {}
    with c.nodes[old].client() as r:
        for i in range(200):
            r.set(f"key{i}", f"val{i}")
            acked[f"key{i}"] = f"val{i}".encode()
    c.nodes[old].kill(signal.SIGKILL)
    new = c.wait_leader(exclude=(old,))
    assert new != old
    with c.nodes[new].client() as r:
        got = r.mget(list(acked))
    assert got == list(acked.values())


def test_killed_node_restarts_and_catches_up(make_cluster):
    c = make_cluster(3, "unix")
    lid = c.wait_leader()
    victim = next(i for i in c.ids if i != lid)
    c.nodes[victim].kill(signal.SIGKILL)
    with c.nodes[lid].client() as r:
        for i in range(100):
            r.set(f"later{i}", "x" * 64)
        commit = int(c.nodes[lid].info()["raft_commit_index"])
    c.nodes[victim].start()
    info = c.wait_applied(commit, ids=[victim])[victim]
    assert int(info["raft_last_log_index"]) >= commit
    assert info["raft_role"] == "follower"


def test_restart_of_the_whole_cluster_keeps_the_data(make_cluster):
    c = make_cluster(3, "unix")
    with leader_client(c) as r:
        r.set("durable", "yes")
    c.stop()
    c.start()
    with leader_client(c) as r:
        assert r.get("durable") == b"yes"


def send_until_closed(sock, data):
    """Send data, say that nothing more comes, and read until the node
    closes the connection: by then it has handled every byte sent."""
    with sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass  # an error reply, then the close
        except socket.timeout:
            raise AssertionError(f"the node kept a connection open after {data[:20]!r}...")
        except OSError:
            pass  # closed on us (a reset) while we wrote: handled all the same


def test_garbage_on_client_and_peer_ports_leaves_nodes_serving(make_cluster):
    c = make_cluster(3, "unix")
    lid = c.wait_leader()
    # Client port: a stream that cannot be parsed is answered and closed.
    s = socket.create_connection(("127.0.0.1", c.nodes[lid].client_port), timeout=10)
    s.sendall(b"*2\r\n$3\r\nGET\r\n$-7\r\n")
    reply = s.recv(4096)
    assert reply.startswith(b"-ERR Protocol error")
    assert s.recv(4096) == b""  # closed
    s.close()
    for chunk in (os.urandom(4096), b"\x00" * 100, b"*9999999999\r\n"):
        send_until_closed(socket.create_connection(("127.0.0.1", c.nodes[lid].client_port),
                                                   timeout=10), chunk)
    # Peer port: garbage, a bogus handshake, a truncated frame.
    peer_path = c.peer_url(lid)[len("unix://"):]
    for chunk in (os.urandom(8192), b"\xff" * 12, b"\x05\x00\x00\x00\x01\x01"):
        p = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        p.settimeout(10)
        p.connect(peer_path)
        send_until_closed(p, chunk)
    assert all(n.alive() for n in c.nodes.values())
    with c.nodes[c.wait_leader()].client() as r:
        assert r.set("still", "serving") is True


def test_sigterm_is_a_clean_stop(make_cluster):
    c = make_cluster(3, "unix")
    c.wait_leader()
    assert c.stop() == {1: 0, 2: 0, 3: 0}
