"""Hypothesis-driven input on a live 3-node cluster's peer and client ports.

What a node promises: a peer connection sending anything that is not a
well-formed frame is closed and logged, and the node keeps serving;
messages from ids outside the configuration are dropped; no client input
crashes a node.  So after every example, whatever it sent, every node
process must still be alive, the cluster must elect a leader that takes a
SET and returns it, and the data written before the first example must
be intact.

One cluster serves the whole module (started once: each example would
otherwise pay for three processes).  Inputs go to the leader's port or a
follower's, chosen per example.

What peers are trusted with.  These nodes run without peer authentication
(no cluster secret, no TLS), so a connection that says it is member 2 is
member 2.
A far-future term from a member is legitimate Raft: every node that hears
it steps down to that term, and the cluster must elect a leader again --
that is tested.  What is not tested, because nothing can tell it from the
real thing: a member's message in the current term that matches the log
(an append that fits, an acknowledgement of entries) -- a forged leader
or follower can always write or commit what it likes.  The forged member
messages here therefore carry a term above any the cluster has seen, and
appends carry an index no log reaches.
"""
import os
import shutil
import socket
import struct
import tempfile
import uuid

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, MovedError, ResponseError, TryAgainError
from redis.retry import Retry

from raftfast._codec import encode_handshake, encode_message
from raftfast._crc import crc32c
from raftfast.core.messages import (MSG_APPEND, MSG_HEARTBEAT, MSG_NAMES, MSG_SNAPSHOT_ACK,
                                    MSG_SNAPSHOT_CHUNK, Message)
from tests.support.harness import Cluster
from tests.support.wait import until

pytestmark = pytest.mark.multiprocess

CLUSTER = "raftfast"
MEMBERS = (1, 2, 3)
U64 = (1 << 64) - 1
BELOW_2_63 = (1 << 63) - 1
SENTINELS = {f"sentinel:{uuid.uuid4().hex}:{i}": f"value-{i}".encode() for i in range(40)}

# No shrinking: the examples act on one live cluster, so a failing example
# cannot be replayed on the state it failed in, and a dead node would make
# every smaller example fail too.  Hypothesis prints the failing example.
FUZZ = settings(deadline=None, max_examples=40, phases=(Phase.explicit, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow])


# ---- the cluster ------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    yield from _running_cluster(election_ms=150)


@pytest.fixture(scope="module")
def calm_cluster():
    """One whose followers cannot miss their leader for an election timeout
    on a loaded machine: a node that has not heard a leader for that long
    follows a leader it does not know (a lagging member must), so a
    stranger's claim is refused only while a leader is heard."""
    yield from _running_cluster(election_ms=3000)


def _running_cluster(election_ms):
    root = tempfile.mkdtemp(prefix="rffz")
    old = os.environ.get("RAFTFAST_WAL_SEGMENT_BYTES")
    os.environ["RAFTFAST_WAL_SEGMENT_BYTES"] = str(1 << 20)  # small segments, quick start
    c = Cluster(root, n=3, transport="tcp", heartbeat_ms=20, election_ms=election_ms)
    try:
        c.start()
    finally:
        if old is None:
            del os.environ["RAFTFAST_WAL_SEGMENT_BYTES"]
        else:
            os.environ["RAFTFAST_WAL_SEGMENT_BYTES"] = old
    try:
        with c.nodes[c.wait_leader()].client(retry=Retry(NoBackoff(), 0)) as r:
            for k, v in SENTINELS.items():
                assert r.set(k, v) is True
        yield c
    finally:
        codes = c.stop()
        logs = {i: n.log_tail(n=10 ** 6) for i, n in c.nodes.items()}
        shutil.rmtree(root, ignore_errors=True)
    # Every node was alive to the end and stopped cleanly, and no input made
    # one raise: an exception escaping a protocol callback is logged by the
    # event loop ("Exception in callback", a traceback) and the connection
    # dropped, so the node lives on, but it is a bug all the same.
    assert codes == {1: 0, 2: 0, 3: 0}, codes
    for i, text in logs.items():
        bad = [ln for ln in text.splitlines()
               if "Traceback" in ln or "CRITICAL" in ln or "Exception" in ln or "Fatal" in ln]
        assert not bad, f"node {i}:\n" + "\n".join(bad)


