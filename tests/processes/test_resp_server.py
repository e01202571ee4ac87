"""The client front door of a real one-node cluster, over raw sockets, so
every reply is checked byte for byte."""
import shutil
import socket
import tempfile

import pytest

from raftfast.runtime.waiters import OutcomeUnknown
from tests.support.client_transport import FakeClientTransport
from tests.support.harness import Cluster

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def node():
    root = tempfile.mkdtemp(prefix="rf")
    c = Cluster(root, n=1).start()
    c.wait_leader()
    yield c.nodes[1]
    c.stop()
    shutil.rmtree(root, ignore_errors=True)


def req(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def read(self, n_bytes):
        while len(self.buf) < n_bytes:
            chunk = self.s.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        out, self.buf = self.buf[:n_bytes], self.buf[n_bytes:]
        return out

    def expect(self, want):
        got = self.read(len(want))
        assert got == want
        return got

    def closed(self):
        return self.s.recv(1) == b""

    def close(self):
        self.s.close()


@pytest.fixture
def conn(node):
    c = Conn(node.client_port)
    yield c
    c.close()


def test_pipelined_replies_come_back_in_order(conn):
    conn.send(req(b"SET", b"p", b"41") + req(b"PING") + req(b"INCR", b"p") + req(b"ECHO", b"hi")
              + req(b"GET", b"p") + req(b"DEL", b"p", b"nope") + req(b"EXISTS", b"p"))
    conn.expect(b"+OK\r\n+PONG\r\n:42\r\n$2\r\nhi\r\n$2\r\n42\r\n:1\r\n:0\r\n")


def test_kv_commands(conn):
    conn.send(req(b"APPEND", b"s", b"ab") + req(b"APPEND", b"s", b"cd") + req(b"MGET", b"s", b"missing")
              + req(b"INCR", b"s"))
    conn.expect(b":2\r\n:4\r\n*2\r\n$4\r\nabcd\r\n$-1\r\n"
                b"-ERR value is not an integer or out of range\r\n")


@pytest.mark.parametrize("cmd,reply", [
    (req(b"GET"), b"-ERR wrong number of arguments for 'get' command\r\n"),
    (req(b"SET", b"k"), b"-ERR wrong number of arguments for 'set' command\r\n"),
    (req(b"SET", b"k", b"v", b"EX", b"10"), b"+OK\r\n"),
    (req(b"SET", b"k", b"v", b"FOO"), b"-ERR syntax error\r\n"),
    (req(b"MSET", b"k", b"v", b"k2"), b"-ERR wrong number of arguments for 'mset' command\r\n"),
    (req(b"MGET"), b"-ERR wrong number of arguments for 'mget' command\r\n"),
    (req(b"FLUSHALL"), b"-ERR unknown command 'FLUSHALL'\r\n"),
    (req(b"SELECT", b"0"), b"+OK\r\n"),
    (req(b"SELECT", b"3"), b"-ERR DB index is out of range\r\n"),
    (req(b"COMMAND"), b"*0\r\n"),
    (req(b"CONFIG", b"GET", b"enable*"), b"*2\r\n$20\r\nenable-debug-command\r\n$2\r\nno\r\n"),
    (req(b"CONFIG", b"GET", b"ENABLE-*", b"*debug*"),
     b"*2\r\n$20\r\nenable-debug-command\r\n$2\r\nno\r\n"),
    (req(b"CONFIG", b"GET", b"no-such-parameter"), b"*0\r\n"),
    (req(b"RAFTFAST.BENCH", b"1", b"1", b"1", b"1"),
     b"-ERR RAFTFAST.BENCH command not allowed. If the enable-debug-command option is set to "
     b"\"local\", you can run it from a local connection, otherwise you need to set this option "
     b"in the configuration file, and then restart the server.\r\n"),
    (req(b"PING", b"x"), b"$1\r\nx\r\n"),
    (b"PING\r\n", b"+PONG\r\n"),  # inline
    (b"SET inl \"a b\"\r\nGET inl\r\n", b"+OK\r\n$3\r\na b\r\n"),
    (req(b"HELLO", b"4"), b"-NOPROTO unsupported protocol version\r\n"),
])
def test_replies_and_errors_use_redis_wording(conn, cmd, reply):
    conn.send(cmd)
    conn.expect(reply)


def read_until(conn, suffix):
    data, conn.buf = conn.buf, b""
    while not data.endswith(suffix):
        chunk = conn.s.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_hello_3_switches_to_resp3_and_hello_2_back(conn):
    conn.send(req(b"HELLO", b"3") + req(b"PING"))
    data = read_until(conn, b"+PONG\r\n")
    assert data.startswith(b"%7\r\n")  # a map of seven fields
    assert b"$5\r\nproto\r\n:3\r\n" in data
    conn.send(req(b"GET", b"no-such-key"))
    conn.expect(b"_\r\n")
    conn.send(req(b"HELLO", b"2") + req(b"GET", b"no-such-key"))
    data = read_until(conn, b"$-1\r\n")
    assert data.startswith(b"*14\r\n") and b"$5\r\nproto\r\n:2\r\n" in data


def test_client_subcommands(conn):
    conn.send(req(b"CLIENT", b"SETNAME", b"me") + req(b"CLIENT", b"GETNAME")
              + req(b"CLIENT", b"SETINFO", b"LIB-NAME", b"x") + req(b"CLIENT", b"NOPE"))
    conn.expect(b"+OK\r\n$2\r\nme\r\n+OK\r\n-ERR unknown subcommand 'NOPE'. Try CLIENT HELP.\r\n")
    conn.send(req(b"CLIENT", b"ID"))
    assert conn.read(1) == b":"


def test_info_has_the_raft_section(conn):
    conn.send(req(b"INFO", b"raft") + req(b"PING"))
    text = read_until(conn, b"+PONG\r\n").decode()
    for field in ("raft_node_id:1", "raft_role:leader", "raft_current_term:", "raft_leader_id:1",
                  "raft_commit_index:", "raft_last_applied:", "raft_first_log_index:1",
                  "raft_last_log_index:", "raft_last_log_term:", "raft_snapshot_index:0",
                  "raft_voters:1",
                  "raft_learners:\r\n", "raft_cluster_id:raftfast"):
        assert field in text, field
    assert "# Server" not in text
    conn.send(req(b"INFO") + req(b"PING"))
    text = read_until(conn, b"+PONG\r\n").decode()
    assert "# Server" in text and "# Raft" in text and "raft_role:leader" in text
    assert "\r\nmaxclients:10000\r\n" in text and "\r\nrejected_connections:0\r\n" in text


def test_quit_replies_then_closes(conn):
    conn.send(req(b"QUIT") + req(b"PING"))
    conn.expect(b"+OK\r\n")
    assert conn.closed()


def test_an_unparseable_stream_is_answered_and_closed(conn, node):
    conn.send(req(b"SET", b"before", b"1") + b"*1\r\n$abc\r\n")
    conn.expect(b"+OK\r\n-ERR Protocol error: invalid bulk length\r\n")
    assert conn.closed()
    other = Conn(node.client_port)
    other.send(req(b"GET", b"before"))
    other.expect(b"$1\r\n1\r\n")
    other.close()


def test_a_hello_later_in_the_pipeline_does_not_change_earlier_replies(conn):
    conn.send(req(b"HELLO", b"3") + req(b"GET", b"no-such-key") + req(b"HELLO", b"2")
              + req(b"GET", b"no-such-key"))
    data = read_until(conn, b"$-1\r\n")
    assert data.startswith(b"%7\r\n")            # HELLO 3 answered in RESP3
    assert b"\r\n_\r\n*14\r\n" in data           # RESP3 null, then HELLO 2's RESP2 array


def test_a_command_too_large_for_one_frame_is_refused_and_nothing_stalls(tmp_path):
    from tests.support.harness import Cluster
    import tempfile, shutil
    root = tempfile.mkdtemp(prefix="rf")
    c = Cluster(root, n=3, extra_args=["--max-frame-bytes", "200000", "--max-batch-bytes", "100000"])
    try:
        c.start()
        leader = c.nodes[c.wait_leader()]
        s = Conn(leader.client_port)
        s.send(req(b"SET", b"big", b"x" * 150000))
        s.expect(b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n")
        s.send(req(b"DEL", b"a" * 60000, b"b" * 60000, b"c" * 60000))
        s.expect(b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n")
        s.send(req(b"SET", b"small", b"y" * 100000))  # fits: accepted and replicated
        s.expect(b"+OK\r\n")
        s.send(req(b"SET", b"after", b"1"))
        s.expect(b"+OK\r\n")
        s.close()
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---- RAFT.NODE -------------------------------------------------------------------

@pytest.mark.parametrize("cmd,reply", [
    (req(b"RAFT.NODE"), b"-ERR wrong number of arguments for 'raft.node' command\r\n"),
    (req(b"RAFT.NODE", b"ADD", b"2"),
     b"-ERR wrong number of arguments for 'raft.node|add' command\r\n"),
    (req(b"RAFT.NODE", b"add", b"2", b"tcp://127.0.0.1:1", b"x"),
     b"-ERR wrong number of arguments for 'raft.node|add' command\r\n"),
    (req(b"RAFT.NODE", b"REMOVE"),
     b"-ERR wrong number of arguments for 'raft.node|remove' command\r\n"),
    (req(b"RAFT.NODE", b"ADD", b"0", b"tcp://127.0.0.1:1"),
     b"-ERR node id must be an integer from 1 to 2^63-1\r\n"),
    (req(b"RAFT.NODE", b"REMOVE", b"9223372036854775808"),
     b"-ERR node id must be an integer from 1 to 2^63-1\r\n"),
    (req(b"RAFT.NODE", b"REMOVE", b"two"), b"-ERR node id must be an integer from 1 to 2^63-1\r\n"),
    (req(b"RAFT.NODE", b"ADD", b"2", b"http://x:1"),
     b"-ERR bad address 'http://x:1': unknown scheme 'http' (use tcp, tls or unix)\r\n"),
    (req(b"RAFT.NODE", b"PROMOTE", b"2"),
     b"-ERR unknown subcommand 'PROMOTE'. Try RAFT.NODE ADD id url or RAFT.NODE REMOVE id.\r\n"),
    # Refused by the core: nothing proposed.
    (req(b"RAFT.NODE", b"ADD", b"1", b"tcp://127.0.0.1:1"), b"-ERR node 1 is already a member\r\n"),
    (req(b"RAFT.NODE", b"REMOVE", b"9"), b"-ERR node 9 is not a member\r\n"),
    (req(b"RAFT.NODE", b"REMOVE", b"1"),
     b"-ERR node 1 is the only voter; it cannot be removed\r\n"),
])
def test_raft_node_arguments_and_refusals(conn, cmd, reply):
    conn.send(cmd)
    conn.expect(reply)


def test_raft_node_add_then_remove_and_one_change_at_a_time(conn, tmp_path):
    """A one-node cluster commits a change on its own; a second change
    proposed before the first commits (same pipeline) is told to retry."""
    far = f"unix://{tmp_path}/nobody.sock".encode()
    conn.send(req(b"RAFT.NODE", b"ADD", b"5", far) + req(b"RAFT.NODE", b"ADD", b"6", far))
    conn.expect(b"+OK\r\n-TRYAGAIN a membership change is in progress\r\n")
    conn.send(req(b"INFO", b"raft") + req(b"PING"))
    text = read_until(conn, b"+PONG\r\n").decode()
    assert "raft_voters:1\r\n" in text and "raft_learners:5\r\n" in text
    conn.send(req(b"RAFT.NODE", b"REMOVE", b"5") + req(b"INFO", b"raft") + req(b"PING"))
    text = read_until(conn, b"+PONG\r\n").decode()
    assert text.startswith("+OK\r\n")
    assert "raft_voters:1\r\n" in text and "raft_learners:\r\n" in text


class _FakeCore:
    leader_id = 2
    cluster_version = 2


class _FakeDriver:
    """What RAFT.NODE needs of the driver: it raises `raises`, or keeps the
    callback for the test to answer."""

    def __init__(self, raises=None, is_leader=True):
        self.raises = raises
        self.is_leader = is_leader
        self.core = _FakeCore()
        self.calls = []

    def change_membership(self, op, node_id, url, callback):
        self.calls.append((op, node_id, url))
        if self.raises is not None:
            raise self.raises
        self.callback = callback
        return 7


def _front_door(driver):
    """A RespServer and one client connection on it, no sockets."""
    import asyncio
    from raftfast.config import Config
    from raftfast.server.connection import ClientProtocol
    from raftfast.server.server import RespServer
    loop = asyncio.new_event_loop()
    cfg = Config(node_id=1, data_dir="x", listen="tcp://127.0.0.1:1", client="tcp://127.0.0.1:2")
    server = RespServer(loop, cfg, driver, dict)
    server.leader_client_url = {2: "tcp://127.0.0.1:7002"}.get
    conn = ClientProtocol(server)
    out = FakeClientTransport()
    conn.connection_made(out)
    return loop, conn, out


def _error_cases():
    from raftfast.core import ConfChangeBusy, ConfChangeInvalid, NotLeader, TransferInProgress
    return [
        (NotLeader(2), b"-MOVED 0 127.0.0.1:7002\r\n"),
        (TransferInProgress(3), b"-TRYAGAIN leadership transfer in progress\r\n"),
        (ConfChangeBusy("the leader has not yet committed an entry of its term"),
         b"-TRYAGAIN the leader has not yet committed an entry of its term\r\n"),
        (ConfChangeInvalid("node 4 is already a member"), b"-ERR node 4 is already a member\r\n"),
    ]


@pytest.mark.parametrize("case", range(4))
def test_raft_node_maps_the_core_refusals_to_replies(case):
    exc, reply = _error_cases()[case]
    drv = _FakeDriver(raises=exc)
    loop, conn, out = _front_door(drv)
    try:
        conn.data_received(req(b"RAFT.NODE", b"ADD", b"4", b"tcp://127.0.0.1:9") + req(b"PING"))
        assert drv.calls == [("add", 4, "tcp://127.0.0.1:9")]
        assert b"".join(out.out) == reply + b"+PONG\r\n"
    finally:
        loop.close()


def test_raft_node_answers_when_applied_or_outcome_unknown():
    drv = _FakeDriver()
    loop, conn, out = _front_door(drv)
    try:
        conn.data_received(req(b"RAFT.NODE", b"REMOVE", b"3") + req(b"PING"))
        assert drv.calls == [("remove", 3, "")]
        assert out.out == []  # PING waits behind the pending change
        drv.callback(None)
        assert b"".join(out.out) == b"+OK\r\n+PONG\r\n"
        out.out.clear()
        conn.data_received(req(b"RAFT.NODE", b"REMOVE", b"3"))
        drv.callback(OutcomeUnknown())  # leadership lost before it committed
        assert b"".join(out.out) == b"-TIMEOUT outcome unknown\r\n"
    finally:
        loop.close()


@pytest.mark.parametrize("leader,reply", [(2, b"-MOVED 0 127.0.0.1:7002\r\n"),
                                          (0, b"-CLUSTERDOWN No raft leader\r\n")])
def test_raft_node_on_a_follower_redirects(leader, reply):
    drv = _FakeDriver(is_leader=False)
    drv.core.leader_id = leader
    loop, conn, out = _front_door(drv)
    try:
        conn.data_received(req(b"RAFT.NODE", b"ADD", b"4", b"tcp://127.0.0.1:9"))
        assert drv.calls == [] and b"".join(out.out) == reply
    finally:
        loop.close()


class _PeerTransport(FakeClientTransport):
    def __init__(self, peername=None, sockname=None):
        super().__init__()
        self.extra = {"peername": peername, "sockname": sockname}

    def get_extra_info(self, name):
        return self.extra.get(name)


@pytest.mark.parametrize("mode, peer, sockname, allowed", [
    ("no", ("127.0.0.1", 5000), None, False),
    ("local", ("127.0.0.1", 5000), None, True),
    ("local", ("::1", 5000, 0, 0), None, True),
    ("local", ("::ffff:127.0.0.1", 5000, 0, 0), None, True),
    ("local", ("10.1.2.3", 5000), None, False),
    ("local", ("::ffff:10.1.2.3", 5000, 0, 0), None, False),
    ("local", "", "/run/raftfast.sock", True),  # a Unix-socket client
    ("local", None, None, False),  # unknown: not local
    ("yes", ("10.1.2.3", 5000), None, True),
])
def test_raftfast_bench_is_a_debug_command(mode, peer, sockname, allowed):
    import asyncio
    from raftfast.config import Config
    from raftfast.server.connection import ClientProtocol
    from raftfast.server.server import RespServer
    loop = asyncio.new_event_loop()
    try:
        cfg = Config(node_id=1, data_dir="x", listen="tcp://127.0.0.1:1",
                     client="tcp://127.0.0.1:2", enable_debug_command=mode)
        conn = ClientProtocol(RespServer(loop, cfg, _FakeDriver(), dict))
        out = _PeerTransport(peer, sockname)
        conn.connection_made(out)
        conn.data_received(req(b"RAFTFAST.BENCH", b"nonsense") + req(b"PING"))
        reply = b"".join(out.out)
        if allowed:  # past the gate: its own usage check answers
            assert reply == (b"-ERR usage: RAFTFAST.BENCH seconds batch_entries value_size "
                             b"window\r\n+PONG\r\n")
        else:
            assert reply.startswith(b"-ERR RAFTFAST.BENCH command not allowed.")
            assert reply.endswith(b"restart the server.\r\n+PONG\r\n")
    finally:
        loop.close()


def _door_with_password(password=b"s3cret pass", is_leader=True):
    import asyncio
    from raftfast.config import Config
    from raftfast.server.connection import ClientProtocol
    from raftfast.server.server import RespServer
    loop = asyncio.new_event_loop()
    cfg = Config(node_id=1, data_dir="x", listen="tcp://127.0.0.1:1", client="tcp://127.0.0.1:2")
    drv = _FakeDriver(is_leader=is_leader)
    server = RespServer(loop, cfg, drv, dict, password=password)
    server.leader_client_url = {2: "tcp://127.0.0.1:7002"}.get
    conn = ClientProtocol(server)
    out = FakeClientTransport()
    conn.connection_made(out)
    return loop, conn, out


NOAUTH = b"-NOAUTH Authentication required.\r\n"
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"


@pytest.mark.parametrize("is_leader", [True, False])
def test_before_auth_every_command_gets_noauth_and_nothing_runs(is_leader):
    loop, conn, out = _door_with_password(is_leader=is_leader)
    try:
        conn.data_received(req(b"SET", b"k", b"v") + req(b"GET", b"k") + req(b"PING")
                           + req(b"RAFT.NODE", b"ADD", b"4", b"tcp://127.0.0.1:9")
                           + req(b"HELLO", b"3"))
        hello = (b"-NOAUTH HELLO must be called with the client already authenticated, "
                 b"otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                 b"authenticate the client and select the RESP protocol version at the same "
                 b"time\r\n")
        # NOAUTH before any redirect, and nothing reached the driver.
        assert b"".join(out.out) == NOAUTH * 4 + hello
        assert conn.server.driver.calls == [] and not conn.resp3
        assert conn.server.batcher.buf == b""
    finally:
        loop.close()


def test_auth_with_the_password_opens_the_connection_for_what_follows():
    loop, conn, out = _door_with_password()
    try:
        conn.data_received(req(b"AUTH", b"wrong") + req(b"AUTH", b"default", b"wrong")
                           + req(b"AUTH", b"bob", b"s3cret pass") + req(b"PING")
                           + req(b"AUTH", b"s3cret pass") + req(b"PING")
                           + req(b"ECHO", b"x" * 20000) + req(b"PING", *[b"a"] * 11))
        assert b"".join(out.out) == (
            WRONGPASS * 3 + NOAUTH + b"+OK\r\n+PONG\r\n" + b"$20000\r\n" + b"x" * 20000 + b"\r\n"
            + b"-ERR wrong number of arguments for 'ping' command\r\n")
        assert conn.authenticated
    finally:
        loop.close()



def test_during_a_password_rotation_the_old_and_the_new_one_open_the_door(tmp_path):
    from raftfast.server.auth import load_password, load_passwords
    path = tmp_path / "pass"
    path.write_bytes(b"old pass\nnew pass\n")
    assert load_passwords(path) == (b"old pass", b"new pass")
    assert load_password(path) == b"old pass"   # what a client of this file sends
    for given, ok in ((b"old pass", True), (b"new pass", True), (b"other", False)):
        loop, conn, out = _door_with_password(load_passwords(path))
        try:
            conn.data_received(req(b"AUTH", given) + req(b"PING"))
            assert b"".join(out.out) == (b"+OK\r\n+PONG\r\n" if ok else WRONGPASS + NOAUTH)
        finally:
            loop.close()


def test_hello_with_auth_authenticates_and_switches_protocol_at_once():
    loop, conn, out = _door_with_password()
    try:
        conn.data_received(req(b"HELLO", b"3", b"AUTH", b"default", b"nope"))
        assert b"".join(out.out) == WRONGPASS and not conn.resp3 and not conn.authenticated
        out.out.clear()
        conn.data_received(req(b"HELLO", b"3", b"AUTH", b"default", b"s3cret pass",
                               b"SETNAME", b"me") + req(b"PING"))
        reply = b"".join(out.out)
        assert reply.startswith(b"%7\r\n") and reply.endswith(b"+PONG\r\n")
        assert conn.resp3 and conn.authenticated and conn.name == b"me"
    finally:
        loop.close()


@pytest.mark.parametrize("request_bytes, error", [
    (req(b"AUTH", *[b"x"] * 10), b"-ERR Protocol error: unauthenticated multibulk length\r\n"),
    (req(b"AUTH", b"x" * 16385), b"-ERR Protocol error: unauthenticated bulk length\r\n"),
])
def test_before_auth_requests_are_held_to_the_pre_auth_limits(request_bytes, error):
    loop, conn, out = _door_with_password()
    try:
        conn.data_received(request_bytes)
        assert b"".join(out.out) == error and conn.closing
    finally:
        loop.close()
    loop, conn, out = _door_with_password()
    try:  # at the limits themselves: answered
        conn.data_received(req(b"AUTH", *[b"x"] * 9) + req(b"AUTH", b"x" * 16384))
        assert b"".join(out.out) == (b"-ERR wrong number of arguments for 'auth' command\r\n"
                                     + WRONGPASS)
        assert not conn.closing
    finally:
        loop.close()


def test_without_a_password_auth_answers_as_redis_does():
    loop, conn, out = _door_with_password(password=None)
    try:
        conn.data_received(req(b"AUTH", b"pw") + req(b"AUTH", b"default", b"anything")
                           + req(b"AUTH", b"bob", b"pw"))
        assert b"".join(out.out) == (
            b"-ERR AUTH <password> called without any password configured for the default "
            b"user. Are you sure your configuration is correct?\r\n+OK\r\n" + WRONGPASS)
    finally:
        loop.close()


class _ClosingTransport(FakeClientTransport):
    def __init__(self):
        super().__init__()
        self.closed = self.aborted = False

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


def _door(**cfg_kw):
    """A RespServer with the given Config settings, and a way to connect."""
    import asyncio
    from raftfast.config import Config
    from raftfast.server.connection import ClientProtocol
    from raftfast.server.server import RespServer
    loop = asyncio.new_event_loop()
    cfg = Config(node_id=1, data_dir="x", listen="tcp://127.0.0.1:1", client="tcp://127.0.0.1:2",
                 **cfg_kw)
    server = RespServer(loop, cfg, _FakeDriver(), dict)

    def connect():
        conn = ClientProtocol(server)
        out = _ClosingTransport()
        conn.connection_made(out)
        return conn, out
    return loop, server, connect


def test_a_request_announcing_a_bulk_over_proto_max_bulk_len_closes_its_connection_unread():
    loop, server, connect = _door(proto_max_bulk_len=4096)
    try:
        conn, out = connect()
        other, other_out = connect()
        conn.data_received(req(b"PING") + b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4097\r\nxx")
        assert b"".join(out.out) == b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
        assert conn.closing
        other.data_received(req(b"ECHO", b"x" * 4096))  # at the limit: served
        assert b"".join(other_out.out) == b"$4096\r\n" + b"x" * 4096 + b"\r\n"
    finally:
        loop.close()


def test_requests_not_complete_past_the_query_buffer_limit_close_the_connection(caplog):
    loop, server, connect = _door(client_query_buffer_limit=10000)
    try:
        conn, out = connect()
        other, other_out = connect()
        # MSET announcing many arguments, arriving slowly: held as they come.
        conn.data_received(b"*1001\r\n$4\r\nMSET\r\n")
        for _ in range(3):  # 9,004 bytes of arguments held: under the limit
            conn.data_received(b"$3000\r\n" + b"v" * 3000 + b"\r\n")
        assert not out.aborted and conn.parser.pending_bytes == 9004
        conn.data_received(b"$3000\r\n" + b"v" * 3000 + b"\r\n")  # past it
        assert out.aborted and conn.closing
        assert conn.parser.pending_bytes == 0  # what it held is let go
        assert any("--client-query-buffer-limit 10000" in r.getMessage() for r in caplog.records)
        other.data_received(req(b"PING"))
        assert other_out.out == [b"+PONG\r\n"] and not other_out.aborted
    finally:
        loop.close()


def test_one_client_past_maxclients_is_told_and_closed():
    loop, server, connect = _door(maxclients=2)
    try:
        (a, a_out), (_, b_out), (c, c_out) = connect(), connect(), connect()
        assert c_out.out == [b"-ERR max number of clients reached\r\n"] and c_out.closed
        assert c.closing and c not in server.connections
        assert len(server.connections) == 2 and not a_out.closed and not b_out.closed
        assert server.rejected_connections == 1  # INFO stats rejected_connections
        a.connection_lost(None)
        d, d_out = connect()  # room again
        assert not d_out.closed and len(server.connections) == 2
    finally:
        loop.close()


def test_idle_connections_are_closed_after_timeout_seconds():
    loop, server, connect = _door(timeout=2)
    try:
        (_, idle_out), (busy, busy_out) = connect(), connect()
        for _ in range(3):
            busy.data_received(req(b"PING"))
            server.close_idle()
        assert idle_out.closed and not busy_out.closed
        server._idle_timer.cancel()
    finally:
        loop.close()


def test_the_limits_are_config_get_parameters():
    loop, server, connect = _door(maxclients=50, timeout=7)
    try:
        conn, out = connect()
        conn.data_received(req(b"CONFIG", b"GET", b"*"))
        reply = b"".join(out.out)
        for name, value in ((b"maxclients", b"50"), (b"timeout", b"7"),
                            (b"proto-max-bulk-len", b"33554432"),
                            (b"client-query-buffer-limit", b"67108864")):
            assert b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(name), name, len(value), value) in reply
    finally:
        loop.close()


def test_maxclients_past_the_file_descriptor_limit_raises_the_limit_or_is_lowered(monkeypatch):
    import resource
    from raftfast.config import Config
    from raftfast.server import server as server_mod
    cfg = Config(node_id=1, data_dir="x", listen="tcp://127.0.0.1:1", client="tcp://127.0.0.1:2",
                 peers={2: "tcp://127.0.0.1:3"}, maxclients=5000)
    limits = {"now": (1024, 2048)}
    monkeypatch.setattr(server_mod.resource, "getrlimit", lambda which: limits["now"])

    def setrlimit(which, value):
        hard = limits["now"][1]
        if hard != resource.RLIM_INFINITY and value[0] > hard:
            raise ValueError("over the hard limit")
        limits["now"] = value
    monkeypatch.setattr(server_mod.resource, "setrlimit", setrlimit)
    # Raised as far as the hard limit allows, then lowered to what is left.
    assert server_mod.effective_maxclients(cfg) == 2048 - 64 - 4
    assert limits["now"] == (2048, 2048)
    limits["now"] = (1024, resource.RLIM_INFINITY)
    assert server_mod.effective_maxclients(cfg) == 5000 and limits["now"][0] == 5000 + 68


def _peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))


def test_an_unfinished_request_cannot_hold_more_than_the_query_buffer_limit():
    """The issue's second attack: an MSET announcing a million arguments,
    then 32 MiB arguments, never finished.  With the default limits (64 MiB
    of incomplete requests) the connection is closed once it holds more,
    the node's peak memory grows by about the limit, and it keeps serving."""
    import shutil
    import tempfile
    from tests.support.harness import Cluster
    root = tempfile.mkdtemp(prefix="rf")
    c = Cluster(root, n=1)
    try:
        c.start()
        node = c.nodes[c.wait_leader()]
        before = _peak_rss(node.proc.pid)
        s = socket.create_connection(("127.0.0.1", node.client_port), timeout=30)
        arg = b"$33554432\r\n" + b"v" * 33554432 + b"\r\n"
        sent = 0
        try:
            s.sendall(b"*1000000\r\n$4\r\nMSET\r\n")
            for _ in range(8):
                s.sendall(arg)
                sent += 1
            closed = s.recv(1) == b""
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        s.close()
        assert closed and sent <= 3  # cut off after the third argument at the latest
        grown = _peak_rss(node.proc.pid) - before
        assert grown < (64 << 20) + (48 << 20), grown  # the limit, one argument's copy, buffers
        other = Conn(node.client_port)
        other.send(req(b"SET", b"k", b"v") + req(b"GET", b"k"))
        other.expect(b"+OK\r\n$1\r\nv\r\n")
        other.close()
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


class _ExhaustedParser:
    """A parser that finds no memory for what arrives."""
    pending_bytes = 0

    def feed(self, data):
        raise MemoryError


def test_out_of_memory_while_reading_closes_that_connection_only(caplog):
    loop, server, connect = _door()
    try:
        (greedy, greedy_out), (other, other_out) = connect(), connect()
        greedy.parser = _ExhaustedParser()
        greedy.data_received(req(b"PING"))
        assert greedy_out.aborted and greedy.closing
        assert any("out of memory" in r.getMessage() for r in caplog.records)
        other.data_received(req(b"PING"))
        assert other_out.out == [b"+PONG\r\n"] and not other_out.aborted
    finally:
        loop.close()


class _Reader:
    """A connection as the batcher sees it when serving reads."""

    def __init__(self, cid):
        self.id = cid
        self.closed = False

    def close_now(self):
        self.closed = True


def test_out_of_memory_building_a_batch_of_replies_closes_only_the_client_it_is_for():
    """The whole batch's replies do not fit; built connection by connection,
    only the one whose own replies do not fit loses its connection."""
    from types import SimpleNamespace
    from raftfast._kv import OP_GET, KVStore, encode_commands
    from raftfast.server.batcher import Batcher
    from raftfast.server.replies import Slot
    store = KVStore.from_dict({b"a": b"1", b"huge": b"x"})

    def read(block, now_ms):
        if b"huge" in block:
            raise MemoryError
        return store.read_replies(block, now_ms)
    server = SimpleNamespace(driver=SimpleNamespace(state_machine=SimpleNamespace(read=read)))
    batcher = Batcher(None, server, server.driver, 1024, 1 << 20, 0)
    modest, greedy = _Reader(1), _Reader(2)
    runs = [(modest, Slot(False), 1), (greedy, Slot(False), 1), (modest, Slot(False), 1)]
    block = encode_commands([(OP_GET, [b"a"]), (OP_GET, [b"huge"]), (OP_GET, [b"zz"])])
    batcher._serve_each(block, runs, 0)
    assert [slot.value for _, slot, _ in runs] == [b"$1\r\n1\r\n", b"", b"$-1\r\n"]
    assert greedy.closed and not modest.closed


def test_at_maxmemory_growing_writes_get_oom_in_place_and_deletes_go_to_the_batch():
    """One pipeline mixing writes while the cluster is at its limit: each
    SET, APPEND and INCR is answered OOM in its own place, and the DELs
    between them (deleting is how a full cluster recovers) are batched."""
    from raftfast._kv import OP_DEL, encode_commands
    loop, server, connect = _door()
    try:
        conn, out = connect()
        server.memory.refusing = True
        conn.data_received(req(b"SET", b"a", b"1") + req(b"DEL", b"a") + req(b"DEL", b"b")
                           + req(b"APPEND", b"c", b"x") + req(b"INCR", b"n")
                           + req(b"DEL", b"c"))
        oom = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
        assert out.out == [oom]  # the rest waits behind the batched DELs
        assert bytes(server.batcher.buf) == (encode_commands([(OP_DEL, [b"a"]), (OP_DEL, [b"b"])])
                                             + encode_commands([(OP_DEL, [b"c"])]))
        assert server.batcher.count == 3 and server.memory.writes_refused == 3
        assert [s.raw and bytes(s.value) == oom * 2 for s in conn.replies] == [False, True, False]
    finally:
        server.batcher.cancel()
        loop.close()


def test_at_maxmemory_a_session_write_is_refused_as_its_command_would_be():
    """RAFT.EXEC grows the data set when the command it runs does:
    RAFT.EXEC of a SET gets OOM, of a DEL goes to the batch; a new session
    is refused too."""
    from raftfast._kv import OP_EXEC, encode_commands
    loop, server, connect = _door()
    try:
        conn, out = connect()
        server.memory.refusing = True
        conn.data_received(req(b"RAFT.EXEC", b"1", b"1", b"set", b"a", b"1")
                           + req(b"RAFT.EXEC", b"1", b"2", b"DEL", b"a")
                           + req(b"RAFT.SESSION", b"OPEN"))
        oom = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
        assert out.out == [oom]
        assert bytes(server.batcher.buf) == encode_commands(
            [(OP_EXEC, [b"1", b"2", b"DEL", b"a"])], append_limit=server.cfg.proto_max_bulk_len)
        assert server.memory.writes_refused == 2
    finally:
        server.batcher.cancel()
        loop.close()
