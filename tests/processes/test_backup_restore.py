"""`python -m raftfast.node backup` and `restore` on real node processes: a
backup taken while a client writes holds every write acknowledged before it
started and is a consistent prefix; restored into a fresh data dir under a
new cluster id, it serves every key and grows with a --join node; damaged
backups are refused."""
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

from raftfast._kv import KVStore
from raftfast.core.messages import encode_config
from raftfast.runtime.snapshot import load_snapshot, write_snapshot
from tests.support.cluster_waits import leader_command, wait_info
from tests.support.harness import Cluster
from tests.support.members import add_node_slot
from tests.support.node_info import member_ids
from tests.support.wait import until

pytestmark = pytest.mark.multiprocess

NEW_CLUSTER = "restored-test"


def node_command(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "raftfast.node", *args], capture_output=True,
                          text=True, timeout=timeout)


class SequentialWriter(threading.Thread):
    """SET seq:<i> <i> for i = 0, 1, ... one at a time on one connection:
    `acked` writes were acknowledged, so a consistent backup holds
    seq:0 .. seq:<m-1> for some m, and nothing past it."""

    def __init__(self, node):
        super().__init__(daemon=True)
        self.client = node.client()
        self.acked = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                assert self.client.set(f"seq:{self.acked}", str(self.acked)) is True
                self.acked += 1
        except Exception as e:  # the test reports it
            self.error = e
        finally:
            self.client.close()


def backup_seq_numbers(path):
    kv, _ = load_snapshot(path)
    return sorted(int(k[4:]) for k, _ in kv.items() if k.startswith(b"seq:"))


@pytest.mark.timeout(120)
def test_backup_under_writes_restores_into_a_new_cluster_that_grows():
    root = tempfile.mkdtemp(prefix="rfbk")
    root2 = tempfile.mkdtemp(prefix="rfrs")
    cluster = Cluster(root, n=3, transport="unix", heartbeat_ms=50, election_ms=500,
                      extra_args=["--snapshot-entries", "300", "--snapshot-trailing", "50"])
    restored = Cluster(root2, n=1, transport="unix", heartbeat_ms=50, election_ms=500,
                       extra_args=["--cluster-id", NEW_CLUSTER])
    writer = None
    try:
        cluster.start()
        leader = cluster.wait_leader()
        follower = next(i for i in cluster.ids if i != leader)
        assert cluster.nodes[follower].raw("RAFT.BACKUP").startswith(b"-MOVED 0 ")
        writer = SequentialWriter(cluster.nodes[leader])
        writer.start()
        until(lambda: writer.acked >= 500 or writer.error, "500 writes acknowledged")
        acked_before = writer.acked
        path = os.path.join(root, "backup.rfb")
        # Asked of a follower: the command follows the redirect to the leader.
        done = node_command("backup", "--client",
                            f"tcp://127.0.0.1:{cluster.nodes[follower].client_port}", path)
        assert done.returncode == 0, done.stderr
        written_during = writer.acked
        assert writer.error is None
        assert "backup of index" in done.stdout and path in done.stdout
        seqs = backup_seq_numbers(path)
        # Every write acknowledged before the backup started, and a prefix.
        assert len(seqs) >= acked_before
        assert seqs == list(range(len(seqs)))
        until(lambda: writer.acked > written_during + 100 or writer.error,
              "writes to go on after the backup")
        writer.stop.set()
        writer.join()
        assert writer.error is None
        assert not [n for n in os.listdir(root) if n.startswith(".backup.rfb")]

        # Restored into a fresh data dir, under a new cluster id.
        data_dir = os.path.join(root2, "node1")
        done = node_command("restore", path, "--data-dir", data_dir, "--id", "1",
                            "--cluster-id", NEW_CLUSTER)
        assert done.returncode == 0, done.stderr
        assert f"cluster '{NEW_CLUSTER}'" in done.stdout
        again = node_command("restore", path, "--data-dir", data_dir, "--id", "1")
        assert again.returncode == 1 and "is not empty" in again.stderr
        restored.start()
        node = restored.nodes[1]
        info = wait_info(node, lambda i: i["raft_role"] == "leader", "to lead its new cluster")
        assert member_ids(info["raft_voters"]) == {1}
        assert info["raft_cluster_id"] == NEW_CLUSTER
        c = node.client()
        try:
            values = c.mget([f"seq:{i}" for i in range(len(seqs))])
            assert values == [str(i).encode() for i in range(len(seqs))]
            assert c.get(f"seq:{len(seqs)}") is None
            assert c.dbsize() == len(seqs)
            assert c.set("after-restore", "1") is True
        finally:
            c.close()

        # A member added to it receives the data.
        newcomer = add_node_slot(restored, 2, extra=("--join", "--cluster-id", NEW_CLUSTER))
        newcomer.start()
        _, reply = leader_command(restored, "RAFT.NODE", "ADD", 2, restored.peer_url(2),
                                  exclude=(2,))
        assert reply == b"+OK", reply
        wait_info(node, lambda i: member_ids(i["raft_voters"]) == {1, 2}, "voters 1 and 2")
        index = int(node.info()["raft_commit_index"])
        restored.wait_applied(index)
        assert newcomer.keys() == len(seqs) + 1
    finally:
        if writer is not None:
            writer.stop.set()
            writer.join(timeout=10)
        cluster.stop()
        restored.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(root2, ignore_errors=True)


@pytest.fixture
def backup_file(tmp_path):
    kv = KVStore.from_dict({b"k%d" % i: b"v%d" % i for i in range(2000)})
    path = str(tmp_path / "good.rfb")
    write_snapshot(kv, path, 1234, 7, encode_config({1, 2, 3}, (), {}, 2))
    return path


def _damaged(tmp_path, good, name, change):
    data = bytearray(open(good, "rb").read())
    data = change(data)
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_restore_refuses_a_truncated_or_corrupted_backup(tmp_path, backup_file):
    size = os.path.getsize(backup_file)
    cases = {
        "truncated": (lambda d: d[:size // 2], "truncated"),
        "no-end": (lambda d: d[:size - 4], "truncated"),
        "flipped": (lambda d: d[:size // 2] + bytes([d[size // 2] ^ 0xFF]) + d[size // 2 + 1:],
                    "checksum mismatch"),
        "not-a-backup": (lambda d: b"hello world\n", "not a raftfast snapshot"),
    }
    for name, (change, why) in cases.items():
        path = _damaged(tmp_path, backup_file, name, change)
        data_dir = tmp_path / f"dir-{name}"
        done = node_command("restore", path, "--data-dir", str(data_dir), "--id", "1")
        assert done.returncode == 1, (name, done)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], (name, lines)
        assert "is not a usable backup" in lines[0]
        assert not data_dir.exists(), name
    done = node_command("restore", backup_file, "--data-dir", str(tmp_path / "ok"), "--id", "5")
    assert done.returncode == 0, done.stderr
    assert "cluster 'restored-" in done.stdout and "2000 keys" in done.stdout


def test_backup_command_usage_and_unreachable(tmp_path):
    done = node_command("backup", str(tmp_path / "f"))
    assert done.returncode == 2 and "--client" in done.stderr
    done = node_command("backup", "--client", f"unix://{tmp_path}/none.sock", str(tmp_path / "f"))
    assert done.returncode == 1 and done.stderr.startswith("error: cannot connect")
    assert not (tmp_path / "f").exists()
