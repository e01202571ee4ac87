"""`python -m raftfast.node` as an operator sees it: exit codes, refusals,
and what a client hears when the outcome of a write is unknown."""
import os
import resource
import signal
import socket
import subprocess
import sys

import pytest
import redis

from tests.support import REPO
from tests.support.harness import free_ports
from tests.support.wait import until

pytestmark = pytest.mark.multiprocess


ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_node(*args, timeout=30, **kw):
    return subprocess.run([sys.executable, "-m", "raftfast.node", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=ENV, **kw)


@pytest.mark.parametrize("args,words", [
    (["--data-dir", "d", "--listen", "tcp://127.0.0.1:1", "--client", "tcp://127.0.0.1:2"], "--id"),
    (["--id", "0", "--data-dir", "d", "--listen", "tcp://127.0.0.1:1",
      "--client", "tcp://127.0.0.1:2"], "id"),
    (["--id", "1", "--data-dir", "d", "--listen", "http://x:1", "--client", "tcp://127.0.0.1:2"],
     "http://x:1"),
    (["--id", "1", "--data-dir", "d", "--listen", "tcp://127.0.0.1:1",
      "--client", "tcp://127.0.0.1:2", "--peer", "2=nonsense"], "nonsense"),
    (["--id", "1", "--data-dir", "d", "--listen", "tcp://127.0.0.1:1",
      "--client", "tcp://0.0.0.0:2"], "advertise"),
    (["--id", "1", "--data-dir", "d", "--listen", "tcp://127.0.0.1:1",
      "--client", "tcp://127.0.0.1:2", "--fsync", "sometimes"], "fsync"),
])
def test_bad_usage_is_one_line_and_exit_2(root, args, words):
    out = run_node(*args, cwd=root)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("usage:")]
    assert len(lines) == 1 and words in lines[0], out.stderr


@pytest.mark.parametrize("value", ["", "lots", "100"])
def test_bad_segment_size_from_the_environment_is_exit_2(root, value):
    """RAFTFAST_WAL_SEGMENT_BYTES (for tests) is checked like a flag."""
    out = subprocess.run([sys.executable, "-m", "raftfast.node", *node_args(root)],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                         env={**ENV, "RAFTFAST_WAL_SEGMENT_BYTES": value})
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2
    assert len(lines) == 1 and "RAFTFAST_WAL_SEGMENT_BYTES" in lines[0], out.stderr
    assert not os.path.exists(f"{root}/data")  # refused before the data dir is touched


def node_args(root, node_id=1, ports=None):
    ports = ports or free_ports(2)
    return ["--id", str(node_id), "--data-dir", f"{root}/data",
            "--listen", f"tcp://127.0.0.1:{ports[0]}", "--client", f"tcp://127.0.0.1:{ports[1]}"]


