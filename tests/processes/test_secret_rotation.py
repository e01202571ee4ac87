"""Secrets change by rolling restarts while clients write (docs/operations.md,
"Rotating secrets"): a cluster without a cluster secret gets one in two
rolls, a secret is replaced in three, a client password in two.  After
every single restart the restarted node catches up, which it can only do
if it talks to the others: no moment leaves two members unable to talk."""
import os

import pytest
import redis

from raftfast import resp_client
from tests.support.harness import Cluster
from tests.support.rolling import Writer, check_every_acked_write, replace_node
from tests.support.wait import until

pytestmark = pytest.mark.multiprocess

S1 = b"first-cluster-secret-0123456789"
S2 = b"second-cluster-secret-987654321"


def _file(root, name, data):
    path = os.path.join(root, name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


def _without(extra, *flags):
    """extra without any of `flags` (each followed by its value, if any)."""
    out, skip = [], False
    for a in extra:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = a not in ("--cluster-secret-optional",)
            continue
        out.append(a)
    return out


def _roll(cluster, flags):
    """Restart every node in turn (the leader last) with `flags` in place of
    its secret and password flags."""
    lid = cluster.wait_leader()
    for i in sorted(cluster.ids, key=lambda i: i == lid):
        def new(old):
            node = type(old)(cluster, old.id)
            node.extra = _without(old.extra, "--cluster-secret-file", "--cluster-secret-optional",
                                  "--requirepass-file") + list(flags)
            return node
        replace_node(cluster, i, new)


def test_a_cluster_secret_is_introduced_then_rotated_while_clients_write(tmp_path):
    root = str(tmp_path)
    cluster = Cluster(root, n=3, heartbeat_ms=50, election_ms=500).start()
    writer = Writer(cluster)
    try:
        cluster.wait_leader()
        writer.start()
        rolls = [
            # Introducing one: first every node takes it but lets in peers without.
            ["--cluster-secret-file", _file(root, "intro", S1), "--cluster-secret-optional"],
            ["--cluster-secret-file", _file(root, "s1", S1)],
            # Replacing it: accept both proving the old, then proving the new, then the new.
            ["--cluster-secret-file", _file(root, "s1s2", S1 + b"\n" + S2)],
            ["--cluster-secret-file", _file(root, "s2s1", S2 + b"\n" + S1)],
            ["--cluster-secret-file", _file(root, "s2", S2)],
        ]
        for flags in rolls:
            count = len(writer.acked)
            _roll(cluster, flags)
            until(lambda: len(writer.acked) > count + 50, f"writes after the roll to {flags}", 60)
        writer.stop()
        check_every_acked_write(cluster, writer)
        logs = "".join(n.log_tail(2000) for n in cluster.nodes.values())
        assert "let in because --cluster-secret-optional" in logs
        assert S1.decode() not in logs and S2.decode() not in logs
    finally:
        writer.stop()
        cluster.stop()


def test_a_client_password_is_rotated_without_refusing_clients(tmp_path):
    root = str(tmp_path)
    old, new = b"old password", b"new password"
    cluster = Cluster(root, n=3, heartbeat_ms=50, election_ms=500,
                      extra_args=["--requirepass-file", _file(root, "p0", old)])
    # The harness's own INFO and RAFT.* calls AUTH with this.
    resp_client.use_password(old)
    cluster.start()
    try:
        lid = cluster.wait_leader()
        def client(node_id, password):
            return redis.Redis(host="127.0.0.1", port=cluster.nodes[node_id].client_port,
                               password=password.decode(), socket_timeout=10)
        assert client(lid, old).set("a", "1") is True
        both = _file(root, "p1", old + b"\n" + new)
        for i in cluster.ids:
            # Each restarted node takes both; the others still take the old one.
            def restarted(node):
                n = type(node)(cluster, node.id)
                n.extra = _without(node.extra, "--requirepass-file") + ["--requirepass-file",
                                                                          both]
                return n
            replace_node(cluster, i, restarted)
            assert client(i, new).ping() and client(i, old).ping()
        lid = cluster.wait_leader()
        assert client(lid, new).set("b", "2") is True
        final = _file(root, "p2", new)
        resp_client.use_password(new)   # clients move to the new one before the last roll
        for i in cluster.ids:
            def restarted(node):
                n = type(node)(cluster, node.id)
                n.extra = _without(node.extra, "--requirepass-file") + ["--requirepass-file",
                                                                          final]
                return n
            replace_node(cluster, i, restarted)
        for i in cluster.ids:
            assert client(i, new).ping()
            with pytest.raises(redis.AuthenticationError):
                client(i, old).ping()
        lid = cluster.wait_leader()
        assert client(lid, new).mget("a", "b") == [b"1", b"2"]
    finally:
        cluster.stop()
        resp_client.use_password(None)