def assert_alive(cluster):
    dead = [i for i, n in cluster.nodes.items() if not n.alive()]
    assert not dead, "\n".join(f"--- node {i}\n{cluster.nodes[i].log_tail()}" for i in dead)


def pick(cluster, role):
    """(node, id) of the leader or of a follower."""
    assert_alive(cluster)
    lid = cluster.wait_leader()
    nid = lid if role == "leader" else next(i for i in cluster.ids if i != lid)
    return cluster.nodes[nid], nid


def other_member(nid, k):
    """The k-th (0 or 1) member other than nid: drawn as k, so that what
    Hypothesis draws does not depend on which node leads."""
    return [i for i in MEMBERS if i != nid][k]


def max_term(cluster):
    infos = [n.info() for n in cluster.nodes.values()]
    assert all(infos), "a node did not answer INFO"
    return max(int(inf["raft_current_term"]) for inf in infos)


# What a leader that lost its role in between says; the command took no
# effect (or, for TIMEOUT, an unknown one).
LEADERSHIP_MOVED = (MovedError, ClusterDownError, TryAgainError)


def on_leader(cluster, command):
    """command(redis client) on the leader, again on the next leader if
    leadership moves in between (a forged term takes effect over a few
    round trips, and a loaded machine may hold an election of its own)."""
    moved = [None]

    def done():
        leader = cluster.nodes[cluster.wait_leader(timeout=30)]
        with leader.client(retry=Retry(NoBackoff(), 0)) as r:
            try:
                return (command(r),)  # a tuple: the command's own result may be falsy
            except ResponseError as e:
                if not isinstance(e, LEADERSHIP_MOVED) and not str(e).startswith("TIMEOUT"):
                    raise
                moved[0] = e
                return None

    return until(done, lambda: f"a leader to take the command (last: {moved[0]!r})", 30,
                 interval=0.05)[0]


def write_probe(r):
    # A fresh key on every attempt: after a TIMEOUT the last one's fate is unknown.
    key = f"probe:{uuid.uuid4().hex}"
    assert r.set(key, b"ok") is True
    return key


def assert_serving(cluster):
    """Every node alive; a leader that all agree on takes a fresh SET, returns
    it, and holds every sentinel written before the fuzzing."""
    assert_alive(cluster)
    key = on_leader(cluster, write_probe)
    assert on_leader(cluster, lambda r: r.get(key)) == b"ok"
    assert on_leader(cluster, lambda r: r.mget(list(SENTINELS))) == list(SENTINELS.values())
    assert_alive(cluster)


# ---- bytes on the wire ------------------------------------------------------------

def frame(ftype, body, version=1, reserved=0, body_len=None, crc=None):
    """A frame around any body: its CRC correct unless given, so the decoder
    gets past the checksum to whatever the body says."""
    return struct.pack("<IBBHI", len(body) if body_len is None else body_len, version, ftype,
                       reserved, crc32c(body) if crc is None else crc) + body


def message_body(mtype, frm, term=0, index=0, log_term=0, commit=0, hint=0, context=0,
                 flags=0, block=b"", count=None, entries_len=None):
    """A MESSAGE body with every field free, lengths derived unless given."""
    return struct.pack("<BBHQQQQQQQII", mtype, flags, 0, frm, term, index, log_term, commit,
                       hint, context, len(block) if count is None else count,
                       len(block) if entries_len is None else entries_len) + block


def entry_block(entries):
    return b"".join(struct.pack("<IQB", len(d), t, k) + d for t, k, d in entries)


# Sent last on a connection: a frame of an unknown version, which the node
# refuses by closing.  Reading until the close proves that it has handled
# everything sent before.
POISON = frame(3, b"", version=200)


def send_peer(cluster, node_id, data, then_poison=True):
    """Write data to node_id's peer port, then wait for the node to close."""
    port = cluster.peer_ports[node_id]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data + (POISON if then_poison else b""))
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass  # a handshake ack, then the close
        except OSError:
            pass  # closed on us while we were still writing (reset, EPIPE, ENOTCONN): handled


u64s = st.one_of(st.integers(0, U64), st.sampled_from([0, 1, (1 << 32) - 1, 1 << 32, BELOW_2_63,
                                                        1 << 63, U64 - 1, U64]))
