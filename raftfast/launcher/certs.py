"""A private CA and the certificates a local cluster's TLS needs
(`raftfast.cluster --tls`, and the tests), made with `cryptography`.

make_ca(dir) writes ca.crt and ca.key; issue(dir, name, ca) writes
<name>.crt and <name>.key, signed by the CA, for the hosts given (IP
addresses or DNS names in the subjectAltName), usable as a server and as a
client certificate.  Keys are EC P-256; files are 0600 (the key's
directory is the operator's to keep private).  The CA is valid for ten
years, the certificates for one.
"""
import datetime
import ipaddress
import os

__all__ = ["make_ca", "load_ca", "issue"]

CA_DAYS = 3650
CERT_DAYS = 365


def _write(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key):
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(directory, name="raftfast cluster CA"):
    """Write ca.crt and ca.key in directory; returns (cert, key) objects."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(os.path.join(directory, "ca.crt"), cert.public_bytes(serialization.Encoding.PEM))
    _write(os.path.join(directory, "ca.key"), _pem_key(key))
    return cert, key


def load_ca(directory):
    """The (cert, key) objects make_ca wrote in directory."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    with open(os.path.join(directory, "ca.crt"), "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(directory, "ca.key"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    return cert, key


def issue(directory, name, ca, hosts=("127.0.0.1", "localhost")):
    """Write <name>.crt and <name>.key, signed by ca (from make_ca), naming
    `hosts`; returns the two paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    ca_cert, ca_key = ca
    key = _key()
    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    crt, key_path = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    _write(crt, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_path, _pem_key(key))
    return crt, key_path
