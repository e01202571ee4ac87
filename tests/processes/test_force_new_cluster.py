"""--force-new-cluster on real node processes: a majority lost for good, the
survivor rebuilt as a cluster of one, then grown back with fresh nodes."""
import os
import shutil
import signal
import tempfile

import pytest

from raftfast.runtime.force_new_cluster import force_new_cluster
from raftfast.runtime.storage import Storage
from tests.support.cluster_waits import leader_command, wait_info
from tests.support.harness import Cluster
from tests.support.members import add_node_slot
from tests.support.node_info import member_ids

pytestmark = pytest.mark.multiprocess

KEYS = 50


def write_keys(node, lo, hi, prefix="k"):
    c = node.client()
    try:
        for i in range(lo, hi):
            assert c.set(f"{prefix}{i}", f"v{i}") is True
    finally:
        c.close()


def read_keys(node, lo, hi, prefix="k"):
    c = node.client()
    try:
        return [c.get(f"{prefix}{i}") for i in range(lo, hi)]
    finally:
        c.close()


@pytest.mark.timeout(120)
def test_survivor_of_a_lost_majority_serves_alone_and_grows_back():
    root = tempfile.mkdtemp(prefix="rffnc")
    cluster = Cluster(root, n=3, transport="unix", heartbeat_ms=50, election_ms=500)
    try:
        cluster.start()
        leader = cluster.wait_leader()
        write_keys(cluster.nodes[leader], 0, KEYS)
        # The survivor must hold every acknowledged write: pick a node that
        # applied all of them, and lose the other two for good.
        applied = int(cluster.nodes[leader].info()["raft_commit_index"])
        cluster.wait_applied(applied)
        survivor = next(i for i in cluster.ids if i != leader)
        before = cluster.nodes[survivor].info()
        term = int(before["raft_current_term"])
        lost = [i for i in cluster.ids if i != survivor]
        for i in lost:
            cluster.nodes[i].kill()
            shutil.rmtree(os.path.join(root, f"node{i}"))
        node = cluster.nodes[survivor]
        node.kill()

        node.extra.append("--force-new-cluster")
        node.start()
        info = wait_info(node, lambda i: i["raft_role"] == "leader", "to lead alone")
        assert member_ids(info["raft_voters"]) == {survivor}
        assert info["raft_learners"] == ""
        # The configuration entry follows the old log, in a term of its own.
        assert int(info["raft_last_log_index"]) > int(before["raft_last_log_index"])
        assert int(info["raft_last_log_term"]) > term
        log = node.log_tail(200)
        assert "WARNING" in log and "--force-new-cluster" in log and "LOST for good" in log
        assert read_keys(node, 0, KEYS) == [f"v{i}".encode() for i in range(KEYS)]
        write_keys(node, KEYS, 2 * KEYS)

        # The change is durable: a restart without the flag is still alone.
        assert node.kill(signal.SIGTERM) == 0
        node.extra.remove("--force-new-cluster")
        node.start()
        info = wait_info(node, lambda i: i["raft_role"] == "leader", "to lead alone again")
        assert member_ids(info["raft_voters"]) == {survivor}
        assert read_keys(node, 0, 2 * KEYS) == [f"v{i}".encode() for i in range(2 * KEYS)]

        # Grown back with fresh nodes under new ids.
        for new_id in (4, 5):
            newcomer = add_node_slot(cluster, new_id)
            newcomer.start()
            _, reply = leader_command(cluster, "RAFT.NODE", "ADD", new_id,
                                      cluster.peer_url(new_id), exclude=(new_id,))
            assert reply == b"+OK", reply
            wait_info(node, lambda i, n=new_id: n in member_ids(i["raft_voters"]),
                      f"node {new_id} promoted to voter")
        write_keys(node, 2 * KEYS, 3 * KEYS)
        index = int(node.info()["raft_commit_index"])
        cluster.wait_applied(index, ids=[survivor, 4, 5])
        assert cluster.nodes[5].keys() == 3 * KEYS
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_force_new_cluster_commits_the_whole_log_and_is_needed_once(tmp_path):
    """On the data dir itself: entries past the known commit index become
    committed by the new configuration entry, in a new term; a second run
    (the flag left on) changes nothing."""
    from raftfast.core.messages import ENTRY_NORMAL, HardState, encode_config
    d = str(tmp_path / "n1")
    with Storage.open(d, 1, "c") as s:
        s.save_members([1, 2, 3], cluster_version=2)
        block = b"".join(len(b"x").to_bytes(4, "little") + (3).to_bytes(8, "little")
                         + bytes([ENTRY_NORMAL]) + b"x" for _ in range(5))
        s.append(1, block, 5)
        s.save_hard_state(HardState(3, 2, 3))  # entries 4 and 5 not known committed
        s.sync()
    with Storage.open(d, 1, "c") as s:
        forced = force_new_cluster(s, 1)
    assert forced.changed and forced.old_voters == {1, 2, 3}
    assert (forced.known_commit, forced.last_index, forced.index, forced.term) == (3, 5, 6, 4)
    with Storage.open(d, 1, "c") as s:
        assert s.hard_state == HardState(4, 1, 6)
        assert s.entry_log.last_index == 6 and s.entry_log.term(6) == 4
        assert s.entry_log.find_type(6, 7, 2) == [(6, encode_config({1}, (), {}, 2))]
        again = force_new_cluster(s, 1)
    assert not again.changed
    with Storage.open(d, 1, "c") as s:
        assert s.entry_log.last_index == 6


def test_force_new_cluster_refuses_a_dir_without_state(tmp_path):
    from raftfast.node import main
    d = tmp_path / "empty"
    rc = main(["--id", "1", "--data-dir", str(d), "--listen", f"unix://{tmp_path}/p.sock",
               "--client", f"unix://{tmp_path}/c.sock", "--force-new-cluster"])
    assert rc == 1
    assert not d.exists()
