"""TLS contexts for the client port and between peers (the standard ssl
module; uvloop wraps connections in them).

The client port follows Redis: the node's certificate and key, and with
--tls-auth-clients yes (the default) clients must present a certificate the
CA signed.  Peers use mutual TLS: each node presents its certificate and
accepts only a peer whose certificate the peer CA signed; the dialer also
checks that the certificate names the host it dialed.
"""
import ssl

__all__ = ["TLSSetupError", "client_port_context", "peer_contexts", "dial_context"]


class TLSSetupError(ValueError):
    """A certificate, key or CA file cannot be used; the message names it."""


def _server_context(cert, key, ca, require_client_cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cert, key)
    if ca is not None:
        _load_ca(ctx, ca)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def dial_context(ca, cert=None, key=None):
    """For dialing a TLS server: its certificate must chain to `ca` and name
    the host dialed; cert and key, when given, are presented in turn."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(ctx, ca)
    if cert is not None:
        _load_chain(ctx, cert, key)
    return ctx


def client_port_context(cert, key, ca=None, auth_clients=True):
    """The client port's context (Redis's tls-cert-file, tls-key-file,
    tls-ca-cert-file, tls-auth-clients)."""
    return _server_context(cert, key, ca, auth_clients)


def peer_contexts(cert, key, ca):
    """(listening, dialing) contexts for mutual TLS between peers."""
    return _server_context(cert, key, ca, True), dial_context(ca, cert, key)


def _load_chain(ctx, cert, key):
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise TLSSetupError(f"cannot load the certificate {cert} with the key {key}: "
                            f"{getattr(e, 'strerror', None) or e}") from None


def _load_ca(ctx, ca):
    try:
        ctx.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as e:
        raise TLSSetupError(f"cannot load the CA certificate {ca}: "
                            f"{getattr(e, 'strerror', None) or e}") from None
