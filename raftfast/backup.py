"""`python -m raftfast.node backup` and `python -m raftfast.node restore`.

    backup --client URL FILE [--requirepass-file F] [--tls-ca-cert-file CA
           [--tls-cert-file CERT --tls-key-file KEY]] [--timeout S]
    restore FILE --data-dir DIR --id ID [--cluster-id NEW] [--fsync always|never]

backup sends RAFT.BACKUP (server/backup.py) to the node at URL, following
-MOVED and -NOTLEADER to the leader and waiting out -CLUSTERDOWN and
-TRYAGAIN, and writes the bulk string it answers to a temporary file beside
FILE as it arrives, checking the snapshot file's whole-file CRC32C on the
way; once complete and checked, the file is fsynced and renamed to FILE
(FILE is never a partial backup).  restore (runtime/restore.py) verifies
every byte of FILE and makes a fresh data dir from it.

Exit codes: 0 done, 1 failed (one line on stderr saying why), 2 bad usage.
"""
import argparse
import os
import struct
import sys
import tempfile
import time

from raftfast import resp_client
from raftfast._crc import crc32c
from raftfast.address import AddressError, parse_address
from raftfast.arg_types import int_at_least
from raftfast.config import ArgumentParser, cluster_id_arg, node_id_arg, url_arg
from raftfast.resp_client import RespError, address
from raftfast.runtime.data_dir import fsync_dir
from raftfast.runtime.snapshot import SnapshotError, read_snapshot_meta

__all__ = ["backup_main", "restore_main", "BackupError", "fetch_backup"]

# Not answered now, nothing taken: ask again (a backup is a read: safe to repeat).
RETRY_KINDS = ("CLUSTERDOWN", "TRYAGAIN", "TIMEOUT")
MAX_REDIRECTS = 16
READ_BYTES = 1 << 20


class BackupError(Exception):
    """The backup could not be taken; the message says why, in one line."""


def _redirect(reply, current):
    """The address a -MOVED or -NOTLEADER names, keeping TLS when the
    client port we were given uses it (MOVED names only host:port)."""
    kind = reply.kind
    try:
        if kind == "MOVED":
            target = address(reply.split()[-1])
            if current.tls:
                target = parse_address(f"tls://{reply.split()[-1]}")
            return target
        return parse_address(reply.split()[-1])
    except (AddressError, ValueError, IndexError):
        raise BackupError(f"cannot follow the redirect {str(reply)!r}") from None


def _read_line(sock, buf):
    """(first line without CRLF, bytes after it) from sock, buf holding what
    was already read."""
    while b"\r\n" not in buf:
        data = sock.recv(READ_BYTES)
        if not data:
            raise BackupError("the node closed the connection before answering")
        buf += data
        if len(buf) > 64 << 10:
            raise BackupError("the node's answer is not RESP")
    line, _, rest = buf.partition(b"\r\n")
    return line, rest


def fetch_backup(url, path, timeout=300.0):
    """Take a backup from the cluster at url (any node) into `path`; returns
    (SnapshotMeta, bytes).  BackupError, leaving nothing at `path`, on any
    failure."""
    addr = address(url) if "://" not in url else parse_address(url)
    deadline = time.monotonic() + timeout
    redirects = 0
    while True:
        try:
            conn = resp_client.Connection(addr, timeout=timeout)
        except resp_client.AuthRefused as e:
            raise BackupError(f"{addr}: {e}") from None
        except OSError as e:
            raise BackupError(f"cannot connect to {addr}: {e}") from None
        with conn:
            try:
                conn.send("RAFT.BACKUP")
                line, rest = _read_line(conn.sock, b"")
            except OSError as e:
                raise BackupError(f"{addr}: {e}") from None
            if line.startswith(b"-"):
                reply = RespError(line[1:].decode("utf-8", "replace"))
                if reply.kind in ("MOVED", "NOTLEADER"):
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise BackupError(f"too many redirects (last: {reply})")
                    addr = _redirect(reply, addr)
                    continue
                if reply.kind in RETRY_KINDS and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise BackupError(f"{addr} refused the backup: {reply}")
            if not line.startswith(b"$"):
                raise BackupError(f"{addr} answered RAFT.BACKUP with {line[:80]!r}, not a bulk "
                                  "string")
            try:
                size = int(line[1:])
            except ValueError:
                raise BackupError(f"{addr}: bad bulk length {line[:80]!r}") from None
            return _receive(conn.sock, rest, size, path, addr)


class TrailingCrc:
    """The check of a snapshot file's last field, fed the file in pieces:
    its last 4 bytes are the CRC32C of every byte before them."""

    def __init__(self):
        self.crc = 0
        self.last = b""   # the (up to) 4 bytes seen last, not yet in the CRC

    def update(self, data):
        if len(data) >= 4:
            self.crc = crc32c(memoryview(data)[:len(data) - 4], crc32c(self.last, self.crc))
            self.last = bytes(data[len(data) - 4:])
        else:
            both = self.last + bytes(data)
            self.crc = crc32c(both[:max(0, len(both) - 4)], self.crc)
            self.last = both[max(0, len(both) - 4):]

    def matches(self):
        return len(self.last) == 4 and struct.unpack("<I", self.last)[0] == self.crc


