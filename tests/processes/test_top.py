"""python -m raftfast.top against real node processes: one snapshot table
(stdout is not a terminal) with every node's role, term, commit index,
ops/s, lag and memory."""
import os
import subprocess
import sys

import pytest

from tests.support import REPO
from tests.support.wait import until

pytestmark = pytest.mark.multiprocess

DEADLINE = 60.0  # liveness bound, not a timing assertion


def top(*args):
    return subprocess.run([sys.executable, "-m", "raftfast.top", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=DEADLINE)


def table_rows(out):
    """{address: [cells]} of the table's node rows."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 8 and cells[1].startswith("tcp://"):
            rows[cells[1]] = cells
    return rows


def test_top_piped_prints_one_table_of_every_node(make_cluster):
    c = make_cluster(3)
    lid = c.wait_leader()
    client = c.nodes[lid].client()
    for i in range(20):
        assert client.set(f"k{i}", "v")
    client.close()
    last = int(c.nodes[lid].info()["raft_last_log_index"])
    c.wait_applied(last)
    down = max(i for i in c.ids if i != lid)  # a follower
    c.nodes[down].kill()
    urls = {i: f"tcp://127.0.0.1:{c.client_ports[i]}" for i in c.ids}
    r = top("--interval", "0.2", *urls.values())
    assert r.returncode == 0, r.stderr
    rows = table_rows(r.stdout)
    assert set(rows) == set(urls.values()), r.stdout
    for i in c.ids:
        if i == down:
            continue
        node, addr, role, term, commit, ops, lag, memory = rows[urls[i]]
        info = c.nodes[i].info()
        assert node == str(i) and role == info["raft_role"]
        assert term == info["raft_current_term"] and commit == str(last)
        assert ops == "0"  # nothing was written between the two polls
        assert lag == "0"
        assert " / " in memory and "%" in memory
    assert rows[urls[down]][2] == "down"


def test_top_without_any_node_answering_exits_1_bad_usage_2_version_0():
    r = top("--once", "--interval", "0.1", "tcp://127.0.0.1:1")
    assert r.returncode == 1 and "down" in r.stdout
    r = top("tcp://127.0.0.1:notaport")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    r = top("tls://127.0.0.1:7001")
    assert r.returncode == 2 and "--tls-ca-cert-file" in r.stderr
    import raftfast
    r = top("--version")
    assert r.returncode == 0 and r.stdout == f"raftfast {raftfast.__version__}\n"


def test_top_authenticates_with_the_password_file(root):
    from tests.support.harness import Cluster
    password = os.path.join(root, "password")
    with open(password, "w") as f:
        f.write("s3cret\n")
    os.chmod(password, 0o600)
    wrong = os.path.join(root, "wrong")
    with open(wrong, "w") as f:
        f.write("nope\n")
    os.chmod(wrong, 0o600)
    c = Cluster(root, n=1, extra_args=["--requirepass-file", password])
    try:
        c.nodes[1].start()
        url = f"tcp://127.0.0.1:{c.client_ports[1]}"
        r = top("--once", "--interval", "0.1", url)
        assert r.returncode == 1 and table_rows(r.stdout)[url][2] == "needs auth", r.stdout
        r = top("--interval", "0.1", "--requirepass-file", wrong, url)
        assert r.returncode == 1 and table_rows(r.stdout)[url][2] == "auth refused", r.stdout

        def leads():
            r = top("--once", "--interval", "0.1", "--requirepass-file", password, url)
            assert r.returncode == 0, r.stderr
            return table_rows(r.stdout)[url][:3] == ["1", url, "leader"]
        until(leads, "top to show the node leading", DEADLINE)
    finally:
        c.stop()


def test_top_on_a_terminal_refreshes_until_ctrl_c(make_cluster):
    import pty
    import select
    import signal
    import time
    c = make_cluster(1)
    c.wait_leader()
    url = f"tcp://127.0.0.1:{c.client_ports[1]}"
    leader, tty = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "raftfast.top", "--interval", "0.2", url],
                         stdin=tty, stdout=tty, stderr=subprocess.PIPE, cwd=REPO,
                         start_new_session=True, env=dict(os.environ, COLUMNS="200"))
    os.close(tty)
    seen = b""
    try:
        deadline = time.monotonic() + DEADLINE
        # Redrawn in place: the leader's row comes again at every refresh.
        while seen.count(b"leader") < 3 and time.monotonic() < deadline:
            if select.select([leader], [], [], 1.0)[0]:
                seen += os.read(leader, 65536)
        assert seen.count(b"leader") >= 3, seen
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=DEADLINE) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stderr.close()
        os.close(leader)
