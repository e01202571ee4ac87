"""Peers prove to each other that they hold the cluster secret.

Every connection's handshake does it both ways before either side reads a
message (docs/protocol.md, "Authentication"): the dialer's HANDSHAKE
carries a fresh nonce, the acceptor's HANDSHAKE_ACK its own nonce and
proof, and the dialer's AUTH frame its proof.  A proof is an HMAC-SHA256,
keyed by the secret, over the prover's role, the cluster id, both node ids,
both nonces and both version ranges: fresh nonces keep a recorded proof
from being replayed, and the role keeps a node's answer as acceptor from
being reflected back to it as a dialer's.  The secret itself never crosses
the wire.

A node may hold several secrets (PeerSecrets: one per line of its file): it
proves with the first and accepts a proof made with any, so a new secret
is rolled in without a moment where two members cannot talk
(docs/operations.md, "Rotating secrets").  In optional mode it also takes
peers that prove no secret at all: the way a cluster without one gets one.
"""
import hashlib
import hmac
import os
import struct

from raftfast.private_file import read_private_file

__all__ = ["DIALER", "LISTENER", "MIN_SECRET_BYTES", "PeerSecrets", "SecretError",
           "load_secrets", "new_nonce", "proof", "proofs", "proofs_match"]

DIALER = b"dialer"
LISTENER = b"listener"
MIN_SECRET_BYTES = 16
_LABEL = b"raftfast peer authentication v1\0"
_NONCE_SIZE = 32


class SecretError(ValueError):
    """The cluster secret file cannot be used."""


def new_nonce():
    return os.urandom(_NONCE_SIZE)


def proof(secret, role, cluster_id, dialer_id, listener_id, dialer_nonce, listener_nonce,
          dialer_versions, listener_versions):
    """The proof `role` (DIALER or LISTENER) sends on one connection."""
    cid = cluster_id.encode("utf-8")
    signed = b"".join((
        _LABEL, role, b"\0", struct.pack("<H", len(cid)), cid,
        struct.pack("<QQ", dialer_id, listener_id), dialer_nonce, listener_nonce,
        struct.pack("<HHHH", *dialer_versions, *listener_versions)))
    return hmac.new(secret, signed, hashlib.sha256).digest()


def proofs(secret, cluster_id, dialer_id, listener_id, dialer_nonce, listener_nonce,
           dialer_versions, listener_versions):
    """(the dialer's proof, the listener's proof) of one connection: each
    end sends one and checks the other."""
    binding = (cluster_id, dialer_id, listener_id, dialer_nonce, listener_nonce,
               dialer_versions, listener_versions)
    return proof(secret, DIALER, *binding), proof(secret, LISTENER, *binding)


def proofs_match(expected, got):
    """In constant time: a timing difference must not tell a stranger how
    much of a guessed proof was right."""
    return hmac.compare_digest(expected, got)


class PeerSecrets:
    """What a node proves and accepts on its peer connections: it proves
    with the first secret and accepts a proof made with any of them;
    optional: a peer that proves nothing is let in too (and logged), one
    that proves wrongly never is."""

    __slots__ = ("secrets", "optional")

    def __init__(self, secrets, optional=False):
        self.secrets = tuple(secrets)
        if not self.secrets:
            raise ValueError("no secret")
        self.optional = optional

    def prove(self, role, *binding):
        """The proof `role` sends on the connection `binding` names."""
        return proof(self.secrets[0], role, *binding)

    def accepts(self, role, got, *binding):
        """Is `got` the proof `role` owes, made with any of the secrets?"""
        ok = False
        for secret in self.secrets:  # every one, so the time tells nothing
            ok |= proofs_match(proof(secret, role, *binding), got)
        return ok


def load_secrets(path, warn=None, optional=False):
    """PeerSecrets from the file at path: each non-empty line (without
    surrounding whitespace) a secret of at least MIN_SECRET_BYTES; the
    first is the one this node proves with.  Raises SecretError with a line
    that names the file and never a secret."""
    data = read_private_file(path, "cluster secret", SecretError, warn)
    secrets = [line.strip() for line in data.splitlines() if line.strip()]
    if not secrets:
        raise SecretError(f"the cluster secret file {path} is empty")
    for n, secret in enumerate(secrets, 1):
        if len(secret) < MIN_SECRET_BYTES:
            raise SecretError(f"the cluster secret on line {n} of {path} is {len(secret)} "
                              f"bytes; it needs at least {MIN_SECRET_BYTES}")
    return PeerSecrets(secrets, optional)
