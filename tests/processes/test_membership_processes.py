"""Membership changes on real node processes while clients write: a node
joins (--join, RAFT.NODE ADD, promoted by the leader), then the leader is
removed; every operation the clients saw is checked for linearizability
(tests/support/chaos.py's checks), and the removed node, left running, must not
disturb the cluster."""
import shutil
import tempfile
import threading

import pytest

from tests.support.chaos import ScheduleResult, check
from tests.support.chaos_workload import Keyspace, WorkloadClient, final_reads
from tests.support.cluster_waits import leader_command, wait_info
from tests.support.harness import Cluster
from tests.support.members import add_node_slot
from tests.support.node_info import counter, member_ids
from tests.support.wait import until

pytestmark = pytest.mark.multiprocess

HEARTBEAT_MS, ELECTION_MS = 50, 500
# Answers the clients get in each stretch of the run (before the join,
# between the join and the removal, after the removal): a history on
# every side of each change, 210 in all.
STRETCH_OPS = 70
# Heartbeat rounds of the new leader that the removed node is watched for.
# With the clients stopped, the leader's rounds are its periodic heartbeats
# (INFO stats raftfast_read_rounds counts every round), one per heartbeat
# interval, so 60 of them span three of the longest election timeouts
# (drawn from [T, 2T), 2T = 20 heartbeats): a removed node that still
# campaigned would have done so in that span, and its requests would have
# reached the others.
QUIET_ROUNDS = 3 * 2 * ELECTION_MS // HEARTBEAT_MS


def answered(clients):
    return sum(1 for c in clients for op in list(c.ops) if op.ret is not None)


def let_clients_work(clients, ops=STRETCH_OPS):
    """Wait until the clients have had `ops` more operations answered."""
    target = answered(clients) + ops
    until(lambda: answered(clients) >= target,
          lambda: f"{ops} more answers to the clients (have {answered(clients)}, want "
                  f"{target}; errors: {[e for c in clients for e in c.errors]})", timeout=60)


@pytest.mark.timeout(240)
def test_add_a_node_and_remove_the_leader_while_clients_write():
    root = tempfile.mkdtemp(prefix="rfm")  # short: unix socket paths are limited
    cluster = Cluster(root, n=3, transport="unix", heartbeat_ms=HEARTBEAT_MS,
                      election_ms=ELECTION_MS)
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
        let_clients_work(clients)

        # A node joins: a learner first, a voter once it caught up.
        newcomer.start()
        info = newcomer.info()
        assert info["raft_role"] == "joining" and info["raft_voters"] == ""
        _, reply = leader_command(cluster, "RAFT.NODE", "ADD", 4, cluster.peer_url(4),
                                  exclude=(4,))
        assert reply == b"+OK", reply
        for node in cluster.nodes.values():
            wait_info(node, lambda i: member_ids(i["raft_voters"]) == {1, 2, 3, 4},
                      "voters 1, 2, 3, 4")
        let_clients_work(clients)

        # The leader removes itself; another takes over.
        old = cluster.wait_leader()
        term_before = int(cluster.nodes[old].info()["raft_current_term"])
        _, reply = leader_command(cluster, "RAFT.NODE", "REMOVE", old)
        assert reply == b"+OK", reply
        new = cluster.wait_leader(exclude=(old,))
        assert new != old
        remaining = {1, 2, 3, 4} - {old}
        for i in remaining:
            wait_info(cluster.nodes[i], lambda inf: member_ids(inf["raft_voters"]) == remaining,
                      f"voters {sorted(remaining)}")
        let_clients_work(clients)
        stop.set()
        for c in clients:
            c.join(30)

        # The removed node still runs; for several election timeouts (see
        # QUIET_ROUNDS) it changes nobody's term or leader.
        settled = {i: cluster.nodes[i].info() for i in remaining}
        rounds = counter(cluster.nodes[new], "raftfast_read_rounds")
        until(lambda: counter(cluster.nodes[new], "raftfast_read_rounds") >= rounds + QUIET_ROUNDS,
              f"{QUIET_ROUNDS} heartbeat rounds of leader {new}")
        assert cluster.nodes[old].alive()
        for i in remaining:
            info = cluster.nodes[i].info()
            assert info["raft_current_term"] == settled[i]["raft_current_term"]
            assert info["raft_leader_id"] == str(new)
        assert int(settled[new]["raft_current_term"]) >= term_before

        # What the clients saw is linearizable, and nothing acknowledged is lost.
        ports = {i: cluster.client_ports[i] for i in remaining}
        last_reads = final_reads(ports, keyspace.used())
        finals = {op.key: op.result for op in last_reads}
        ops = [op for c in clients for op in c.ops] + last_reads
        result = ScheduleResult(config={}, faults={})
        check(result, ops, finals)
        errors = [e for c in clients for e in c.errors]
        assert not errors, errors
        assert not (result.violations or result.inconclusive or result.lost
                    or result.duplicated or result.unexpected), result
        clean = True
    finally:
        stop.set()
        for c in clients:
            c.join(30)
        codes = cluster.stop()
        if clean:
            assert all(code == 0 for code in codes.values()), codes
            shutil.rmtree(root, ignore_errors=True)
