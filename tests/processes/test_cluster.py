"""The launcher's own behaviour.  Runs that need real nodes belong to the
multi-process tests; here a stand-in node (cluster_fake_node.py) plays the
node's side: the ready line, INFO raft, SET."""
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
import uvloop

from raftfast import resp_client
from raftfast.arg_types import half_of_ram
from raftfast.config import ConfigError
from raftfast.launcher.cli import build_parser
from raftfast.launcher.layout import Layout, NodeSpec, plan
from raftfast.launcher.status import StatusLine, format_table
from raftfast.resp_client import RespError

from tests.support import REPO
from tests.support.wait import until
from tests.support.harness import free_base_port

DEADLINE = 30.0  # liveness bound for waits, not a timing assertion


def parse(argv):
    return build_parser().parse_args(argv)


def test_plan_unix_peers_and_client_ports(tmp_path):
    specs = plan(parse(["--nodes", "3", "--fsync", "never"]), str(tmp_path))
    assert [s.id for s in specs] == [1, 2, 3]
    s2 = specs[1]
    assert s2.client == "tcp://127.0.0.1:7002"
    assert s2.listen == f"unix://{tmp_path}/node2/raft.sock"
    assert s2.argv == [
        "--id", "2", "--data-dir", f"{tmp_path}/node2", "--listen", s2.listen,
        "--client", "tcp://127.0.0.1:7002", "--cluster-secret-file", f"{tmp_path}/cluster.secret",
        "--peer", f"1=unix://{tmp_path}/node1/raft.sock",
        "--peer", f"3=unix://{tmp_path}/node3/raft.sock",
        "--fsync", "never", "--maxmemory", str(half_of_ram() // 3)]


def test_plan_tcp_peers(tmp_path):
    specs = plan(parse(["--nodes", "5", "--transport", "tcp", "--base-port", "9000"]),
                         str(tmp_path))
    assert [s.listen for s in specs] == [f"tcp://127.0.0.1:{9100 + i}" for i in range(1, 6)]
    assert [s.client for s in specs] == [f"tcp://127.0.0.1:{9000 + i}" for i in range(1, 6)]
    peers = [a for a in specs[0].argv if "=" in a]
    assert peers == [f"{j}=tcp://127.0.0.1:{9100 + j}" for j in range(2, 6)]


@pytest.mark.parametrize("argv,fragment", [
    (["--base-port", "65530", "--nodes", "10"], "past 65535"),
    (["--heartbeat-interval", "500", "--election-timeout", "400"], "must be less than"),
])
def test_plan_rejects_impossible_settings(argv, fragment, tmp_path):
    with pytest.raises(ConfigError, match=fragment):
        plan(parse(argv), str(tmp_path))


def test_plan_rejects_a_data_dir_too_long_for_unix_sockets(tmp_path):
    with pytest.raises(ConfigError, match="--transport tcp"):
        plan(parse([]), str(tmp_path / ("d" * 120)))
    assert plan(parse(["--transport", "tcp"]), str(tmp_path / ("d" * 120)))


def test_default_is_three_nodes_and_help_says_so():
    assert parse([]).nodes == 3
    assert "(default: 3)" in " ".join(build_parser().format_help().split())


@pytest.mark.parametrize("argv,fragment", [
    (["--nodes", "0"], "--nodes"),
    (["--transport", "udp"], "invalid choice"),
    (["--bench", "-1"], "--bench"),
    (["--id", "1"], "unrecognized arguments"),
    (["--base-port", "65530", "--nodes", "10"], "past 65535"),
    (["--election-timeout", "50"], "less than --election-timeout"),
])
def test_bad_usage_exits_2_with_one_line(argv, fragment):
    r = subprocess.run([sys.executable, "-m", "raftfast.cluster", *argv], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr


class Fake:
    """A node as format_table and stop_all see it."""

    class Proc:
        def __init__(self, pid, rc=None):
            self.pid, self.returncode = pid, rc

    def __init__(self, nid, rc=None):
        self.id = nid
        self.proc = self.Proc(1000 + nid, rc)
        self.spec = NodeSpec(nid, "", "", f"tcp://127.0.0.1:{7000 + nid}", [])


def test_format_table():
    infos = {1: {"raft_role": "leader", "raft_current_term": "12"},
             2: {"raft_role": "follower", "raft_current_term": "12"}}
    text = format_table([Fake(1), Fake(2), Fake(3, rc=1)], infos)
    assert text.splitlines() == [
        "id  pid   role       term  client",
        "1   1001  leader     12    tcp://127.0.0.1:7001",
        "2   1002  follower   12    tcp://127.0.0.1:7002",
        "3   1003  exited(1)  ?     tcp://127.0.0.1:7003",
    ]


def test_leader_of_prefers_highest_term():
    infos = {1: {"raft_role": "leader", "raft_current_term": "3"},
             2: {"raft_role": "leader", "raft_current_term": "4"},
             3: {"raft_role": "candidate", "raft_current_term": "5"}}
    assert resp_client.leader_of(infos) == 2
    assert resp_client.leader_of({1: {"raft_role": "follower"}}) is None


def test_parse_info_and_status_line():
    info = resp_client.parse_info(b"# Raft\r\nraft_role:leader\r\nraft_current_term:7\r\n"
                              b"raft_commit_index:100\r\nraft_voters:1,2,3\r\n")
    assert info == {"raft_role": "leader", "raft_current_term": "7",
                    "raft_commit_index": "100", "raft_voters": "1,2,3"}
    st = StatusLine()
    assert st.render(3, info, 10.0) == "leader 3  term 7  commit 100"
    info2 = dict(info, raft_commit_index="2600")
    assert st.render(3, info2, 11.0) == "leader 3  term 7  commit 2600  2,500 ops/s"
    assert st.render(None, None, 12.0) == "no leader"


class TinyServer(asyncio.Protocol):
    """Answers each request with canned bytes, split in two writes."""

    def __init__(self, replies):
        self.replies = replies

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        reply = self.replies[data.split(b"\r\n")[2].decode()]
        self.transport.write(reply[:3])
        asyncio.get_running_loop().call_soon(self.transport.write, reply[3:])


def test_resp_client_against_a_tiny_server():
    replies = {"INFO": b"$34\r\nraft_role:leader\r\nraft_leader_id:1\r\n",
               "SET": b"-MOVED 0 127.0.0.1:7001\r\n", "PING": b"+PONG\r\n"}

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: TinyServer(replies), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            info = await resp_client.info(f"tcp://127.0.0.1:{port}")
            moved = await resp_client.call(f"127.0.0.1:{port}", "SET", "k", "v")
            pong = await resp_client.call(f"127.0.0.1:{port}", "PING")
        finally:
            server.close()
        # Nobody listens here any more: no answer, not an exception.
        gone = await resp_client.info(f"tcp://127.0.0.1:{port}", timeout=1)
        return info, moved, pong, gone
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        info, moved, pong, gone = r.run(main())
    assert info == {"raft_role": "leader", "raft_leader_id": "1"}
    assert isinstance(moved, RespError) and moved.kind == "MOVED"
    assert pong == "PONG" and gone is None


def test_blocking_client_against_a_tiny_server():
    """The synchronous side of the client (the test harness's) decodes the
    same replies, sent a few bytes at a time, and pipelines on a Connection."""
    requests = [[("INFO", "raft")], [("SET", "k", "v")],
                [("PING",), ("INCR", "n"), ("MGET", "a", "b")]]
    replies = [b"$34\r\nraft_role:leader\r\nraft_leader_id:1\r\n",
               b"-MOVED 0 127.0.0.1:7001\r\n",
               b"+PONG\r\n:3\r\n*2\r\n$1\r\na\r\n$-1\r\n"]
    server = socket.create_server(("127.0.0.1", 0))
    addr = f"127.0.0.1:{server.getsockname()[1]}"

    def serve():
        for cmds, reply in zip(requests, replies):
            conn, _ = server.accept()
            with conn:
                want = b"".join(resp_client.encode_command(*c) for c in cmds)
                got = b""
                while len(got) < len(want):
                    got += conn.recv(65536)
                assert got == want
                for i in range(0, len(reply), 3):
                    conn.sendall(reply[i:i + 3])
    t = threading.Thread(target=serve)
    t.start()
    try:
        info = resp_client.info_sync(addr)
        moved = resp_client.call_sync(addr, "SET", "k", "v")
        with resp_client.Connection(addr) as c:
            for cmd in requests[2]:
                c.send(*cmd)
            pipelined = [c.reply() for _ in requests[2]]
    finally:
        t.join(timeout=DEADLINE)
        server.close()
    assert info == {"raft_role": "leader", "raft_leader_id": "1"}
    assert isinstance(moved, RespError) and moved.kind == "MOVED"
    assert pipelined == ["PONG", 3, [b"a", None]]
    assert resp_client.info_sync(addr, timeout=1) is None  # nobody listens: no answer


# ---- the whole launcher, with stand-in nodes ------------------------------------



def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def wait_gone(pids):
    until(lambda: not any(alive(p) for p in pids),
          lambda: f"processes {[p for p in pids if alive(p)]} to exit", DEADLINE)


class Launch:
    def __init__(self, tmp_path, *argv, fail_id=None, base=None, env=None):
        env = dict(os.environ, RAFTFAST_NODE_MODULE="tests.support.cluster_fake_node", PYTHONPATH=REPO,
                   TMPDIR=str(tmp_path), **(env or {}))
        if fail_id:
            env["FAKE_FAIL_ID"] = str(fail_id)
        self.base = base or free_base_port(6)
        self.p = subprocess.Popen(
            [sys.executable, "-m", "raftfast.cluster", "--nodes", "3",
             "--base-port", str(self.base), *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            cwd=REPO, start_new_session=True)
        self.out = []

    def read_until(self, text):
        for line in self.p.stdout:
            self.out.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} in {self.out}")

    def table_pids(self):
        head = next(i for i, l in enumerate(self.out) if l.startswith("id "))
        return [int(l.split()[1]) for l in self.out[head + 1:head + 4]]

    def finish(self):
        out, err = self.p.communicate(timeout=DEADLINE)
        self.out.append(out)
        return self.p.returncode, "".join(self.out), err

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_launcher_serves_then_stops_every_node(tmp_path, sig):
    run = Launch(tmp_path, "--fsync", "never")
    try:
        run.read_until("serving")
        pids = run.table_pids()
        table = "".join(run.out)
        assert "leader" in table and f"tcp://127.0.0.1:{run.base + 1}" in table
        temp = [d for d in os.listdir(tmp_path) if d.startswith("raftfast-")]
        assert len(temp) == 1
        node2 = json.load(open(tmp_path / temp[0] / "node2" / "argv.json"))
        assert node2["pgid"] == node2["pid"]  # its own process group
        assert node2["argv"][-4:] == ["--fsync", "never", "--maxmemory", str(half_of_ram() // 3)]
        # Every node proves the secret the launcher made, which only its user can read.
        secret = tmp_path / temp[0] / "cluster.secret"
        assert os.stat(secret).st_mode & 0o777 == 0o600 and len(secret.read_bytes()) == 65
        flag = node2["argv"].index("--cluster-secret-file")
        assert node2["argv"][flag + 1] == str(secret)
        run.p.send_signal(sig)
        code, out, err = run.finish()
        assert code == 0, err
        assert "killing" not in err  # every node stopped on SIGTERM
        wait_gone(pids)
        assert not os.path.exists(tmp_path / temp[0])  # the temporary dir is removed
    finally:
        run.kill()


def test_no_node_outlives_a_killed_launcher(tmp_path):
    run = Launch(tmp_path, "--data-dir", str(tmp_path / "d"))
    try:
        run.read_until("serving")
        pids = run.table_pids()
        assert all(alive(p) for p in pids)
        run.p.send_signal(signal.SIGKILL)
        run.p.wait()
        wait_gone(pids)
        assert (tmp_path / "d" / "node1.log").read_text().startswith("node 1 starting")
    finally:
        run.kill()


def test_node_that_fails_to_start_exits_1_with_its_log(tmp_path):
    run = Launch(tmp_path, fail_id=2)
    try:
        code, out, err = run.finish()
        assert code == 1
        assert "node 2" in err and "exited with code 1" in err
        assert "cannot start (fake failure)" in err
    finally:
        run.kill()


def test_bench_prints_results_and_exits_0(tmp_path):
    run = Launch(tmp_path, "--bench", "0.5", "--bench-clients", "4")
    try:
        code, out, err = run.finish()
        assert code == 0, err
        assert "bench: 0.5 s against node 1" in out
        assert "throughput" in out and "p99.9" in out
        assert "killing" not in err
    finally:
        run.kill()


def test_a_node_dying_is_reported_and_the_rest_keep_serving(tmp_path):
    run = Launch(tmp_path)
    try:
        run.read_until("serving")
        pids = run.table_pids()
        os.kill(pids[1], signal.SIGKILL)
        for line in run.p.stderr:
            if "exited unexpectedly" in line:
                break
        assert f"node 2 (pid {pids[1]}) exited unexpectedly with code -9" in line
        assert run.p.poll() is None and alive(pids[0]) and alive(pids[2])
        run.p.send_signal(signal.SIGTERM)
        code, out, err = run.finish()
        assert code == 0 and "killing" not in err
        wait_gone(pids)
    finally:
        run.kill()


# ---- growing and shrinking ------------------------------------------------------

def test_plan_of_a_grown_and_shrunk_layout(tmp_path):
    """Added nodes join; every live node dials every other live one; a
    removed node is neither started nor dialed."""
    layout = Layout(3, "tcp", 9000, added=[4, 5], removed=[2])
    specs = plan(parse(["--fsync", "never"]), str(tmp_path), layout)
    assert [s.id for s in specs] == [1, 3, 4, 5]
    by_id = {s.id: s for s in specs}
    assert by_id[4].argv == [
        "--id", "4", "--data-dir", f"{tmp_path}/node4", "--listen", "tcp://127.0.0.1:9104",
        "--client", "tcp://127.0.0.1:9004", "--cluster-secret-file", f"{tmp_path}/cluster.secret",
        "--peer", "1=tcp://127.0.0.1:9101", "--peer", "3=tcp://127.0.0.1:9103",
        "--peer", "5=tcp://127.0.0.1:9105", "--join", "--fsync", "never",
        "--maxmemory", str(half_of_ram() // 3)]
    assert "--join" not in by_id[1].argv
    assert [a for a in by_id[1].argv if "=" in a] == [
        "3=tcp://127.0.0.1:9103", "4=tcp://127.0.0.1:9104", "5=tcp://127.0.0.1:9105"]
    assert layout.next_id() == 6  # never a removed id again


def test_layout_is_kept_in_the_data_dir(tmp_path):
    assert Layout.load(str(tmp_path)) is None
    Layout(5, "unix", 7100, added=[6], removed=[3]).save(str(tmp_path))
    back = Layout.load(str(tmp_path))
    assert (back.founders, back.transport, back.base_port, back.added, back.removed) == (
        5, "unix", 7100, [6], {3})
    (tmp_path / "cluster.json").write_text('{"format": 1, "founders": "x"}')
    with pytest.raises(ConfigError, match="cluster.json"):
        Layout.load(str(tmp_path))


def test_a_layout_past_the_port_range_is_refused():
    with pytest.raises(ConfigError, match="up to 99"):
        Layout(3, "tcp", 7000, added=list(range(4, 100))).check_ports(100)
    with pytest.raises(ConfigError, match="past 65535"):
        Layout(3, "unix", 65530).check_ports(6)


def control(*argv):
    return subprocess.run([sys.executable, "-m", "raftfast.cluster", *argv],
                          capture_output=True, text=True, timeout=120,
                          cwd=REPO)


@pytest.mark.parametrize("argv", [["add"], ["remove", "2"], ["roll"]])
def test_add_and_remove_without_a_launcher_say_so(tmp_path, argv):
    r = control(*argv, "--data-dir", str(tmp_path))
    assert r.returncode == 1
    assert f"no launcher is running on {tmp_path}" in r.stderr, r.stderr


@pytest.mark.parametrize("argv,fragment", [
    (["add"], "--data-dir"),
    (["remove", "--data-dir", "d"], "ID"),
    (["remove", "0", "--data-dir", "d"], "must be >= 1"),
    (["roll"], "--data-dir"),
    (["roll", "3", "--data-dir", "d"], "unrecognized arguments: 3"),
])
def test_add_and_remove_bad_usage_exits_2(argv, fragment):
    r = control(*argv)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr


def rows(text):
    """{id: pid} of the table rows in text."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0].isdigit():
            out[int(parts[0])] = int(parts[1])
    return out


def test_add_then_remove_then_a_restart_keeps_the_layout(tmp_path):
    data = tmp_path / "d"
    run = Launch(tmp_path, "--data-dir", str(data), env={"FAKE_ADD_TRYAGAIN": "1"})
    try:
        run.read_until("serving")
        pids = run.table_pids()
        added = control("add", "--data-dir", str(data))
        assert added.returncode == 0, added.stderr
        # A TRYAGAIN on the first ADD was retried; node 4 votes, and its row says so.
        assert f"tcp://127.0.0.1:{run.base + 4}" in added.stdout
        pid4 = rows(added.stdout)[4]
        assert alive(pid4)
        argv4 = json.load(open(data / "node4" / "argv.json"))["argv"]
        assert "--join" in argv4 and f"1=unix://{data}/node1/raft.sock" in argv4
        assert json.load(open(data / "node1" / "voters.json")) == [1, 2, 3, 4]

        removed = control("remove", "2", "--data-dir", str(data))
        assert removed.returncode == 0, removed.stderr
        assert sorted(rows(removed.stdout)) == [1, 3, 4]
        wait_gone([pids[1]])
        assert json.load(open(data / "node1" / "voters.json")) == [1, 3, 4]
        again = control("remove", "2", "--data-dir", str(data))
        assert again.returncode == 1 and "not one of this cluster's nodes" in again.stderr

        run.p.send_signal(signal.SIGTERM)
        code, out, err = run.finish()
        assert code == 0 and "exited unexpectedly" not in err, err
        wait_gone([pids[0], pids[2], pid4])
    finally:
        run.kill()
    # The same data dir again: node 4 starts (a restart, with --join), node 2 does not.
    run = Launch(tmp_path, "--data-dir", str(data), base=run.base)
    try:
        run.read_until("serving")
        head = next(i for i, l in enumerate(run.out) if l.startswith("id "))
        assert sorted(rows("".join(run.out[head:]))) == [1, 3, 4]
        argv1 = json.load(open(data / "node1" / "argv.json"))["argv"]
        assert f"4=unix://{data}/node4/raft.sock" in argv1
        assert not any(a.startswith("2=") for a in argv1)
        run.p.send_signal(signal.SIGTERM)
        assert run.finish()[0] == 0
    finally:
        run.kill()


def test_a_restart_with_other_founding_flags_is_refused(tmp_path):
    data = tmp_path / "d"
    Layout(3, "unix", 7000).save(str(data.mkdir() or data))
    r = subprocess.run([sys.executable, "-m", "raftfast.cluster", "--nodes", "5",
                        "--data-dir", str(data)], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == 2
    assert "--nodes 5" in r.stderr and "--nodes 3" in r.stderr, r.stderr


@contextlib.contextmanager
def serving(*argv):
    """A real launcher (`python -m raftfast.cluster *argv`) until it prints
    "serving": yields its output so far as lines; stopped with Ctrl-C after
    the block, which it must survive with exit 0."""
    p = subprocess.Popen([sys.executable, "-m", "raftfast.cluster", *argv],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO, start_new_session=True)
    out = []
    try:
        for line in p.stdout:
            out.append(line)
            if "serving" in line:
                break
        yield out
    finally:
        p.send_signal(signal.SIGINT)
        try:
            assert p.wait(timeout=DEADLINE) == 0, p.stderr.read()
        finally:
            if p.poll() is None:
                p.kill()
            p.stdout.close()
            p.stderr.close()


def test_a_cluster_with_tls_serves_clients_with_its_certificates(tmp_path):
    """--tls: a private CA and certificates in DIR/tls, peers and clients
    over TLS, the launcher itself polling over TLS, and a line that says
    how to connect."""
    import redis
    data = tmp_path / "d"
    base = free_base_port(106)
    with serving("--tls", "--data-dir", str(data), "--base-port", str(base),
                 "--fsync", "never") as out:
        text = "".join(out)
        assert f"tls://127.0.0.1:{base + 1}" in text, text
        line = next(ln for ln in out if ln.startswith("connect: redis-cli --tls"))
        port = int(line.split("-p ")[1])
        tls = data / "tls"
        assert {f for f in os.listdir(tls)} >= {"ca.crt", "ca.key", "client.crt", "client.key",
                                                "node1.crt", "node1.key", "node3.key"}
        assert all(os.stat(tls / f).st_mode & 0o777 == 0o600 for f in os.listdir(tls))
        client = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(tls / "ca.crt"),
                             ssl_certfile=str(tls / "client.crt"),
                             ssl_keyfile=str(tls / "client.key"), socket_timeout=10)
        assert client.set("k", "v") and client.get("k") == b"v"
        layout = json.load(open(data / "cluster.json"))
        assert layout["tls"] is True and layout["transport"] == "tcp"


def _password_file(tmp_path):
    path = tmp_path / "password"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    return path


def test_a_cluster_with_a_password_asks_clients_for_it_and_uses_it_itself(tmp_path):
    """--requirepass-file: every node wants the password, and the launcher
    itself authenticates to draw its table (the nodes' roles come from
    INFO) and says how to connect."""
    base = free_base_port(6)
    with serving("--requirepass-file", str(_password_file(tmp_path)), "--data-dir",
                 str(tmp_path / "d"), "--base-port", str(base), "--fsync", "never") as out:
        text = "".join(out)
        assert "leader" in text and "connect: redis-cli --askpass" in text, text
        with socket.create_connection(("127.0.0.1", base + 1), timeout=10) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n"
                      b"*1\r\n$4\r\nPING\r\n")
            got = b""
            while got.count(b"\r\n") < 3:
                got += s.recv(4096)
        assert got == b"-NOAUTH Authentication required.\r\n+OK\r\n+PONG\r\n"


def test_bench_authenticates_with_the_clusters_password(tmp_path):
    p = subprocess.run([sys.executable, "-m", "raftfast.cluster", "--requirepass-file",
                        str(_password_file(tmp_path)), "--base-port", str(free_base_port(6)),
                        "--fsync", "never", "--bench", "0.5", "--bench-clients", "4"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO),
                       cwd=REPO, timeout=DEADLINE)
    assert p.returncode == 0, p.stderr
    assert "throughput" in p.stdout and "errors" not in p.stdout, p.stdout


def test_plan_with_metrics_gives_node_i_base_port_plus_200_plus_i(tmp_path):
    specs = plan(parse(["--nodes", "3", "--metrics", "--base-port", "9000"]), str(tmp_path))
    for s in specs:
        flag = s.argv.index("--metrics")
        assert s.argv[flag + 1] == f"tcp://127.0.0.1:{9200 + s.id}"
        assert s.metrics == f"http://127.0.0.1:{9200 + s.id}/metrics"
    assert all("--metrics" not in s.argv for s in plan(parse(["--nodes", "3"]), str(tmp_path)))
    with pytest.raises(ConfigError, match="past 65535"):
        plan(parse(["--nodes", "3", "--metrics", "--base-port", "65400"]), str(tmp_path))


def test_cluster_with_metrics_prints_each_nodes_url_and_they_answer(tmp_path):
    import urllib.request
    base = free_base_port(203)
    with serving("--metrics", "--data-dir", str(tmp_path / "d"), "--base-port", str(base),
                 "--fsync", "never") as out:
        head = next(i for i, ln in enumerate(out) if ln.startswith("id "))
        assert out[head].split()[-1] == "metrics"
        rows = [ln.split() for ln in out[head + 1:head + 4]]
        for row in rows:
            url = row[-1]
            assert url == f"http://127.0.0.1:{base + 200 + int(row[0])}/metrics"
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            assert f'raftfast_role{{role="{row[2]}"}} 1.0' in text, text