blocks = st.lists(st.tuples(u64s, st.integers(0, 255), st.binary(max_size=24)), max_size=4)
roles = st.sampled_from(["leader", "follower"])
strangers = st.one_of(st.integers(4, 100), st.integers(4, BELOW_2_63))


@st.composite
def lying_bodies(draw, frm):
    """MESSAGE bodies whose CRC is right but whose framing lies."""
    ents = draw(blocks)
    block = entry_block(ents)
    kind = draw(st.sampled_from(["count", "entries_len", "cut block", "long data", "type"]))
    if kind == "count":
        count = draw(st.integers(0, (1 << 32) - 1).filter(lambda c: c != len(ents)))
        return message_body(MSG_APPEND, frm, block=block, count=count)
    if kind == "entries_len":
        return message_body(MSG_APPEND, frm, block=block, entries_len=draw(
            st.integers(0, (1 << 32) - 1).filter(lambda n: n != len(block))))
    if kind == "cut block":
        cut = draw(st.integers(0, max(0, len(block) - 1)))
        return message_body(MSG_APPEND, frm, block=block[:cut], count=len(ents) or 1)
    if kind == "long data":  # an entry claiming more data than the frame holds
        bad = struct.pack("<IQB", draw(st.integers(1, (1 << 32) - 1)), 1, 0) + b"x"
        return message_body(MSG_APPEND, frm, block=block + bad, count=len(ents) + 1)
    return message_body(draw(st.sampled_from([0, 11, 99, 255])), frm)


@FUZZ
@given(role=roles, data=st.binary(max_size=4096))
def test_random_bytes_on_a_peer_port(cluster, role, data):
    _, nid = pick(cluster, role)
    send_peer(cluster, nid, data)
    assert_serving(cluster)


@FUZZ
@given(role=roles, st_data=st.data())
def test_truncated_and_oversized_frames(cluster, role, st_data):
    """A valid handshake and message cut anywhere; length prefixes up to
    4 GiB (refused from the header alone, before any body is buffered)."""
    _, nid = pick(cluster, role)
    me = st_data.draw(st.integers(0, 1).map(lambda k: other_member(nid, k)) | strangers)
    hs = encode_handshake(CLUSTER, me)
    msg = encode_message(Message(MSG_HEARTBEAT, frm=me, term=0))
    kind = st_data.draw(st.sampled_from(["truncated", "huge length", "huge handshake"]))
    if kind == "truncated":
        wire = hs + msg
        wire = wire[:st_data.draw(st.integers(0, len(wire) - 1))]
        send_peer(cluster, nid, wire, then_poison=False)
    elif kind == "huge length":
        body_len = st_data.draw(st.integers((64 << 20) + 1, (1 << 32) - 1))
        send_peer(cluster, nid, hs + frame(3, b"\0" * 68, body_len=body_len) + b"\0" * 1000,
                  then_poison=False)
    else:
        body_len = st_data.draw(st.integers(200 << 10, (1 << 32) - 1))
        send_peer(cluster, nid, frame(1, b"\0" * 14, body_len=body_len), then_poison=False)
    assert_serving(cluster)


def handshake_body(node_id, cluster_id, vmin, vmax, url):
    return (struct.pack("<HHQH", vmin, vmax, node_id, len(cluster_id)) + cluster_id
            + struct.pack("<H", len(url)) + url)


@FUZZ
@given(role=roles, st_data=st.data(), cluster_id=st.sampled_from([CLUSTER.encode(), b"other", b""])
       | st.binary(max_size=30), versions=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
       url=st.text(max_size=60).map(str.encode) | st.binary(max_size=60),
       header_version=st.just(1) | st.integers(0, 255))
def test_absurd_handshakes(cluster, role, st_data, cluster_id, versions, url, header_version):
    """Handshakes from strangers with any cluster id, version range, client
    URL (text or not), header version; or claiming the receiver's own id,
    or no id at all.  Each is refused or, if acceptable, changes nothing."""
    _, nid = pick(cluster, role)
    who = st_data.draw(st.sampled_from(["stranger", "self", "zero", "2**63"]))
    node_id = {"stranger": st_data.draw(strangers), "self": nid, "zero": 0,
               "2**63": 1 << 63}[who]
    body = handshake_body(node_id, cluster_id, *versions, url)
    then = encode_message(Message(MSG_HEARTBEAT, frm=max(1, node_id % (1 << 63)), term=1 << 50))
    send_peer(cluster, nid, frame(1, body, version=header_version) + then)
    assert_serving(cluster)
    assert max_term(cluster) < 1 << 50


