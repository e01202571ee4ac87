"""InstallSnapshot end to end with real node processes: the nodes take
snapshots every few hundred entries and compact their logs behind them; a
follower that was down while the log moved far past it catches up through
the leader's snapshot, streamed in chunks, and then from the log."""
import os
import time

import pytest

from tests.support.chaos import ProxiedCluster
from tests.support.harness import Cluster

SNAPSHOT_ENTRIES = 150
TRAILING = 40
# Values of about 1 KiB: the snapshot is several 256 KiB chunks.
PAD = b"x" * 1000


def stats(node):
    text = node.raw_bulk("INFO", "stats")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def wait_for(pred, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def write(client, model, lo, hi, pad=PAD):
    """SET key-i for i in [lo, hi), with some DELs and APPENDs mixed in, in
    pipelines; the model tracks what the cluster must hold."""
    for start in range(lo, hi, 100):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 100, hi)):
            k = b"key-%d" % (i % 700)
            if i % 11 == 0 and k in model:
                pipe.delete(k)
                model.pop(k)
            elif i % 7 == 0 and k in model:
                pipe.append(k, b"+%d" % i)
                model[k] += b"+%d" % i
            else:
                pipe.set(k, b"v%d" % i + pad)
                model[k] = b"v%d" % i + pad
        pipe.execute()


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    # Small WAL segments, so compaction really deletes some.
    monkeypatch.setenv("RAFTFAST_WAL_SEGMENT_BYTES", "65536")
    c = Cluster(str(tmp_path), n=3, extra_args=[
        "--snapshot-entries", str(SNAPSHOT_ENTRIES), "--snapshot-trailing", str(TRAILING)])
    try:
        yield c.start()
    finally:
        c.stop()


def test_a_follower_far_behind_catches_up_through_a_snapshot(cluster):
    leader_id = cluster.wait_leader()
    leader = cluster.nodes[leader_id]
    model = {}
    write(leader.client(), model, 0, 100)
    follower = cluster.nodes[next(i for i in cluster.ids if i != leader_id)]
    behind = int(cluster.wait_applied(int(leader.info()["raft_commit_index"]),
                                      ids=[follower.id])[follower.id]["raft_last_applied"])
    follower.kill()

    write(leader.client(), model, 100, 2500)
    # The leader's log no longer reaches back to what the follower has.
    info = wait_for(lambda: (lambda inf: inf if int(inf["raft_first_log_index"]) > behind + 1
                             else None)(leader.info()), "the leader to compact its log")
    assert int(info["raft_snapshot_index"]) >= SNAPSHOT_ENTRIES
    assert int(stats(leader)["raftfast_snapshots_taken"]) >= 1

    follower.start()
    commit = int(leader.info()["raft_commit_index"])
    got = cluster.wait_applied(commit, ids=[follower.id], timeout=60)[follower.id]
    assert int(got["raft_snapshot_index"]) > behind
    assert int(got["raft_first_log_index"]) > behind + 1
    st = stats(follower)
    assert int(st["raftfast_snapshots_installed"]) >= 1
    assert int(st["raftfast_snapshot_bytes_received"]) > 2 * 256 * 1024  # several chunks
    wait_for(lambda: int(stats(leader)["raftfast_snapshots_sent"]) >= 1,
             "the leader to hear that the snapshot is in")

    # It goes on from the log after the snapshot.
    write(leader.client(), model, 2500, 2700)
    commit = int(leader.info()["raft_commit_index"])
    cluster.wait_applied(commit, timeout=60)
    assert follower.keys() == leader.keys() == len(model)

    # Its data is the leader's: let it lead and read everything back.
    assert leader.client().execute_command("RAFT.TRANSFER_LEADER", follower.id) in (b"OK", "OK",
                                                                                     True)
    assert cluster.wait_leader() == follower.id
    c = follower.client()
    keys = sorted(model)
    for start in range(0, len(keys), 200):
        part = keys[start:start + 200]
        assert c.mget(part) == [model[k] for k in part]
    assert c.exists(b"key-never-written") == 0

    # A restart keeps it all: it recovers from its installed snapshot plus log.
    follower.kill()
    follower.start()
    cluster.wait_leader()
    got = cluster.wait_applied(commit, ids=[follower.id], timeout=60)[follower.id]
    assert int(got["raft_snapshot_index"]) > behind


