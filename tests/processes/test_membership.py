"""Membership changes with real node processes: a node started with --join
waits outside the configuration, is added (learner, then voter once caught
up) and removed with RAFT.NODE, and restarts as what its data dir says;
`python -m raftfast.cluster add/remove` grows and shrinks a running cluster."""
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.support import REPO
from tests.support.cluster_waits import wait_info
from tests.support.harness import Cluster, NodeProc, free_base_port
from tests.support.members import add_node_slot
from tests.support.wait import until

pytestmark = pytest.mark.multiprocess


DEADLINE = 30.0  # liveness bound for waits, not a timing assertion


def test_a_joining_node_stays_outside_until_added_and_a_restart_is_the_same(root):
    c = Cluster(root, n=1)
    joiner = add_node_slot(c, 7)
    try:
        joiner.start()
        info = joiner.info()
        assert info["raft_role"] == "joining"
        assert info["raft_voters"] == "" and info["raft_learners"] == ""
        assert joiner.raw("SET", "k", "v") == b"-CLUSTERDOWN No raft leader"
        assert joiner.kill(signal.SIGTERM) == 0
        members = json.load(open(os.path.join(root, "node7", "members")))
        assert members == {"voters": [], "join": True}
        # Restarted, with or without --join: still waiting to be added.
        joiner.extra = []
        joiner.start()
        assert joiner.info()["raft_role"] == "joining"
    finally:
        joiner.kill()


def test_add_a_joining_node_then_remove_it(make_cluster):
    c = make_cluster(n=1)
    joiner = add_node_slot(c, 2)
    try:
        leader = c.nodes[c.wait_leader()]
        assert leader.raw("SET", "before", "1") == b"+OK"
        joiner.start()
        assert leader.raw("RAFT.NODE", "ADD", "2", c.peer_url(2)) == b"+OK"
        # Promoted once caught up: both nodes say so, and the joiner has
        # the write from before it joined.
        wait_info(leader, lambda i: i["raft_voters"] == "1,2", "node 2 to become a voter",
                  DEADLINE)
        wait_info(joiner, lambda i: i["raft_voters"] == "1,2", "node 2 to see itself a voter",
                  DEADLINE)
        assert joiner.info()["raft_role"] == "follower"
        assert leader.raw("SET", "after", "2") == b"+OK"  # a quorum of two: node 2 acked it
        applied = int(leader.info()["raft_last_applied"])
        wait_info(joiner, lambda i: int(i["raft_last_applied"]) >= applied,
                  "node 2 to apply the log", DEADLINE)

        # A restart of the added node with --join is just a restart.
        assert joiner.kill(signal.SIGTERM) == 0
        joiner.start()
        info = joiner.info()
        assert info["raft_voters"] == "1,2" and int(info["raft_last_applied"]) >= 0
        wait_info(joiner, lambda i: int(i["raft_last_applied"]) >= applied,
                  "node 2 to apply its log again after a restart", DEADLINE)
        # Two voters without node 2 had no quorum, so either may lead now;
        # the rest is about removing a follower.
        if c.wait_leader() == 2:
            assert joiner.raw("RAFT.TRANSFER_LEADER", "1") == b"+OK"
        assert c.wait_leader() == 1

        assert leader.raw("RAFT.NODE", "REMOVE", "2") == b"+OK"
        info = leader.info()
        assert info["raft_voters"] == "1" and info["raft_learners"] == ""
        term = info["raft_current_term"]
        assert leader.raw("SET", "alone", "3") == b"+OK"  # a quorum of one again
        # The removed node may never hear of its removal; it campaigns, and
        # the cluster ignores it: the leader keeps its term and its writes.
        wait_info(joiner, lambda i: i["raft_role"] in ("precandidate", "candidate"),
                  "the removed node to campaign", DEADLINE)
        assert leader.raw("SET", "still", "4") == b"+OK"
        info = leader.info()
        assert info["raft_role"] == "leader" and info["raft_current_term"] == term
    finally:
        joiner.kill()


def test_the_cluster_command_adds_a_node_and_removes_the_leader(tmp_path):
    data = tmp_path / "d"
    base = free_base_port(6)
    env = dict(os.environ, PYTHONPATH=REPO)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "raftfast.cluster", "--nodes", "3", "--base-port", str(base),
         "--data-dir", str(data), "--fsync", "never", "--heartbeat-interval", "50",
         "--election-timeout", "500"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)

    def control(*argv):
        r = subprocess.run([sys.executable, "-m", "raftfast.cluster", *argv,
                            "--data-dir", str(data)], capture_output=True, text=True,
                           timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout

    class Client(NodeProc):
        def __init__(self, i):
            self.id, self.port = i, base + i

        @property
        def client_port(self):
            return self.port

    try:
        for line in launcher.stdout:
            if "serving" in line:
                break
        else:
            raise AssertionError(launcher.stderr.read())
        out = control("add")
        assert f"tcp://127.0.0.1:{base + 4}" in out and out.splitlines()[1].split()[0] == "4"
        nodes = {i: Client(i) for i in (1, 2, 3, 4)}
        info4 = nodes[4].info()
        assert info4["raft_voters"] == "1,2,3,4"
        leader = int(info4["raft_leader_id"])
        assert nodes[leader].raw("SET", "k", "v") == b"+OK"

        out = control("remove", str(leader))
        rest = sorted(int(l.split()[0]) for l in out.splitlines()[1:])
        assert rest == sorted(set((1, 2, 3, 4)) - {leader})
        # The remaining nodes elect a leader among themselves and keep the data.
        new = until(lambda: next((i for i in rest if (nodes[i].info() or {}).get(
            "raft_role") == "leader"), None), "a leader among the remaining nodes", DEADLINE)
        assert nodes[new].info()["raft_voters"] == ",".join(map(str, rest))
        assert nodes[new].raw("GET", "k") == b"$1"
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=DEADLINE) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        launcher.stdout.close()
        launcher.stderr.close()