@FUZZ
@given(role=roles, st_data=st.data())
def test_valid_handshake_then_garbage(cluster, role, st_data):
    """Past the handshake the connection is trusted to speak frames; garbage,
    lying frames and frames of the wrong kind close it."""
    _, nid = pick(cluster, role)
    me = st_data.draw(st.integers(0, 1).map(lambda k: other_member(nid, k)) | strangers)
    tail = st_data.draw(st.one_of(
        st.binary(min_size=1, max_size=2048),
        lying_bodies(me).map(lambda b: frame(3, b)),
        st.just(encode_handshake(CLUSTER, me)),                          # a second handshake
        st.just(frame(2, b"\0" * 16)),                                   # an ack, inbound
        st.just(encode_message(Message(MSG_HEARTBEAT, frm=1 + me % 3))),  # someone else's id
        st.binary(min_size=68, max_size=68).map(lambda b: frame(3, b)),  # any fixed fields
    ))
    send_peer(cluster, nid, encode_handshake(CLUSTER, me) + tail)
    assert_serving(cluster)


@FUZZ
@given(role=roles, stranger=strangers, mtype=st.sampled_from(sorted(MSG_NAMES)),
       fields=st.tuples(u64s, u64s, u64s, u64s, u64s, u64s), flags=st.integers(0, 1),
       ents=blocks)
def test_absurd_messages_from_a_stranger_change_nothing(calm_cluster, role, stranger, mtype,
                                                        fields, flags, ents):
    """Any message, with any field, from an id outside the configuration --
    a far-future term included -- is dropped by nodes that hear their
    leader: no node adopts its term."""
    cluster = calm_cluster
    _, nid = pick(cluster, role)
    before = max_term(cluster)
    term = before + (1 << 40) + fields[0] % (1 << 40)  # far beyond any election's reach
    block = entry_block([(t, k % 3, d) for t, k, d in ents])
    body = message_body(mtype, stranger, term, *fields[1:], flags=flags, block=block,
                        count=len(ents))
    send_peer(cluster, nid, encode_handshake(CLUSTER, stranger) + frame(3, body))
    assert_serving(cluster)
    assert max_term(cluster) < term


# Far-future terms from members.  Terms of 2**63 and above are refused as
# malformed (no node can reach them; test below); within the range, a
# member's term is adopted, as Raft says.
ADOPTING = {MSG_APPEND, MSG_HEARTBEAT}  # adopted at once, whatever the receiver's state


@settings(FUZZ, max_examples=25)
@given(role=roles, st_data=st.data(), mtype=st.sampled_from(sorted(MSG_NAMES)),
       leap=st.integers(1000, 1 << 40), fields=st.tuples(*[st.integers(0, BELOW_2_63)] * 5),
       flags=st.integers(0, 1), ents=blocks)
def test_far_future_term_from_a_member_is_recovered_from(cluster, role, st_data, mtype, leap,
                                                         fields, flags, ents):
    """Every kind of message from a member, with a term far above the
    cluster's and fields at random: the nodes step down where Raft says so,
    and a leader is elected again, in a later term, with the data intact."""
    _, nid = pick(cluster, role)
    member = other_member(nid, st_data.draw(st.integers(0, 1)))
    # Far enough ahead that no election of the cluster's own (a loaded
    # machine may hold some) reaches it first.
    term = max_term(cluster) + leap
    index, log_term, commit, hint, context = fields
    if mtype == MSG_APPEND:
        index = max(index, 1 << 32)  # no log here reaches it: the append cannot match
    block = entry_block([(min(t, term), k % 3, d) for t, k, d in ents])
    count = len(ents)
    if mtype == MSG_SNAPSHOT_CHUNK:
        # Raw file bytes at an offset of a total size (protocol v2's rules).
        count, hint = 0, commit + len(block) + hint % 2
        context = int(commit + len(block) == hint)
    elif mtype == MSG_SNAPSHOT_ACK:
        block, count = b"", 0
    msg = Message(mtype, frm=member, term=term, index=index, log_term=log_term, commit=commit,
                  reject=bool(flags), hint=hint, context=context, entries=block or None,
                  count=count)
    send_peer(cluster, nid, encode_handshake(CLUSTER, member) + encode_message(msg))
    assert_serving(cluster)
    if mtype in ADOPTING:
        until(lambda: int(cluster.nodes[cluster.wait_leader()].info()["raft_current_term"]) > term,
              "a leader in a term above the forged one (the forged term adopted)", 30)
    assert max_term(cluster) < 1 << 63


