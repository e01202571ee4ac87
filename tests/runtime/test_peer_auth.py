"""Peers prove the cluster secret both ways before a message is read
(raftfast.runtime.peer_auth, peer_connections; docs/protocol.md)."""
import logging
import os
import socket

import pytest

from raftfast._codec import (FRAME_HANDSHAKE_ACK, PROTOCOL_MAX, PROTOCOL_MIN, FrameDecoder,
                             encode_auth, encode_handshake, encode_message)
from raftfast.core.messages import MSG_HEARTBEAT, Message
from raftfast.runtime import peer_auth
from raftfast.runtime.peer_auth import DIALER, LISTENER, SecretError, load_secrets, proof

from tests.support.wait import until_async
from tests.runtime.test_transport import (LOG, Node, raw_client, read_until_closed, run, run_raw,
                                          until, url_for)

SECRET = b"s3cret-s3cret-s3cret-s3cret"
OTHER = b"another-secret-of-enough-bytes"
OURS = (PROTOCOL_MIN, PROTOCOL_MAX)


# -- the proof -----------------------------------------------------------------

def test_a_proof_binds_role_cluster_ids_nonces_and_versions():
    n1, n2 = b"\x01" * 32, b"\x02" * 32
    base = (SECRET, DIALER, "raftfast", 1, 2, n1, n2, (1, 2), (1, 2))
    p = proof(*base)
    assert len(p) == 32 and proof(*base) == p
    for i, other in ((0, OTHER), (1, LISTENER), (2, "raftfasu"), (3, 3), (4, 3), (5, n2),
                     (6, n1), (7, (1, 3)), (8, (2, 2))):
        changed = list(base)
        changed[i] = other
        assert proof(*changed) != p, i
    # Swapping the two nonces (or ids) is another proof: nothing is symmetric.
    assert proof(SECRET, DIALER, "raftfast", 2, 1, n1, n2, (1, 2), (1, 2)) != p
    assert SECRET not in p


