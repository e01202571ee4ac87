"""InstallSnapshot end to end with real node processes: the nodes take
snapshots every few hundred entries and compact their logs behind them; a
follower that was down while the log moved far past it catches up through
the leader's snapshot, streamed in chunks, and then from the log."""
import os

import pytest

from tests.support.cluster_waits import leader_command, wait_info
from tests.support.members import add_node_slot
from tests.support.node_info import counter, member_ids
from tests.support.wait import until

SNAPSHOT_ENTRIES = 150
TRAILING = 40
# Values of about 1 KiB: the snapshot is several 256 KiB chunks.
PAD = b"x" * 1000


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


SNAPSHOT_FLAGS = ("--snapshot-entries", str(SNAPSHOT_ENTRIES),
                  "--snapshot-trailing", str(TRAILING))


@pytest.fixture
def cluster(make_cluster, monkeypatch):
    # Small WAL segments, so compaction really deletes some.
    monkeypatch.setenv("RAFTFAST_WAL_SEGMENT_BYTES", "65536")
    return make_cluster(extra_args=SNAPSHOT_FLAGS)


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
    info = wait_info(leader, lambda inf: int(inf["raft_first_log_index"]) > behind + 1,
                     "the leader to compact its log", timeout=60)
    assert int(info["raft_snapshot_index"]) >= SNAPSHOT_ENTRIES
    assert counter(leader, "raftfast_snapshots_taken") >= 1

    follower.start()
    commit = int(leader.info()["raft_commit_index"])
    got = cluster.wait_applied(commit, ids=[follower.id], timeout=60)[follower.id]
    assert int(got["raft_snapshot_index"]) > behind
    assert int(got["raft_first_log_index"]) > behind + 1
    assert counter(follower, "raftfast_snapshots_installed") >= 1
    assert counter(follower, "raftfast_snapshot_bytes_received") > 2 * 256 * 1024  # several chunks
    until(lambda: counter(leader, "raftfast_snapshots_sent") >= 1,
          "the leader to hear that the snapshot is in", timeout=60)

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
def proxied(make_cluster, monkeypatch):
    monkeypatch.setenv("RAFTFAST_WAL_SEGMENT_BYTES", "1048576")
    return make_cluster(proxied=True, extra_args=SNAPSHOT_FLAGS)


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
    wait_info(leader, lambda inf: int(inf["raft_first_log_index"]) > 60,
              "the leader to compact its log", timeout=60)
    # Slow both directions so the transfer takes a while (acks come back
    # 2 x 60 ms after each chunk: the window of 1 MiB moves ~8 MB/s).
    c.proxy.delay(leader_id, follower.id, 60)
    c.proxy.delay(follower.id, leader_id, 60)
    follower.start()
    # Cut once the follower holds more than a window: the leader has heard
    # an ack by then (the window opens only after the first one).
    until(lambda: counter(follower, "raftfast_snapshot_bytes_received") > 1 << 20,
          "the transfer to be under way", timeout=60)
    # The link stays cut until the leader has tried it again and been
    # refused: by then it knows the connection, and the chunks in it, are gone.
    refused = c.proxy.stats(leader_id, follower.id).refused
    c.proxy.cut(leader_id, follower.id)
    until(lambda: c.proxy.stats(leader_id, follower.id).refused > refused,
          "the leader to redial the cut link")
    c.proxy.heal(leader_id, follower.id)
    c.proxy.heal(follower.id, leader_id)
    commit = int(leader.info()["raft_commit_index"])
    got = c.wait_applied(commit, ids=[follower.id], timeout=90)[follower.id]
    assert int(got["raft_snapshot_index"]) > 50
    assert follower.keys() == len(model)
    assert counter(follower, "raftfast_snapshots_installed") >= 1
    with open(leader.log_path) as f:
        resumed = [int(line.split("resending from offset ")[1].split()[0])
                   for line in f if "resending from offset" in line]
    assert resumed and max(resumed) > 0, resumed


def test_a_node_joining_a_compacted_cluster_starts_from_a_snapshot(cluster):
    """RAFT.NODE ADD of a --join node when the log no longer starts at 1: the
    learner gets the snapshot (a node outside its own configuration accepts
    one from the leader), then the log, and is promoted."""
    leader_id = cluster.wait_leader()
    leader = cluster.nodes[leader_id]
    model = {}
    write(leader.client(), model, 0, 1200)
    wait_info(leader, lambda inf: int(inf["raft_first_log_index"]) > 1,
              "the leader to compact its log", timeout=60)
    newcomer = add_node_slot(cluster, 4, extra=("--join", *SNAPSHOT_FLAGS))
    newcomer.start()
    _, reply = leader_command(cluster, "RAFT.NODE", "ADD", 4, cluster.peer_url(4), exclude=(4,))
    assert reply == b"+OK", reply
    info = wait_info(newcomer, lambda i: member_ids(i["raft_voters"]) == {1, 2, 3, 4},
                     "voters 1, 2, 3, 4", timeout=60)
    assert int(info["raft_snapshot_index"]) > 1
    assert counter(newcomer, "raftfast_snapshots_installed") == 1
    write(leader.client(), model, 1200, 1300)
    cluster.wait_applied(int(leader.info()["raft_commit_index"]), timeout=60)
    assert newcomer.keys() == leader.keys() == len(model)
