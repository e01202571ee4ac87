"""A follower restarted behind a compacted log catches up through a snapshot
without stalling, every time: the reported scenario (3 nodes over TCP,
--snapshot-entries 20 --snapshot-trailing 5, one follower killed while 200
keys are written, then restarted) repeated, each round timed from the
restarted node's ready line to its applied index reaching the leader's
commit, and followed by a leadership transfer to it."""
import time

from tests.support.cluster_waits import wait_info

ROUNDS = 12
ELECTION_MS = 500
# The snapshot here is a few KiB: its transfer is one chunk, and a round
# takes about 50 ms on an idle machine; what the bound allows beyond one
# election timeout is for a busy two-core machine.  A first chunk dropped
# and resent (1 s later) cannot fit, nor can a stall on the leader's
# ten-election-timeout rule (5 s).
TRANSFER_ALLOWANCE_S = 0.25
SNAPSHOT_FLAGS = ("--snapshot-entries", "20", "--snapshot-trailing", "5")


def write_keys(client, round_no, n=200):
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.set(b"r%d-key-%d" % (round_no, i), b"v%d" % i)
    pipe.execute()


def test_a_restarted_follower_behind_a_compacted_log_catches_up_promptly(make_cluster):
    cluster = make_cluster(transport="tcp", election_ms=ELECTION_MS, extra_args=SNAPSHOT_FLAGS)
    bound = ELECTION_MS / 1000 + TRANSFER_ALLOWANCE_S
    took = []
    for round_no in range(ROUNDS):
        leader_id = cluster.wait_leader()
        leader = cluster.nodes[leader_id]
        follower = cluster.nodes[[i for i in cluster.ids if i != leader_id][round_no % 2]]
        applied = int(follower.info()["raft_last_applied"])
        follower.kill()
        write_keys(leader.client(), round_no)
        wait_info(leader, lambda inf: int(inf["raft_first_log_index"]) > applied + 1,
                  "the leader to compact past the stopped follower", timeout=30)
        commit = int(leader.info()["raft_commit_index"])

        follower.start()
        started = time.monotonic()
        cluster.wait_applied(commit, ids=[follower.id], timeout=30)
        took.append(time.monotonic() - started)
        assert took[-1] <= bound, (f"round {round_no}: caught up after {took[-1]:.2f} s "
                                   f"(bound {bound} s); all rounds: {took}\n"
                                   f"{leader.log_tail(40)}")

        # Caught up means it can lead at once: a transfer to it succeeds.
        reply = leader.client().execute_command("RAFT.TRANSFER_LEADER", follower.id)
        assert reply in (b"OK", "OK", True), reply
        assert cluster.wait_leader(timeout=10) == follower.id