def test_a_locked_data_dir_is_refused(root):
    first = subprocess.Popen([sys.executable, "-m", "raftfast.node", *node_args(root)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert first.stdout.readline().startswith(b"ready id=1 ")
        out = run_node(*node_args(root))
        assert out.returncode == 1 and "locked" in out.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=15) == 0
        first.stdout.close()


def test_a_data_dir_of_another_node_is_refused(root):
    first = subprocess.Popen([sys.executable, "-m", "raftfast.node", *node_args(root)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert first.stdout.readline().startswith(b"ready")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
    first.stdout.close()
    out = run_node(*node_args(root, node_id=2))
    assert out.returncode == 1 and "node" in out.stderr and "1" in out.stderr
    out = run_node(*node_args(root), "--cluster-id", "other")
    assert out.returncode == 1 and "other" in out.stderr


def test_a_failed_write_stops_the_node_with_exit_1(root):
    ports = free_ports(2)
    limit = 256 * 1024

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    node = subprocess.Popen([sys.executable, "-m", "raftfast.node", *node_args(root, ports=ports)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=small_files)
    try:
        assert node.stdout.readline().startswith(b"ready")
        with redis.Redis(host="127.0.0.1", port=ports[1], socket_timeout=10) as r:
            until(lambda: r.info("raft")["raft_role"] == "leader", "the node to lead", 20)
        s = socket.create_connection(("127.0.0.1", ports[1]), timeout=10)
        value = b"x" * 4096
        cmd = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4096\r\n" + value + b"\r\n"
        replies = b""
        try:
            for _ in range(200):  # 800 KiB: well past the file size limit
                s.sendall(cmd)
                replies += s.recv(65536)
                assert replies.startswith(b"+OK")
        except OSError:
            pass  # the node went away mid-stream, as it should
        s.close()
        assert node.wait(timeout=30) == 1
        err = node.stderr.read().decode()
        assert "storage write failed" in err, err
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        node.stdout.close()
        node.stderr.close()


def test_a_write_without_quorum_times_out_as_outcome_unknown(make_cluster):
    c = make_cluster(n=3)
    lid = c.wait_leader()
    leader = c.nodes[lid]
    assert leader.raw("SET", "a", "1") == b"+OK"
    followers = [n for i, n in c.nodes.items() if i != lid]
    for f in followers:
        f.proc.send_signal(signal.SIGSTOP)
    try:
        assert leader.raw("SET", "a", "2") == b"-TIMEOUT outcome unknown"
        # CheckQuorum: cut off from a majority, it stops acting as leader
        # and refuses writes it could not commit.
        until(lambda: leader.info()["raft_role"] != "leader", "the leader to step down", 20)
        assert leader.raw("SET", "a", "3") == b"-CLUSTERDOWN No raft leader"
    finally:
        for f in followers:
            f.proc.send_signal(signal.SIGCONT)


def test_everything_the_node_creates_is_its_users_alone(root):
    # A data dir with a missing parent, a Unix peer socket: 0700 directories,
    # 0600 files and sockets, whatever the umask it was started under.
    data = f"{root}/new/data"
    sock = f"{root}/raft.sock"
    old = os.umask(0o022)
    try:
        node = subprocess.Popen(
            [sys.executable, "-m", "raftfast.node", "--id", "1", "--data-dir", data,
             "--listen", f"unix://{sock}", "--client", f"tcp://127.0.0.1:{free_ports(1)[0]}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV)
    finally:
        os.umask(old)
    try:
        assert node.stdout.readline().startswith(b"ready id=1 ")
        assert os.stat(sock).st_mode & 0o777 == 0o600
        modes = {}
        for d in (f"{root}/new", data):
            modes[d] = os.stat(d).st_mode & 0o777
        for top, dirs, files in os.walk(data):
            for name in dirs:
                modes[os.path.join(top, name)] = os.stat(os.path.join(top, name)).st_mode & 0o777
            for name in files:
                modes[os.path.join(top, name)] = os.stat(os.path.join(top, name)).st_mode & 0o777
        assert len(modes) > 4
        assert {p: m for p, m in modes.items()
                if m != (0o700 if os.path.isdir(p) else 0o600)} == {}
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=15) == 0
        node.stdout.close()


def test_a_data_dir_others_can_write_is_refused_and_one_they_can_read_is_warned_of(root):
    os.mkdir(f"{root}/data")
    os.chmod(f"{root}/data", 0o777)
    out = run_node(*node_args(root))
    assert out.returncode == 1
    assert "writable by other users (mode 0777); chmod 700 it" in out.stderr
    assert os.listdir(f"{root}/data") == []  # refused before anything is written
    os.chmod(f"{root}/data", 0o755)  # as an older release left it
    node = subprocess.Popen([sys.executable, "-m", "raftfast.node", *node_args(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        assert node.stdout.readline().startswith(b"ready id=1 ")
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=15) == 0
        err = node.stderr.read().decode()
        node.stdout.close()
        node.stderr.close()
    assert "readable by other users (mode 0755)" in err


def test_a_cluster_secret_file_that_cannot_be_used_stops_the_node_at_start(root):
    out = run_node(*node_args(root), "--cluster-secret-file", f"{root}/missing")
    assert out.returncode == 1
    assert "cannot read the cluster secret file" in out.stderr
    with open(f"{root}/short", "w") as f:
        f.write("tiny-secret\n")
    out = run_node(*node_args(root), "--cluster-secret-file", f"{root}/short")
    assert out.returncode == 1 and "it needs at least 16" in out.stderr
    assert "tiny-secret" not in out.stderr


def test_a_node_with_a_password_serves_only_clients_that_give_it(root):
    password = "correct horse battery staple"
    with open(f"{root}/pass", "w") as f:
        f.write(password + "\n")
    os.chmod(f"{root}/pass", 0o600)
    ports = free_ports(2)
    node = subprocess.Popen([sys.executable, "-m", "raftfast.node", *node_args(root, ports=ports),
                             "--requirepass-file", f"{root}/pass", "--log-level", "debug"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        assert node.stdout.readline().startswith(b"ready id=1 ")
        stranger = redis.Redis(port=ports[1], socket_timeout=10)
        with pytest.raises(redis.AuthenticationError):
            stranger.set("k", "v")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=ports[1], password="wrong", socket_timeout=10).ping()
        client = redis.Redis(port=ports[1], password=password, socket_timeout=10)

        def write():
            try:
                return client.set("k", "v")
            except redis.ResponseError:  # not leading yet
                return False
        until(write, "a write", 10)
        assert client.get("k") == b"v"
        resp3 = redis.Redis(port=ports[1], password=password, protocol=3, socket_timeout=10)
        assert resp3.get("k") == b"v"  # HELLO 3 AUTH default <password>
        assert password not in repr(client.config_get("*"))  # never shown
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=15) == 0
        err = node.stderr.read().decode()
        node.stdout.close()
        node.stderr.close()
    assert password not in err


def _pki(root):
    from raftfast.launcher.certs import issue, make_ca
    ca = make_ca(root)
    return {n: issue(root, n, ca) for n in ("node1", "node2", "node3", "client")}


def test_three_nodes_over_mutual_tls_serve_a_tls_client_port(root):
    pki = _pki(root)
    ca = f"{root}/ca.crt"
    ports = free_ports(6)
    peers = {i: f"tls://127.0.0.1:{ports[i - 1]}" for i in (1, 2, 3)}
    nodes = []
    try:
        for i in (1, 2, 3):
            cert, key = pki[f"node{i}"]
            argv = ["--id", str(i), "--data-dir", f"{root}/d{i}", "--listen", peers[i],
                    "--client", f"tls://127.0.0.1:{ports[2 + i]}",
                    "--peer-tls-cert-file", cert, "--peer-tls-key-file", key,
                    "--peer-tls-ca-cert-file", ca, "--tls-cert-file", cert,
                    "--tls-key-file", key, "--tls-ca-cert-file", ca]
            for j in (1, 2, 3):
                if j != i:
                    argv += ["--peer", f"{j}={peers[j]}"]
            nodes.append(subprocess.Popen([sys.executable, "-m", "raftfast.node", *argv],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          env=ENV))
        for n in nodes:
            assert n.stdout.readline().startswith(b"ready ")
        cert, key = pki["client"]
        clients = [redis.Redis(port=ports[2 + i], ssl=True, ssl_ca_certs=ca, ssl_certfile=cert,
                               ssl_keyfile=key, socket_timeout=10) for i in (1, 2, 3)]

        def leader():
            for c in clients:
                try:
                    if c.info("raft").get("raft_role") == "leader":
                        return c
                except redis.ConnectionError:
                    pass
            return None
        lead = until(leader, "a leader elected over TLS", 30)
        assert lead.set("k", "v") and lead.get("k") == b"v"  # committed on a majority
        # A client without a certificate of the CA is refused (--tls-auth-clients yes).
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=ports[3], ssl=True, ssl_ca_certs=ca, socket_timeout=10).ping()
        with pytest.raises(redis.ConnectionError):  # and plain TCP is not spoken there
            redis.Redis(port=ports[3], socket_timeout=3).ping()
    finally:
        for n in nodes:
            n.send_signal(signal.SIGTERM)
        for n in nodes:
            assert n.wait(timeout=15) == 0
            n.stdout.close()


def test_peers_over_plain_tcp_beyond_this_machine_are_refused_without_insecure_peers(root):
    args = ["--id", "1", "--data-dir", f"{root}/d", "--listen", "tcp://0.0.0.0:7999",
            "--client", "tcp://127.0.0.1:7998"]
    out = run_node(*args)
    assert out.returncode == 2
    assert "--insecure-peers" in out.stderr and "--peer-tls-cert-file" in out.stderr
    assert not os.path.exists(f"{root}/d")


@pytest.mark.parametrize("flag, mode", [([], 0o600), (["--unixsocketperm", "660"], 0o660)])
def test_a_unix_client_socket_takes_unixsocketperm(root, flag, mode):
    sock = f"{root}/client.sock"
    node = subprocess.Popen([sys.executable, "-m", "raftfast.node", "--id", "1", "--data-dir",
                             f"{root}/data", "--listen", f"unix://{root}/raft.sock",
                             "--client", f"unix://{sock}", *flag],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV)
    try:
        assert node.stdout.readline().startswith(b"ready id=1 ")
        assert os.stat(sock).st_mode & 0o777 == mode
        r = redis.Redis(unix_socket_path=sock, socket_timeout=10)
        assert r.config_get("unixsocketperm") == {"unixsocketperm": f"{mode:o}"}
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=15) == 0
        node.stdout.close()


@pytest.mark.parametrize("command", [
    ["raftfast.node"], ["raftfast.node", "backup"], ["raftfast.node", "restore"],
    ["raftfast.cluster"], ["raftfast.cluster", "add"], ["raftfast.cluster", "remove"],
    ["raftfast.cluster", "roll"], ["raftfast.bench"], ["raftfast.bench", "run"],
    ["raftfast.bench", "core"], ["raftfast.bench", "compare"], ["raftfast.top"], ["raftfast"],
    ["raftfast.bench.library_node"], ["raftfast.bench.pysyncobj_node"]])
def test_every_command_prints_the_package_version(command):
    import raftfast
    module, *sub = command
    if module == "raftfast.bench.pysyncobj_node":
        pytest.importorskip("pysyncobj")   # without it the module stops at its import
    # No other flag: --version answers before the required ones are missed.
    out = subprocess.run([sys.executable, "-m", module, *sub, "--version"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, f"raftfast {raftfast.__version__}\n", "")


def test_the_version_is_the_packages():
    import tomllib
    from importlib.metadata import version
    import raftfast
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["tool"]["setuptools"]["dynamic"]["version"] == {
            "attr": "raftfast.__version__"}
    assert raftfast.__version__ == "0.2.0"
    # The installed metadata agrees once the package is (re)installed.
    try:
        installed = version("raftfast")
    except Exception:
        pytest.skip("raftfast is not installed, only on the path")
    if installed != raftfast.__version__:
        pytest.skip(f"installed metadata {installed} predates this tree; pip install -e . again")


def test_a_node_runs_from_a_config_file_alone(tmp_path):
    ports = free_ports(2)
    conf = tmp_path / "node.toml"
    conf.write_text(f'''
id = 1
data-dir = "{tmp_path / 'data'}"
listen = "tcp://127.0.0.1:{ports[0]}"
client = "tcp://127.0.0.1:{ports[1]}"
heartbeat-interval = 20
election-timeout = 200
fsync = "never"
''')
    node = subprocess.Popen([sys.executable, "-m", "raftfast.node", "--config", str(conf)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = node.stdout.readline().decode()
        assert line.startswith("ready id=1 ") and f":{ports[1]}" in line
        with redis.Redis(host="127.0.0.1", port=ports[1], socket_timeout=10) as r:
            until(lambda: r.info("raft")["raft_role"] == "leader", "the node to lead", 20)
            assert r.set("k", "v") is True and r.get("k") == b"v"
            assert r.info("raft")["raft_current_term"] >= 1
    finally:
        node.terminate()
        assert node.wait(timeout=30) == 0
        node.stdout.close()