def test_the_secret_file_is_read_stripped_and_checked(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    os.chmod(path, 0o600)
    warned = []
    assert load_secrets(path, warned.append).secrets == (SECRET,) and warned == []
    os.chmod(path, 0o640)
    assert load_secrets(path, warned.append).secrets == (SECRET,)
    assert warned and "readable by other users" in warned[0] and "0640" in warned[0]
    path.write_bytes(b"short\n")
    with pytest.raises(SecretError, match="on line 1 of .* is 5 bytes; it needs at least 16"):
        load_secrets(path)
    with pytest.raises(SecretError, match="cannot read the cluster secret file"):
        load_secrets(tmp_path / "missing")
    try:
        load_secrets(path)
    except SecretError as e:
        assert "short" not in str(e)  # the secret is never in a message


# -- nodes that share the secret, and nodes that do not ---------------------------

@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_nodes_with_the_same_secret_exchange_messages(kind, tmp_path):
    async def main():
        a, b = Node(1, secret=SECRET), Node(2, secret=SECRET)
        urls = {nd.id: await nd.start(url_for(kind, tmp_path, f"n{nd.id}")) for nd in (a, b)}
        a.t.set_address(2, urls[2])
        b.t.set_address(1, urls[1])
        try:
            await a.connect(2)
            await b.connect(1)
            a.t.send(a.msg(2, 11))
            b.t.send(b.msg(1, 12))
            await until(lambda: any(m.context == 11 for m in b.got)
                        and any(m.context == 12 for m in a.got), "both ways")
            assert b.t.stats()["connections_refused"] == 0
        finally:
            await a.t.close()
            await b.t.close()
    run(main())


@pytest.mark.parametrize("dialer_secret, listener_secret, phrase", [
    (OTHER, SECRET, "it failed to prove the cluster secret"),  # the dialer stops first
    (None, SECRET, "node 1 did not prove the cluster secret"),
    (SECRET, None, "it did not prove the cluster secret"),
])
def test_a_peer_without_the_secret_is_refused_and_the_listener_keeps_serving(
        tmp_path, caplog, dialer_secret, listener_secret, phrase):
    caplog.set_level(logging.DEBUG, logger=LOG.name)

    async def main():
        b = Node(2, secret=listener_secret)
        url = await b.start(f"unix://{tmp_path}/b.sock")
        stranger = Node(1, addresses={2: url}, secret=dialer_secret)
        friend = Node(3, addresses={2: url}, secret=listener_secret)
        try:
            stranger.t.send(stranger.msg(2, 1))
            await until(lambda: stranger.t.stats()["dials"] >= 2, "the stranger redials")
            await friend.connect(2)
            friend.t.send(friend.msg(2, 42))
            await until(lambda: any(m.context == 42 for m in b.got), "the friend's message")
            assert not stranger.t.is_connected(2)
            assert all(m.frm == 3 for m in b.got)
            assert b.t.peer_client_url(1) is None
        finally:
            for nd in (b, stranger, friend):
                await nd.t.close()
    run(main())
    said = [r.getMessage() for r in caplog.records]
    assert any(phrase in m for m in said), said


def test_a_dialer_refuses_a_listener_that_cannot_prove_the_secret(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=LOG.name)

    async def main():
        b = Node(2, secret=OTHER)
        url = await b.start(f"unix://{tmp_path}/b.sock")
        a = Node(1, addresses={2: url}, secret=SECRET)
        try:
            a.t.send(a.msg(2))
            await until(lambda: a.t.stats()["dials"] >= 2, "a redial")
            assert not a.t.is_connected(2) and b.got == []
        finally:
            await a.t.close()
            await b.t.close()
    run(main())
    infos = [r.getMessage() for r in caplog.records]
    # The dialer stops at the listener's proof: it never sends its own.
    assert any("it failed to prove the cluster secret" in m for m in infos), infos


# -- a stranger on the socket, byte by byte ---------------------------------------

def ask(s, nonce, node_id=9):
    """Send an authenticated HANDSHAKE as node_id; the listener's ACK."""
    s.sendall(encode_handshake("raftfast", node_id, nonce=nonce))
    d = FrameDecoder(1 << 16)
    while (f := d.next()) is None:
        d.feed(s.recv(4096))
    ftype, ack = f
    assert ftype == FRAME_HANDSHAKE_ACK and ack.proof is not None
    return ack


def dialer_proof(secret, nonce, ack, node_id=9):
    return proof(secret, DIALER, "raftfast", node_id, ack.node_id, nonce, ack.nonce, OURS,
                 ack.offered)


def run_stranger(tmp_path, caplog, client):
    """Node 2 (with SECRET) beside a good peer; client(url) runs in a thread."""
    return run_raw(tmp_path, caplog, client, secret=SECRET)


HELLO = encode_message(Message(MSG_HEARTBEAT, frm=9, term=1, context=5))


def test_the_listener_proves_itself_and_admits_a_dialer_that_does(tmp_path, caplog):
    # The raw client does what a node with the secret does: it is admitted,
    # and the listener's proof checks out against the secret.
    def client(url):
        with raw_client(url) as s:
            nonce = os.urandom(32)
            ack = ask(s, nonce)
            assert peer_auth.proofs_match(
                proof(SECRET, LISTENER, "raftfast", 9, 2, nonce, ack.nonce, OURS, ack.offered),
                ack.proof)
            s.sendall(encode_auth(ack.min_version, dialer_proof(SECRET, nonce, ack)) + HELLO)
            s.shutdown(socket.SHUT_WR)
            return read_until_closed(s)
    _, got, warnings = run_stranger(tmp_path, caplog, client)
    assert [m.context for m in got if m.frm == 9] == [5]
    assert warnings == []


def test_a_message_before_the_proof_is_refused_unread(tmp_path, caplog):
    def client(url):
        with raw_client(url) as s:
            ask(s, os.urandom(32))
            s.sendall(HELLO)
            return read_until_closed(s)
    _, got, warnings = run_stranger(tmp_path, caplog, client)
    assert not any(m.frm == 9 for m in got)
    assert any("message before the peer proved the cluster secret" in w for w in warnings)


def test_a_replayed_proof_is_refused(tmp_path, caplog):
    # A whole valid exchange recorded, then replayed on a new connection:
    # the listener's fresh nonce makes the old proof worthless.
    def client(url):
        nonce = os.urandom(32)
        with raw_client(url) as s:
            ack = ask(s, nonce)
            recorded = encode_auth(ack.min_version, dialer_proof(SECRET, nonce, ack))
            s.sendall(recorded)
        with raw_client(url) as s:
            ask(s, nonce)
            s.sendall(recorded + HELLO)
            return read_until_closed(s)
    _, got, warnings = run_stranger(tmp_path, caplog, client)
    assert not any(m.frm == 9 for m in got)
    assert any("node 9 failed to prove the cluster secret" in w for w in warnings), warnings


def test_the_listeners_own_proof_reflected_back_is_refused(tmp_path, caplog):
    def client(url):
        with raw_client(url) as s:
            ack = ask(s, os.urandom(32))
            s.sendall(encode_auth(ack.min_version, ack.proof) + HELLO)
            return read_until_closed(s)
    _, got, warnings = run_stranger(tmp_path, caplog, client)
    assert not any(m.frm == 9 for m in got)
    assert any("node 9 failed to prove the cluster secret" in w for w in warnings), warnings


def test_a_large_frame_before_the_proof_is_refused_from_its_header(tmp_path, caplog):
    def client(url):
        with raw_client(url) as s:
            ask(s, os.urandom(32))
            big = encode_message(Message(MSG_HEARTBEAT, frm=9, term=1))
            s.sendall(len(b"x" * (1 << 20)).to_bytes(4, "little") + big[4:12])
            return read_until_closed(s)
    _, got, warnings = run_stranger(tmp_path, caplog, client)
    assert any("exceeds the limit" in w for w in warnings), warnings


# -- several secrets, and the optional mode (rotating and introducing one) --------

def _pair_talks(tmp_path, secret_a, secret_b):
    """Do nodes 1 and 2, holding these secrets, get a message across both ways?"""
    result = {}

    async def main():
        a, b = Node(1, secret=secret_a), Node(2, secret=secret_b)
        urls = {nd.id: await nd.start(f"unix://{tmp_path}/n{nd.id}.sock") for nd in (a, b)}
        a.t.set_address(2, urls[2])
        b.t.set_address(1, urls[1])
        def across():
            # Sent again on every look: one sent before a connection is up may be dropped.
            a.t.send(a.msg(2, 11))
            b.t.send(b.msg(1, 12))
            return (any(m.context == 11 for m in b.got)
                    and any(m.context == 12 for m in a.got))
        try:
            try:
                await until_async(across, "both ways", 3, 0.05)
                result["talks"] = True
            except AssertionError:
                result["talks"] = False
                assert b.got == [] and a.got == []
        finally:
            await a.t.close()
            await b.t.close()
    run(main())
    for p in tmp_path.glob("n*.sock"):
        p.unlink()
    return result["talks"]


def test_a_secret_rotates_in_three_rolls_without_a_pair_that_cannot_talk(tmp_path):
    old, new = SECRET, OTHER
    steps = [[old], [old, new], [new, old], [new]]   # before, then after each roll
    # Mid-roll, a node of one step meets a node of the step before it.
    for before, after in zip(steps, steps[1:]):
        assert _pair_talks(tmp_path, peer_auth.PeerSecrets(before), peer_auth.PeerSecrets(after))
    # Skipping a roll is what the three rolls avoid: [old] and [new] never talk.
    assert not _pair_talks(tmp_path, peer_auth.PeerSecrets([old]), peer_auth.PeerSecrets([new]))
    assert not _pair_talks(tmp_path, peer_auth.PeerSecrets([old, new]),
                           peer_auth.PeerSecrets([new]))


def test_optional_secrets_let_in_a_peer_without_one_but_never_a_wrong_proof(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOG.name)
    optional = peer_auth.PeerSecrets([SECRET], optional=True)
    strict = peer_auth.PeerSecrets([SECRET])
    assert _pair_talks(tmp_path, optional, None)            # the introduction's first roll
    assert any("proves no cluster secret; let in" in r.getMessage() for r in caplog.records)
    assert _pair_talks(tmp_path, optional, strict)          # its second
    assert not _pair_talks(tmp_path, strict, None)          # a strict node and one without
    assert not _pair_talks(tmp_path, peer_auth.PeerSecrets([OTHER], optional=True), strict)


def test_a_secret_file_of_several_lines(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"\n" + SECRET + b"\n  " + OTHER + b"  \n\n")
    os.chmod(path, 0o600)
    s = load_secrets(path, optional=True)
    assert s.secrets == (SECRET, OTHER) and s.optional
    path.write_bytes(SECRET + b"\nshort\n")
    with pytest.raises(SecretError, match="line 2"):
        load_secrets(path)
    path.write_bytes(b"\n \n")
    with pytest.raises(SecretError, match="empty"):
        load_secrets(path)
