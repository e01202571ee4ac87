"""Mutual TLS between peers (tls:// addresses): messages flow between
nodes whose certificates one CA signed; a peer with a certificate of
another CA, or none, is refused at the TLS handshake, and the listener keeps
serving (raftfast.tls, the transport)."""
import logging

import pytest

from raftfast.launcher.certs import issue, make_ca
from raftfast.tls import TLSSetupError, dial_context, peer_contexts

from tests.runtime.test_transport import LOG, Node, run, until

SECRET = b"s3cret-s3cret-s3cret-s3cret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    other = tmp_path_factory.mktemp("other")
    rogue_ca = make_ca(other, name="someone else's CA")
    files = {n: issue(d, n, ca) for n in ("n1", "n2", "n3")}
    files["rogue"] = issue(other, "rogue", rogue_ca)
    return d, other, files


def contexts(pki, name, ca_dir=None):
    d, _, files = pki
    cert, key = files[name]
    return peer_contexts(cert, key, str((ca_dir or d) / "ca.crt"))


@pytest.mark.parametrize("secret", [None, SECRET])
def test_peers_with_certificates_of_one_ca_exchange_messages(pki, secret):
    async def main():
        a = Node(1, tls=contexts(pki, "n1"), secret=secret)
        b = Node(2, tls=contexts(pki, "n2"), secret=secret)
        urls = {nd.id: await nd.start("tls://127.0.0.1:0") for nd in (a, b)}
        assert all(u.startswith("tls://127.0.0.1:") for u in urls.values())
        a.t.set_address(2, urls[2])
        b.t.set_address(1, urls[1])
        try:
            await a.connect(2)
            await b.connect(1)
            a.t.send(a.msg(2, 11))
            b.t.send(b.msg(1, 12))
            await until(lambda: any(m.context == 11 for m in b.got)
                        and any(m.context == 12 for m in a.got), "both ways over TLS")
        finally:
            await a.t.close()
            await b.t.close()
    run(main())


@pytest.mark.parametrize("who", ["another CA's certificate", "no certificate"])
def test_a_peer_without_a_certificate_of_the_ca_is_refused(pki, who, caplog):
    caplog.set_level(logging.DEBUG, logger=LOG.name)
    d, other, files = pki

    async def main():
        b = Node(2, tls=contexts(pki, "n2"))
        url = await b.start("tls://127.0.0.1:0")
        if who == "no certificate":
            stranger_tls = (None, dial_context(str(d / "ca.crt")))  # trusts b, shows nothing
        else:
            stranger_tls = contexts(pki, "rogue", ca_dir=d)  # trusts b, shows a rogue cert
        stranger = Node(1, addresses={2: url}, tls=stranger_tls)
        friend = Node(3, addresses={2: url}, tls=contexts(pki, "n3"))
        try:
            stranger.t.send(stranger.msg(2, 1))
            await until(lambda: stranger.t.stats()["dials"] >= 2, "the stranger redials")
            await friend.connect(2)
            friend.t.send(friend.msg(2, 42))
            await until(lambda: any(m.context == 42 for m in b.got), "the friend's message")
            assert not stranger.t.is_connected(2)
            assert all(m.frm == 3 for m in b.got)
        finally:
            for nd in (b, stranger, friend):
                await nd.t.close()
    run(main())


def test_a_dialer_refuses_a_listener_whose_certificate_another_ca_signed(pki, caplog):
    caplog.set_level(logging.DEBUG, logger=LOG.name)
    d, other, files = pki

    async def main():
        rogue = Node(2, tls=contexts(pki, "rogue", ca_dir=other))
        url = await rogue.start("tls://127.0.0.1:0")
        a = Node(1, addresses={2: url}, tls=contexts(pki, "n1"))
        try:
            a.t.send(a.msg(2))
            await until(lambda: a.t.stats()["dials"] >= 2, "a redial")
            assert not a.t.is_connected(2) and rogue.got == []
        finally:
            await a.t.close()
            await rogue.t.close()
    run(main())
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "CERTIFICATE_VERIFY_FAILED" in said or "certificate verify failed" in said, said


def test_unusable_certificate_files_are_named(tmp_path, pki):
    d, _, files = pki
    with pytest.raises(TLSSetupError, match="cannot load the certificate .*missing.crt"):
        peer_contexts(str(tmp_path / "missing.crt"), files["n1"][1], str(d / "ca.crt"))
    with pytest.raises(TLSSetupError, match="cannot load the CA certificate"):
        peer_contexts(*files["n1"], str(tmp_path / "nope.crt"))


def test_during_a_certificate_rotation_a_ca_bundle_accepts_both_cas(pki, tmp_path):
    """Mid-rotation one node has a certificate of the new CA, the other
    still one of the old; both trust a bundle of the two CAs
    (docs/operations.md, "Rotating secrets")."""
    d, other, files = pki
    bundle = tmp_path / "both.crt"
    bundle.write_bytes((d / "ca.crt").read_bytes() + (other / "ca.crt").read_bytes())

    async def main():
        old_cert, old_key = files["n1"]
        new_cert, new_key = files["rogue"]          # signed by the other ("new") CA
        a = Node(1, tls=peer_contexts(old_cert, old_key, str(bundle)))
        b = Node(2, tls=peer_contexts(new_cert, new_key, str(bundle)))
        urls = {nd.id: await nd.start("tls://127.0.0.1:0") for nd in (a, b)}
        a.t.set_address(2, urls[2])
        b.t.set_address(1, urls[1])
        try:
            await a.connect(2)
            await b.connect(1)
            a.t.send(a.msg(2, 21))
            b.t.send(b.msg(1, 22))
            await until(lambda: any(m.context == 21 for m in b.got)
                        and any(m.context == 22 for m in a.got), "both ways across two CAs")
        finally:
            await a.t.close()
            await b.t.close()
    run(main())
