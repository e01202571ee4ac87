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
"""
import hashlib
import hmac
import os
import struct

from raftfast.private_file import read_private_file

__all__ = ["DIALER", "LISTENER", "MIN_SECRET_BYTES", "SecretError", "load_secret", "new_nonce",
           "proof", "proofs", "proofs_match"]

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


def load_secret(path, warn=None):
    """The secret in the file at path: its bytes without surrounding
    whitespace, at least MIN_SECRET_BYTES of them.  warn(text) is told when
    other users may read the file.  Raises SecretError with a line that
    names the file and never the secret."""
    secret = read_private_file(path, "cluster secret", SecretError, warn).strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(f"the cluster secret in {path} is {len(secret)} bytes; it needs at "
                          f"least {MIN_SECRET_BYTES}")
    return secret