@pytest.fixture
def proxied(tmp_path, monkeypatch):
    monkeypatch.setenv("RAFTFAST_WAL_SEGMENT_BYTES", "1048576")
    c = ProxiedCluster(str(tmp_path), n=3, extra_args=[
        "--snapshot-entries", str(SNAPSHOT_ENTRIES), "--snapshot-trailing", str(TRAILING)])
    try:
        yield c.start()
    finally:
        c.stop()


def log_has(node, text):
    try:
        with open(node.log_path, "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False


def test_a_transfer_cut_off_midway_resumes(proxied):
    """A snapshot of several MB crosses a slow link from the leader that is
    cut for a while once the follower has started receiving it: the leader
    goes on from what the follower has (a transfer does not restart from
    zero because a connection dropped), and the follower catches up."""
    c = proxied
    leader_id = c.wait_leader()
    leader = c.nodes[leader_id]
    follower = c.nodes[next(i for i in c.ids if i != leader_id)]
    model = {}
    pad = os.urandom(8000)  # ~8 KB a value: the file is ~5.5 MB
    write(leader.client(), model, 0, 50, pad)
    c.wait_applied(int(leader.info()["raft_commit_index"]), ids=[follower.id])
    follower.kill()
    write(leader.client(), model, 50, 1200, pad)
    wait_for(lambda: int(leader.info()["raft_first_log_index"]) > 60,
             "the leader to compact its log")
    # Slow both directions so the transfer takes a while (acks come back
    # 2 x 60 ms after each chunk: the window of 1 MiB moves ~8 MB/s).
    c.proxy.delay(leader_id, follower.id, 60)
    c.proxy.delay(follower.id, leader_id, 60)
    follower.start()
    # Cut once the follower holds more than a window: the leader has heard
    # an ack by then (the window opens only after the first one).
    wait_for(lambda: int(stats(follower).get("raftfast_snapshot_bytes_received", 0)) > 1 << 20,
             "the transfer to be under way")
    c.proxy.cut(leader_id, follower.id)
    time.sleep(0.5)
    c.proxy.heal(leader_id, follower.id)
    c.proxy.heal(follower.id, leader_id)
    commit = int(leader.info()["raft_commit_index"])
    got = c.wait_applied(commit, ids=[follower.id], timeout=90)[follower.id]
    assert int(got["raft_snapshot_index"]) > 50
    assert follower.keys() == len(model)
    assert int(stats(follower)["raftfast_snapshots_installed"]) >= 1
    with open(leader.log_path) as f:
        resumed = [int(line.split("resending from offset ")[1].split()[0])
                   for line in f if "resending from offset" in line]
    assert resumed and max(resumed) > 0, resumed


def test_a_node_joining_a_compacted_cluster_starts_from_a_snapshot(cluster):
    """RAFT.NODE ADD of a --join node when the log no longer starts at 1: the
    learner gets the snapshot (a node outside its own configuration accepts
    one from the leader), then the log, and is promoted."""
    from tests.processes.test_membership_processes import add_node_slot, ids, leader_command, wait_info
    leader_id = cluster.wait_leader()
    leader = cluster.nodes[leader_id]
    model = {}
    write(leader.client(), model, 0, 1200)
    wait_for(lambda: int(leader.info()["raft_first_log_index"]) > 1,
             "the leader to compact its log")
    newcomer = add_node_slot(cluster, 4, extra=(
        "--join", "--snapshot-entries", str(SNAPSHOT_ENTRIES),
        "--snapshot-trailing", str(TRAILING)))
    newcomer.start()
    _, reply = leader_command(cluster, "RAFT.NODE", "ADD", 4, cluster.peer_url(4), exclude=(4,))
    assert reply == b"+OK", reply
    info = wait_info(newcomer, lambda i: ids(i["raft_voters"]) == {1, 2, 3, 4}, timeout=60)
    assert int(info["raft_snapshot_index"]) > 1
    assert int(stats(newcomer)["raftfast_snapshots_installed"]) == 1
    write(leader.client(), model, 1200, 1300)
    cluster.wait_applied(int(leader.info()["raft_commit_index"]), timeout=60)
    assert newcomer.keys() == leader.keys() == len(model)