def _receive(sock, first, size, path, addr):
    """Write the bulk's `size` bytes (the first of them in `first`) to a
    temporary file beside path, check the snapshot's whole-file CRC, fsync,
    rename to path."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                                   suffix=".partial")
    except OSError as e:
        raise BackupError(f"cannot create a file in {directory}: {e.strerror}") from None
    ok = False
    try:
        with os.fdopen(fd, "wb") as f:
            check = TrailingCrc()
            got, data = 0, first
            while True:
                take = data[:size - got]
                if take:
                    f.write(take)
                    check.update(take)
                    got += len(take)
                if got >= size:
                    break
                try:
                    data = sock.recv(READ_BYTES)
                except OSError as e:
                    raise BackupError(f"{addr}: {e} after {got} of {size} bytes") from None
                if not data:
                    raise BackupError(f"{addr} closed the connection after {got} of {size} "
                                      "bytes: the backup is incomplete")
            f.flush()
            os.fsync(f.fileno())
        if not check.matches():
            raise BackupError(f"{addr} sent a backup whose checksum does not match: damaged "
                              "in transit or on the node's disk")
        try:
            meta = read_snapshot_meta(tmp)
        except SnapshotError as e:
            raise BackupError(f"{addr} sent something that is not a backup: {e}") from None
        os.replace(tmp, path)
        fsync_dir(directory)
        ok = True
        return meta, size
    except OSError as e:
        raise BackupError(f"writing {tmp} failed: {e}") from None
    finally:
        if not ok:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


# ---- the commands ------------------------------------------------------------------

def backup_main(argv):
    parser = ArgumentParser(
        prog="python -m raftfast.node backup",
        description="Take a consistent backup of a running cluster's data set from its leader "
                    "(any node's client address will do: it follows the redirect).")
    parser.add_argument("--client", type=url_arg, required=True, metavar="URL",
                        help="a node's client address (tcp://, tls:// or unix://)")
    parser.add_argument("file", metavar="FILE", help="where the backup goes (replaced when "
                        "complete; never left partial)")
    parser.add_argument("--requirepass-file", metavar="FILE",
                        help="the cluster's client password, as given to the nodes")
    parser.add_argument("--tls-ca-cert-file", metavar="FILE",
                        help="the CA that signed the nodes' client-port certificates (tls://)")
    parser.add_argument("--tls-cert-file", metavar="FILE",
                        help="this client's certificate, for nodes with --tls-auth-clients yes")
    parser.add_argument("--tls-key-file", metavar="FILE", help="its private key")
    parser.add_argument("--timeout", type=int_at_least(1), default=300, metavar="SECONDS",
                        help="how long to wait for the node at each step (default: 300)")
    ns = parser.parse_args(argv)
    if parse_address(ns.client).tls and ns.tls_ca_cert_file is None:
        parser.error("--client tls://... needs --tls-ca-cert-file")
    if (ns.tls_cert_file is None) != (ns.tls_key_file is None):
        parser.error("--tls-cert-file and --tls-key-file go together")
    from raftfast.server.auth import PasswordError, load_password
    from raftfast.tls import TLSSetupError, dial_context
    try:
        if ns.requirepass_file is not None:
            resp_client.use_password(load_password(ns.requirepass_file))
        if ns.tls_ca_cert_file is not None:
            resp_client.use_tls(dial_context(ns.tls_ca_cert_file, ns.tls_cert_file,
                                             ns.tls_key_file))
        meta, size = fetch_backup(ns.client, ns.file, timeout=ns.timeout)
    except (BackupError, PasswordError, TLSSetupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"backup of index {meta.index} (term {meta.term}, {meta.count} keys, {size} bytes) "
          f"written to {ns.file}", flush=True)
    return 0


def restore_main(argv):
    parser = ArgumentParser(
        prog="python -m raftfast.node restore",
        description="Make a fresh data dir from a backup: one node, the only member of a new "
                    "cluster, holding the backup's data. Start it with python -m raftfast.node "
                    "(same --id, --data-dir and --cluster-id), then add members.")
    parser.add_argument("file", metavar="FILE", help="a file `backup` wrote")
    parser.add_argument("--data-dir", required=True, metavar="DIR",
                        help="the new data dir (must not exist, or be empty)")
    parser.add_argument("--id", dest="node_id", type=node_id_arg, required=True, metavar="ID",
                        help="the restored node's id")
    parser.add_argument("--cluster-id", type=cluster_id_arg, metavar="NEW",
                        help="the new cluster's id (default: restored-<8 random hex digits>)")
    parser.add_argument("--fsync", choices=("always", "never"), default="always",
                        help="make the new data dir durable before exiting (default: always)")
    ns = parser.parse_args(argv)
    from raftfast.runtime.restore import RestoreError, default_cluster_id, restore
    cluster_id = ns.cluster_id or default_cluster_id()
    os.umask(0o077)
    try:
        done = restore(ns.file, ns.data_dir, ns.node_id, cluster_id, fsync=ns.fsync == "always")
    except (RestoreError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"restored {ns.file} (index {done.index}, term {done.term}, {done.keys} keys) into "
          f"{ns.data_dir}: node {ns.node_id}, the only member of cluster {cluster_id!r}", flush=True)
    print(f"start it with: python -m raftfast.node --id {ns.node_id} --data-dir {ns.data_dir} "
          f"--cluster-id {cluster_id} --listen URL --client URL", flush=True)
    return 0
