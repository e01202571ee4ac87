"""Membership changes on real node processes while clients write: a node
joins (--join, RAFT.NODE ADD, promoted by the leader), then the leader is
removed; every operation the clients saw is checked for linearizability
(tests/support/chaos.py's checks), and the removed node, left running, must not
disturb the cluster."""
import shutil
import tempfile
import threading
import time

import pytest

from tests.support.chaos import ScheduleResult, check
from tests.support.chaos_workload import Keyspace, WorkloadClient, final_read
from tests.support.harness import Cluster, NodeProc, free_ports

pytestmark = pytest.mark.multiprocess


def add_node_slot(cluster, node_id, extra=("--join",)):
    """Room in the harness for one more node (not started): its ports, and
    --peer flags for everyone the harness knows."""
    client_port, peer_port = free_ports(2)
    cluster.ids.append(node_id)
    cluster.client_ports[node_id] = client_port
    cluster.peer_ports[node_id] = peer_port
    node = cluster.nodes[node_id] = NodeProc(cluster, node_id, list(extra))
    return node


def leader_command(cluster, *args, timeout=30, exclude=()):
    """Send a command to the leader, following redirects and retrying
    TRYAGAIN/CLUSTERDOWN until it answers something else."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            leader = cluster.wait_leader(timeout=max(1, deadline - time.monotonic()),
                                         exclude=exclude)
        except AssertionError:
            continue
        last = cluster.nodes[leader].raw(*args)
        if not last.startswith((b"-MOVED", b"-NOTLEADER", b"-TRYAGAIN", b"-CLUSTERDOWN")):
            return leader, last
        time.sleep(0.1)
    raise AssertionError(f"{args} got no answer but {last!r}")


def wait_info(node, cond, timeout=30):
    deadline = time.monotonic() + timeout
    info = None
    while time.monotonic() < deadline:
        info = node.info()
        if info and cond(info):
            return info
        time.sleep(0.05)
    raise AssertionError(f"node {node.id} never got there: {info}")


def ids(field):
    return {int(x) for x in field.split(",") if x}


@pytest.mark.timeout(240)
def test_add_a_node_and_remove_the_leader_while_clients_write():
    root = tempfile.mkdtemp(prefix="rfm")  # short: unix socket paths are limited
    cluster = Cluster(root, n=3, transport="unix", heartbeat_ms=50, election_ms=500)
    stop = threading.Event()
    clients = []
    clean = False
    try:
        cluster.start()
        cluster.wait_leader()
        newcomer = add_node_slot(cluster, 4)
        keyspace = Keyspace(registers=4, appends=4, lifetime=3.0)
        clients = [WorkloadClient(c, dict(cluster.client_ports), keyspace, f"members-{c}", stop)
                   for c in range(1, 5)]
        for c in clients:
            c.start()
        time.sleep(1.5)

        # A node joins: a learner first, a voter once it caught up.
        newcomer.start()
        info = newcomer.info()
        assert info["raft_role"] == "joining" and info["raft_voters"] == ""
        _, reply = leader_command(cluster, "RAFT.NODE", "ADD", 4, cluster.peer_url(4),
                                  exclude=(4,))
        assert reply == b"+OK", reply
        for node in cluster.nodes.values():
            wait_info(node, lambda i: ids(i["raft_voters"]) == {1, 2, 3, 4})
        time.sleep(1.5)

        # The leader removes itself; another takes over.
        old = cluster.wait_leader()
        term_before = int(cluster.nodes[old].info()["raft_current_term"])
        _, reply = leader_command(cluster, "RAFT.NODE", "REMOVE", old)
        assert reply == b"+OK", reply
        new = cluster.wait_leader(exclude=(old,))
        assert new != old
        remaining = {1, 2, 3, 4} - {old}
        for i in remaining:
            wait_info(cluster.nodes[i], lambda inf: ids(inf["raft_voters"]) == remaining)
        time.sleep(1.5)
        stop.set()
        for c in clients:
            c.join(30)

        # The removed node still runs; for several election timeouts it
        # changes nobody's term or leader.
        settled = {i: cluster.nodes[i].info() for i in remaining}
        time.sleep(3.0)
        assert cluster.nodes[old].alive()
        for i in remaining:
            info = cluster.nodes[i].info()
            assert info["raft_current_term"] == settled[i]["raft_current_term"]
            assert info["raft_leader_id"] == str(new)
        assert int(settled[new]["raft_current_term"]) >= term_before

        # What the clients saw is linearizable, and nothing acknowledged is lost.
        ports = {i: cluster.client_ports[i] for i in remaining}
        deadline = time.monotonic() + 60
        ops = [op for c in clients for op in c.ops]
        finals = {}
        for key in keyspace.used():
            final = final_read(ports, key, deadline)
            finals[key] = final.result
            ops.append(final)
        result = ScheduleResult(config={}, faults={})
        check(result, ops, finals)
        errors = [e for c in clients for e in c.errors]
        assert not errors, errors
        assert not (result.violations or result.inconclusive or result.lost
                    or result.duplicated or result.unexpected), result
        assert sum(1 for c in clients for op in c.ops if op.ret is not None) >= 200
        clean = True
    finally:
        stop.set()
        for c in clients:
            c.join(30)
        codes = cluster.stop()
        if clean:
            assert all(code == 0 for code in codes.values()), codes
            shutil.rmtree(root, ignore_errors=True)
