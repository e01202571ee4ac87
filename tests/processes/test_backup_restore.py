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
from tests.support.node_info import info_stats, member_ids
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


@pytest.mark.timeout(120)
def test_backups_asked_together_with_snapshots_off_are_each_a_consistent_prefix():
    """--snapshot-entries 0: the node takes no snapshot of its own, and a
    backup takes one anyway; three backups asked at once, while a client
    writes, each hold every write acknowledged before they started."""
    root = tempfile.mkdtemp(prefix="rfbc")
    cluster = Cluster(root, n=3, transport="unix", heartbeat_ms=50, election_ms=500,
                      extra_args=["--snapshot-entries", "0"])
    writer = None
    try:
        cluster.start()
        leader = cluster.wait_leader()
        writer = SequentialWriter(cluster.nodes[leader])
        writer.start()
        until(lambda: writer.acked >= 300 or writer.error, "300 writes acknowledged")
        acked_before = writer.acked
        url = f"tcp://127.0.0.1:{cluster.nodes[leader].client_port}"
        paths = [os.path.join(root, f"b{k}.rfb") for k in range(3)]
        procs = [subprocess.Popen([sys.executable, "-m", "raftfast.node", "backup", "--client",
                                   url, p], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for p in paths]
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        writer.stop.set()
        writer.join()
        assert writer.error is None
        for path in paths:
            seqs = backup_seq_numbers(path)
            assert len(seqs) >= acked_before and seqs == list(range(len(seqs)))
    finally:
        if writer is not None:
            writer.stop.set()
            writer.join(timeout=10)
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


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


@pytest.mark.parametrize("args, says", [
    (("backup", "--client", "bogus://x", "out"), "argument --client: bad address 'bogus://x'"),
    (("restore", "--id", "0", "--data-dir", "d", "f"), "argument --id: node ids are from 1 to"),
    (("restore", "--id", "1", "--cluster-id", "", "--data-dir", "d", "f"),
     "argument --cluster-id: must not be empty"),
])
def test_backup_and_restore_word_a_bad_flag_as_the_node_does(tmp_path, args, says):
    done = node_command(*args)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert done.stderr.count("--cluster-id") <= 1 and "Traceback" not in done.stderr
    assert not os.path.exists("d") and not os.path.exists("out")


@pytest.mark.timeout(120)
def test_backup_over_tls_with_a_password_passes_the_output_buffer_limit(tmp_path):
    """A backup larger than --client-output-buffer-limit, from a tls://
    client port that wants a client certificate and a password."""
    import redis

    from raftfast.launcher.certs import issue, make_ca
    root = tempfile.mkdtemp(prefix="rfbt")
    pki = str(tmp_path)
    ca = make_ca(pki)
    node_cert, node_key = issue(pki, "node1", ca)
    client_cert, client_key = issue(pki, "client", ca)
    ca_file = os.path.join(pki, "ca.crt")
    password = tmp_path / "pass"
    password.write_text("s3cret-password\n")
    password.chmod(0o600)
    cluster = Cluster(root, n=1, transport="unix")
    port = cluster.client_ports[1]
    cluster.nodes[1].extra += ["--client", f"tls://127.0.0.1:{port}",
                               "--tls-cert-file", node_cert, "--tls-key-file", node_key,
                               "--tls-ca-cert-file", ca_file,
                               "--requirepass-file", str(password),
                               "--client-output-buffer-limit", "64kb"]
    try:
        cluster.start()
        c = redis.Redis(port=port, ssl=True, ssl_ca_certs=ca_file, ssl_certfile=client_cert,
                        ssl_keyfile=client_key, password="s3cret-password", socket_timeout=10)
        value = b"v" * 4000
        until(lambda: c.info("raft").get("raft_role") == "leader", "node 1 to lead")
        pipe = c.pipeline(transaction=False)
        for i in range(300):
            pipe.set(f"big:{i}", value)
        assert all(pipe.execute())
        c.close()
        path = str(tmp_path / "tls.rfb")
        tls = ["--tls-ca-cert-file", ca_file, "--tls-cert-file", client_cert,
               "--tls-key-file", client_key]
        url = f"tls://127.0.0.1:{port}"
        refused = node_command("backup", "--client", url, *tls, path)
        assert refused.returncode == 1 and "NOAUTH" in refused.stderr
        assert not os.path.exists(path)
        done = node_command("backup", "--client", url, "--requirepass-file", str(password),
                            *tls, path)
        assert done.returncode == 0, done.stderr
        assert os.path.getsize(path) > 300 * 4000 > 64 * 1024
        kv, _ = load_snapshot(path)
        assert dict(kv.items()) == {b"big:%d" % i: value for i in range(300)}
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_raft_backup_must_be_sent_alone_and_streams_to_a_slow_reader(tmp_path):
    """Behind an unanswered write on its connection, RAFT.BACKUP is refused;
    alone, its bulk arrives whole to a client reading a little at a time,
    and the commands sent behind it take effect after it: a write among
    them is not in the backup."""
    import socket

    from raftfast.backup import TrailingCrc
    from raftfast.resp_client import encode_command
    root = tempfile.mkdtemp(prefix="rfbs")
    cluster = Cluster(root, n=1, transport="unix", extra_args=["--client-output-buffer-limit",
                                                                "64kb"])
    try:
        cluster.start()
        node = cluster.nodes[1]
        wait_info(node, lambda i: i["raft_role"] == "leader", "node 1 to lead")
        c = node.client()
        pipe = c.pipeline(transaction=False)
        for i in range(200):
            pipe.set(f"k{i}", b"x" * 2000)
        assert all(pipe.execute())
        c.close()
        s = socket.create_connection(("127.0.0.1", node.client_port), timeout=10)
        try:
            s.sendall(encode_command("SET", "a", "1") + encode_command("RAFT.BACKUP"))
            want = b"+OK\r\n-ERR RAFT.BACKUP must be sent alone"
            got = b""
            while len(got) < len(want):
                got += s.recv(len(want) - len(got))
            assert got == want
            while not got.endswith(b"\r\n") or got.count(b"\r\n") < 2:
                got += s.recv(1)
            s.sendall(encode_command("RAFT.BACKUP") + encode_command("SET", "behind", "1")
                      + encode_command("GET", "a"))
            header = b""
            while not header.endswith(b"\r\n"):
                header += s.recv(1)
            assert header.startswith(b"$")
            size = int(header[1:-2])
            assert size > 200 * 2000
            check, received = TrailingCrc(), 0
            with open(tmp_path / "slow.rfb", "wb") as f:
                while received < size:
                    data = s.recv(min(4096, size - received))
                    assert data, f"closed after {received} of {size} bytes"
                    check.update(data)
                    f.write(data)
                    received += len(data)
            assert check.matches()
            tail = b""
            while not tail.endswith(b"$1\r\n1\r\n"):
                data = s.recv(64)
                assert data
                tail += data
            assert tail == b"\r\n+OK\r\n$1\r\n1\r\n"
        finally:
            s.close()
        kv, _ = load_snapshot(str(tmp_path / "slow.rfb"))
        assert kv.get(b"a") == b"1" and kv.get(b"behind") is None
        stats = info_stats(node)
        assert stats["raftfast_backups_served"] == "1"
        assert stats["raftfast_backups_failed"] == "0"
        assert stats["raftfast_backups_in_progress"] == "0"
        assert int(stats["raftfast_backup_bytes_sent"]) == size
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(120)
def test_a_backup_whose_client_stops_reading_is_cut_off_after_timeout():
    """A client that asks for a backup and stops reading does not hold the
    snapshot file and its connection for ever: after --timeout seconds
    without progress the node closes it, counts the backup as failed, and
    serves on."""
    import socket

    from raftfast.resp_client import encode_command
    root = tempfile.mkdtemp(prefix="rfbst")
    cluster = Cluster(root, n=1, transport="unix", extra_args=["--timeout", "2"])
    try:
        cluster.start()
        node = cluster.nodes[1]
        wait_info(node, lambda i: i["raft_role"] == "leader", "node 1 to lead")
        c = node.client()
        value = b"x" * 2000
        for lo in range(0, 5000, 500):  # 10 MB: more than the sockets' buffers hold
            pipe = c.pipeline(transaction=False)
            for i in range(lo, lo + 500):
                pipe.set(f"k{i}", value)
            assert all(pipe.execute())
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        s.settimeout(10)
        s.connect(("127.0.0.1", node.client_port))
        try:
            s.sendall(encode_command("RAFT.BACKUP"))
            header = b""
            while not header.endswith(b"\r\n"):
                header += s.recv(1)
            size = int(header[1:-2])
            assert size > 5000 * 2000
            # ... and read no more: the stream stalls, then is cut off.
            until(lambda: (lambda i: i["raftfast_backups_failed"] == "1"
                           and i["raftfast_backups_in_progress"] == "0")(info_stats(node)),
                  "the stalled backup to be cut off", timeout=30)
            received = 0
            while True:
                try:
                    data = s.recv(1 << 16)
                except ConnectionResetError:
                    break
                if not data:
                    break
                received += len(data)
            assert received < size
        finally:
            s.close()
        assert node.client().get("k4999") == value  # still serving
        assert "nothing sent for 2 s" in node.log_tail(40)
    finally:
        cluster.stop()