@settings(FUZZ, max_examples=20)
@given(role=roles, st_data=st.data(), mtype=st.sampled_from(sorted(MSG_NAMES)),
       field=st.sampled_from(["term", "index", "log_term", "commit", "hint"]),
       value=st.integers(1 << 63, U64))
def test_values_of_2_63_and_above_are_refused(cluster, role, st_data, mtype, field, value):
    """No node can reach a term or an index of 2**63 (one election per term,
    one entry per index); as signed 64-bit numbers they would be negative.
    A frame carrying one is malformed: the connection is closed and nothing
    changes.  (Before this rule a member's term of 2**64-1 was adopted, and
    the next election's term+1 did not fit in u64: every node that had
    adopted it stopped on an internal error.)"""
    _, nid = pick(cluster, role)
    member = other_member(nid, st_data.draw(st.integers(0, 1)))
    before = max_term(cluster)
    fields = dict(term=before + 1, index=1 << 40, log_term=0, commit=0, hint=0)
    fields[field] = value
    body = message_body(mtype, member, **fields)
    send_peer(cluster, nid, encode_handshake(CLUSTER, member) + frame(3, body))
    assert_serving(cluster)
    assert max_term(cluster) < 1 << 63


# ---- the client port ----------------------------------------------------------------

COMMANDS = [b"GET", b"SET", b"DEL", b"MGET", b"EXISTS", b"APPEND", b"INCR", b"PING", b"ECHO",
            b"INFO", b"HELLO", b"CLIENT", b"COMMAND", b"CONFIG", b"SELECT", b"QUIT",
            b"get", b"Set", b"NOSUCH", b""]
args = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(
    [b"3", b"2", b"-1", b"0", b"99999999999999999999", b"SETNAME", b"GET", b"*", b"raft",
     b"9223372036854775807", b"-9223372036854775808", b"\r\n", b"\"", b"'"])), max_size=5)


def resp_array(items):
    return b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in items)


client_inputs = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda c, a: resp_array([c] + a), st.sampled_from(COMMANDS), args),
    st.builds(lambda c, a: b" ".join([c] + a) + b"\r\n", st.sampled_from(COMMANDS), args),
    st.builds(lambda n: b"*%d\r\n" % n, st.integers(-(1 << 63), 1 << 64)),
    st.builds(lambda n: b"*1\r\n$%d\r\n" % n, st.integers(-(1 << 63), 1 << 64)),
    st.builds(lambda n, d: b"*%d\r\n" % n * d, st.integers(1, 3), st.integers(1, 100)),
    st.builds(lambda c, a, cut: resp_array([c] + a)[:cut], st.sampled_from(COMMANDS), args,
              st.integers(0, 200)),
    st.builds(lambda n: b"*1\r\n$" + b"9" * n + b"\r\n", st.integers(1, 40)),
    st.builds(lambda n: b"x" * n, st.integers(60 << 10, 70 << 10)),  # around the inline limit
)


@FUZZ
@given(role=roles, chunks=st.lists(client_inputs, min_size=1, max_size=4))
def test_client_port_garbage(cluster, role, chunks):
    node, _ = pick(cluster, role)
    with socket.create_connection(("127.0.0.1", node.client_port), timeout=10) as s:
        try:
            for c in chunks:
                s.sendall(c)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(2)
            while s.recv(65536):
                pass
        except socket.timeout:
            pass  # it waits for the rest of a command it was announced: fine
        except OSError:
            pass  # it closed on us (a protocol error, or QUIT) while we wrote
    assert_serving(cluster)
