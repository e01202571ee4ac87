"""Every knob of a node in one place, shared by `python -m raftfast.node`,
`python -m raftfast.cluster` and the benchmarks.

docs/reference.md documents every flag; a flag's default lives only in the
Config dataclass below (the parser's defaults are None so that the cluster
launcher can tell which flags were given and pass exactly those on).

Why it is long: every knob is here, its default, its flag and help, and its
check in validate(), so adding or changing one is one place to read.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from raftfast import __version__
from raftfast.address import Address, AddressError, parse_address
from raftfast.config_file import ConfigFileError, expand_config
from raftfast.arg_types import half_of_ram, int_at_least, memory_at_least, octal_mode

__all__ = ["Config", "ConfigError", "ArgumentParser", "add_node_arguments",
           "parse_node_config", "tunable_argv", "NODE_ID_MAX", "check_cluster_id",
           "node_id_arg", "url_arg", "cluster_id_arg"]

NODE_ID_MAX: int = 2**63 - 1
CLUSTER_ID_MAX_BYTES: int = 255  # it travels in every handshake with a one-byte length
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[str, ...] = ("text", "json")
DEBUG_COMMAND_MODES: tuple[str, ...] = ("no", "yes", "local")
# Room for a frame's own header fields next to a full proposal batch.
FRAME_OVERHEAD: int = 4096


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the flag."""


@dataclass
class Config:
    node_id: int
    data_dir: str
    listen: str
    client: str
    advertise_client: str | None = None  # None: the same as `client`
    peers: dict[int, str] = field(default_factory=dict)
    join: bool = False
    cluster_id: str = "raftfast"
    fsync: str = "always"
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    max_batch_entries: int = 1024
    max_batch_bytes: int = 1 << 20
    batch_linger_us: int = 0
    max_inflight: int = 64
    max_inflight_bytes: int = 8 << 20
    read_mode: str = "readindex"
    # Measured (docs/benchmarks.md, "Snapshots"): a snapshot costs time in
    # proportion to the state, so taking one every 100,000 SETs of a state
    # near a million keys cost 42% of SET throughput, every 1,000,000 8%.
    snapshot_entries: int = 1_000_000
    # Entries a restarted or slow follower can still get from the log:
    # about 0.7 s of SETs at full speed, ~6 MB of memory.
    snapshot_trailing: int = 100_000
    # Also snapshot when the log in memory passes this many bytes (large
    # values make a million entries far too much); 0 = no such bound.
    snapshot_log_bytes: int = 256 << 20
    # Proposals the leader holds uncommitted, in bytes (etcd's
    # MaxUncommittedEntriesSize); past it writes get TRYAGAIN.
    max_uncommitted_bytes: int = 64 << 20
    log_level: str = "info"
    # text: one line per record for a terminal; json: one object per line
    # for log shippers.
    log_format: str = "text"
    # Where Prometheus scrapes this node (tcp://HOST:PORT serves
    # http://HOST:PORT/metrics); None: no metrics endpoint.
    metrics: str | None = None
    # Start as the only member of this data dir's configuration, keeping its
    # log and snapshot: the way back after a majority was lost for good.
    force_new_cluster: bool = False
    max_frame_bytes: int = 64 << 20
    # The file holding the secret every peer handshake proves both ways
    # (raftfast.runtime.peer_auth); None: peers are not authenticated.
    cluster_secret_file: str | None = None
    # Also let in peers that prove no secret (and log each): the first of
    # the two rolls that give a cluster without a secret one.
    cluster_secret_optional: bool = False
    # The file holding the password clients AUTH with; None: no password.
    requirepass_file: str | None = None
    # TLS on the client port (--client tls://...), Redis's names.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_cert_file: str | None = None
    tls_auth_clients: str = "yes"
    # Mutual TLS between peers (--listen and --peer tls://...).
    peer_tls_cert_file: str | None = None
    peer_tls_key_file: str | None = None
    peer_tls_ca_cert_file: str | None = None
    # Allow peers over plain TCP on a non-loopback or wildcard address.
    insecure_peers: bool = False
    # Limits (Redis 7.2's names and errors).
    proto_max_bulk_len: int = 32 << 20
    # The mode of a client Unix socket (--client unix://...), Redis's unixsocketperm.
    unixsocketperm: int = 0o600
    client_query_buffer_limit: int = 64 << 20
    client_output_buffer_limit: int = 64 << 20
    # Memory for the data set, the log in memory and client buffers; None:
    # half of the machine's RAM (raftfast.cluster divides it among its
    # nodes); 0: no limit.  Clients' buffers together: None is a quarter of it.
    maxmemory: int | None = None
    maxmemory_clients: int | None = None
    maxclients: int = 10000
    timeout: int = 0

    @property
    def peer_tls(self) -> bool:
        return self.peer_tls_cert_file is not None
    # RAFTFAST.BENCH (and any later debug command): no, yes, or local
    # (loopback and Unix-socket clients only), as Redis's enable-debug-command.
    enable_debug_command: str = "no"

    def effective_maxmemory(self) -> int:
        """--maxmemory in bytes as in force (0: no limit)."""
        return half_of_ram() if self.maxmemory is None else self.maxmemory

    def effective_maxmemory_clients(self) -> int:
        if self.maxmemory_clients is not None:
            return self.maxmemory_clients
        return self.effective_maxmemory() // 4

    def client_advertised(self) -> str:
        """The client URL other nodes name in MOVED/NOTLEADER."""
        return self.advertise_client or self.client

    def validate(self) -> Config:
        """Raise ConfigError (one line) for the first bad setting; return self."""
        _check_node_id("--id", self.node_id)
        if not self.data_dir:
            raise ConfigError("--data-dir: must not be empty")
        if self.cluster_secret_file is not None and not self.cluster_secret_file:
            raise ConfigError("--cluster-secret-file: must not be empty")
        if self.cluster_secret_optional and self.cluster_secret_file is None:
            raise ConfigError("--cluster-secret-optional: needs --cluster-secret-file")
        if self.requirepass_file is not None and not self.requirepass_file:
            raise ConfigError("--requirepass-file: must not be empty")
        listen = _addr("--listen", self.listen)
        client = _addr("--client", self.client)
        if self.advertise_client is not None:
            adv = _addr("--advertise-client", self.advertise_client)
            if adv.is_wildcard:
                raise ConfigError(f"--advertise-client {adv}: must name a host clients "
                                  "can reach, not a wildcard")
        elif client.is_wildcard:
            raise ConfigError(f"--client {client} listens on a wildcard host; "
                              "give --advertise-client with an address clients can reach")
        seen_urls: dict[Address, int] = {}
        for pid, url in self.peers.items():
            _check_node_id(f"--peer {pid}", pid)
            if pid == self.node_id:
                raise ConfigError(f"--peer {pid}={url}: names this node's own id "
                                  "(list only the other nodes)")
            a = _addr(f"--peer {pid}", url)
            if a == listen:
                raise ConfigError(f"--peer {pid}={url}: is this node's own --listen address")
            if a in seen_urls:
                raise ConfigError(f"--peer {pid}={url}: the same address as peer {seen_urls[a]}")
            seen_urls[a] = pid
        self._check_tls(listen, client, seen_urls)
        check_cluster_id(self.cluster_id)
        _choice("--fsync", self.fsync, ("always", "never"))
        _choice("--read-mode", self.read_mode, ("readindex", "lease"))
        _choice("--log-level", self.log_level, LOG_LEVELS)
        _choice("--log-format", self.log_format, LOG_FORMATS)
        if self.metrics is not None:
            m = _addr("--metrics", self.metrics)
            if m.scheme != "tcp" or m.tls:
                raise ConfigError(f"--metrics {m}: Prometheus scrapes over HTTP; "
                                  "give tcp://HOST:PORT")
        _choice("--enable-debug-command", self.enable_debug_command, DEBUG_COMMAND_MODES)
        _at_least("--proto-max-bulk-len", self.proto_max_bulk_len, 1024)
        _at_least("--client-query-buffer-limit", self.client_query_buffer_limit, 1024)
        _at_least("--client-output-buffer-limit", self.client_output_buffer_limit, 1024)
        if self.maxmemory is not None:
            _at_least("--maxmemory", self.maxmemory, 0)
        if self.maxmemory_clients is not None:
            _at_least("--maxmemory-clients", self.maxmemory_clients, 0)
        _at_least("--snapshot-log-bytes", self.snapshot_log_bytes, 0)
        _at_least("--max-uncommitted-bytes", self.max_uncommitted_bytes, 0)
        _at_least("--maxclients", self.maxclients, 1)
        if not 0 <= self.unixsocketperm <= 0o777:
            raise ConfigError(f"--unixsocketperm {self.unixsocketperm:o}: not a file mode "
                              "(octal, 0 to 777)")
        _at_least("--timeout", self.timeout, 0)
        _at_least("--heartbeat-interval", self.heartbeat_interval_ms, 1)
        _at_least("--election-timeout", self.election_timeout_ms, 1)
        if self.heartbeat_interval_ms >= self.election_timeout_ms:
            raise ConfigError(f"--heartbeat-interval {self.heartbeat_interval_ms} must be "
                              f"less than --election-timeout {self.election_timeout_ms}")
        _at_least("--max-batch-entries", self.max_batch_entries, 1)
        _at_least("--max-batch-bytes", self.max_batch_bytes, 1)
        _at_least("--batch-linger-us", self.batch_linger_us, 0)
        _at_least("--max-inflight", self.max_inflight, 1)
        _at_least("--max-inflight-bytes", self.max_inflight_bytes, 1)
        _at_least("--snapshot-entries", self.snapshot_entries, 0)
        _at_least("--snapshot-trailing", self.snapshot_trailing, 0)
        _at_least("--max-frame-bytes", self.max_frame_bytes, 1)
        if self.max_frame_bytes < self.max_batch_bytes + FRAME_OVERHEAD:
            raise ConfigError(f"--max-frame-bytes {self.max_frame_bytes} must be at least "
                              f"--max-batch-bytes + {FRAME_OVERHEAD} "
                              "(a full batch must fit in one peer frame)")
        return self

    def _check_tls(self, listen: Address, client: Address,
                   peer_addrs: dict[Address, int]) -> None:
        _choice("--tls-auth-clients", self.tls_auth_clients, ("yes", "no"))
        if client.tls:
            missing = [f for f, v in (("--tls-cert-file", self.tls_cert_file),
                                      ("--tls-key-file", self.tls_key_file)) if not v]
            if self.tls_auth_clients == "yes" and not self.tls_ca_cert_file:
                missing.append("--tls-ca-cert-file (or --tls-auth-clients no)")
            if missing:
                raise ConfigError(f"--client {client}: TLS needs {', '.join(missing)}")
        peer_files = (("--peer-tls-cert-file", self.peer_tls_cert_file),
                      ("--peer-tls-key-file", self.peer_tls_key_file),
                      ("--peer-tls-ca-cert-file", self.peer_tls_ca_cert_file))
        given = [f for f, v in peer_files if v]
        if given and len(given) < 3:
            missing = [f for f, v in peer_files if not v]
            raise ConfigError(f"{given[0]}: mutual TLS between peers also needs "
                              f"{', '.join(missing)}")
        peers = [("--listen", listen)] + [(f"--peer {pid}", a) for a, pid in peer_addrs.items()]
        for flag, a in peers:
            if a.tls and not given:
                raise ConfigError(f"{flag} {a}: TLS between peers needs --peer-tls-cert-file, "
                                  "--peer-tls-key-file and --peer-tls-ca-cert-file")
            if given and not a.tls:
                raise ConfigError(f"{flag} {a}: with --peer-tls-cert-file every peer address "
                                  "is tls://HOST:PORT")
            if (a.scheme == "tcp" and not a.tls and not self.insecure_peers
                    and not _is_loopback_host(a)):
                raise ConfigError(
                    f"{flag} {a}: peers over plain TCP beyond this machine need TLS "
                    "(--peer-tls-cert-file, --peer-tls-key-file, --peer-tls-ca-cert-file and "
                    "tls:// addresses), or --insecure-peers")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> Config:
        """Build a Config from a namespace made by add_node_arguments().

        Flags left out take the dataclass defaults.  Raises ConfigError for
        duplicate --peer ids (the dict would silently keep only one).
        """
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            v = getattr(ns, f.name, None)
            if v is not None:
                kwargs[f.name] = v
        peers: dict[int, str] = {}
        for pid, url in getattr(ns, "peer", None) or ():
            if pid in peers:
                raise ConfigError(f"--peer {pid}: given twice ({peers[pid]} and {url})")
            peers[pid] = url
        kwargs["peers"] = peers
        if getattr(ns, "join", False):
            kwargs["join"] = True
        return cls(**kwargs)


def _is_loopback_host(a: Address) -> bool:
    """A host that names this machine only: localhost or a loopback literal
    (a wildcard or any other host is reachable from elsewhere)."""
    host = a.host or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_node_id(flag: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= NODE_ID_MAX:
        raise ConfigError(f"{flag}: node ids are integers from 1 to {NODE_ID_MAX}, got {v!r}")


def check_cluster_id(v: object) -> None:
    if not isinstance(v, str) or not v:
        raise ConfigError("--cluster-id: must not be empty")
    if len(v.encode("utf-8")) > CLUSTER_ID_MAX_BYTES:
        raise ConfigError(f"--cluster-id: longer than {CLUSTER_ID_MAX_BYTES} bytes")
    if not v.isprintable() or v != v.strip():
        raise ConfigError(f"--cluster-id {v!r}: only printable characters, "
                          "no leading or trailing spaces")


def _addr(flag: str, url: str) -> Address:
    try:
        return parse_address(url)
    except AddressError as e:
        raise ConfigError(f"{flag}: {e}") from None


def _choice(flag: str, v: object, choices: Sequence[str]) -> None:
    if v not in choices:
        raise ConfigError(f"{flag}: {v!r} is not one of {', '.join(choices)}")


def _at_least(flag: str, v: object, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{flag}: must be an integer >= {lo}, got {v!r}")


# ---- argparse ---------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2,
    with `--version` (`raftfast X.Y.Z`, exit 0, before any other check), so
    every command built on it has both."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"raftfast {__version__}",
                          help="print raftfast's version and exit")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def node_id_arg(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer node id") from None
    if not 1 <= v <= NODE_ID_MAX:
        raise argparse.ArgumentTypeError(f"node ids are from 1 to {NODE_ID_MAX}, got {v}")
    return v


def url_arg(s: str) -> str:
    try:
        parse_address(s)
    except AddressError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s


def cluster_id_arg(s: str) -> str:
    try:
        check_cluster_id(s)
    except ConfigError as e:
        # argparse names the flag itself
        raise argparse.ArgumentTypeError(str(e).removeprefix("--cluster-id").lstrip(": ")) from None
    return s


def _type_peer(s: str) -> tuple[int, str]:
    pid, sep, url = s.partition("=")
    if not sep or not pid or not url:
        raise argparse.ArgumentTypeError(f"{s!r} is not ID=URL")
    return node_id_arg(pid.strip()), url_arg(url.strip())


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(Config) if f.name == name)


# (flag, Config field, argparse kwargs) of the knobs the cluster passes through.
_TUNABLES: list[tuple[str, str, dict[str, Any]]] = [
    ("--cluster-id", "cluster_id", dict(metavar="NAME",
     help="cluster identity, checked in every handshake and stored in the data dir")),
    ("--fsync", "fsync", dict(choices=("always", "never"),
     help="always: entries, term and vote are on disk before a node acknowledges or "
          "votes; never: survives a killed process, not a power loss")),
    ("--heartbeat-interval", "heartbeat_interval_ms", dict(type=int_at_least(1), metavar="MS",
     help="leader heartbeat period")),
    ("--election-timeout", "election_timeout_ms", dict(type=int_at_least(1), metavar="MS",
     help="T: election timeouts are drawn at random from [T, 2T)")),
    ("--max-batch-entries", "max_batch_entries", dict(type=int_at_least(1), metavar="N",
     help="most client commands in one proposal")),
    ("--max-batch-bytes", "max_batch_bytes", dict(type=int_at_least(1), metavar="N",
     help="most bytes in one proposal; the leader stops reading clients while twice "
          "this (at most --max-inflight-bytes) is proposed and not yet answered")),
    ("--batch-linger-us", "batch_linger_us", dict(type=int_at_least(0), metavar="N",
     help="how long a proposal may wait for more commands")),
    ("--max-inflight", "max_inflight", dict(type=int_at_least(1), metavar="N",
     help="unacknowledged AppendEntries per follower")),
    ("--max-inflight-bytes", "max_inflight_bytes", dict(type=int_at_least(1), metavar="N",
     help="unacknowledged AppendEntries bytes per follower")),
    ("--read-mode", "read_mode", dict(choices=("readindex", "lease"),
     help="how linearizable reads are confirmed")),
    ("--snapshot-entries", "snapshot_entries", dict(type=int_at_least(0), metavar="N",
     help="snapshot and compact every N applied entries; 0 = never")),
    ("--snapshot-trailing", "snapshot_trailing", dict(type=int_at_least(0), metavar="N",
     help="entries kept in the log behind a snapshot for slow followers")),
    ("--snapshot-log-bytes", "snapshot_log_bytes", dict(type=memory_at_least(0), metavar="BYTES",
     help="also snapshot when the log in memory passes this size, trailing entries "
          "included; 0 = only by --snapshot-entries")),
    ("--max-uncommitted-bytes", "max_uncommitted_bytes",
     dict(type=memory_at_least(0), metavar="BYTES",
          help="proposals the leader holds uncommitted; past it writes wait, then get "
               "TRYAGAIN; 0 = no bound")),
    ("--log-level", "log_level", dict(choices=LOG_LEVELS, help="log verbosity")),
    ("--log-format", "log_format", dict(choices=LOG_FORMATS,
     help="text: a line per record; json: an object per line, for log shippers")),
    ("--max-frame-bytes", "max_frame_bytes", dict(type=int_at_least(1), metavar="N",
     help="largest peer frame accepted")),
    ("--proto-max-bulk-len", "proto_max_bulk_len", dict(type=memory_at_least(1024), metavar="BYTES",
     help="the largest key or value; a request announcing a larger one is a protocol error")),
    ("--client-query-buffer-limit", "client_query_buffer_limit",
     dict(type=memory_at_least(1024), metavar="BYTES",
          help="bytes one connection may hold of requests not yet complete; past it the "
               "connection is closed")),
    ("--maxclients", "maxclients", dict(type=int_at_least(1), metavar="N",
     help="client connections; one more is refused (lowered to what the file-descriptor "
          "limit allows)")),
    ("--client-output-buffer-limit", "client_output_buffer_limit",
     dict(type=memory_at_least(1024), metavar="BYTES",
          help="bytes of replies one connection may hold unsent; a read whose reply would "
               "pass it closes the connection instead")),
    ("--maxmemory", "maxmemory", dict(type=memory_at_least(0), metavar="BYTES",
     help="memory for the data set, the log in memory and client buffers; past it (here or "
          "on a voter) the leader refuses writes that grow the data with -OOM; 0 = no limit "
          "(default: half of RAM)")),
    ("--maxmemory-clients", "maxmemory_clients", dict(type=memory_at_least(0), metavar="BYTES",
     help="all clients' buffers together; past it the client using the most is closed "
          "(default: a quarter of --maxmemory)")),
    ("--timeout", "timeout", dict(type=int_at_least(0), metavar="SECONDS",
     help="close a client connection idle this long; 0 = never")),
    ("--enable-debug-command", "enable_debug_command", dict(choices=DEBUG_COMMAND_MODES,
     help="RAFTFAST.BENCH: no, yes, or local (loopback and Unix-socket clients only)")),
]


def add_node_arguments(parser: argparse.ArgumentParser,
                       cluster: bool = False) -> argparse.ArgumentParser:
    """Add the node flags to `parser`.

    With cluster=True only the tunables are added: the launcher chooses each
    node's id, data dir, addresses and peers itself.
    """
    parser.add_argument("--config", metavar="FILE",
                        help="more of these flags from a TOML file: keys are the flag names "
                             "without --, a repeated flag is a table ([peer] with 2 = \"URL\"), "
                             "a flag without a value is true or false; the command line wins")
    if not cluster:
        g = parser.add_argument_group("identity and addresses")
        g.add_argument("--id", dest="node_id", type=node_id_arg, required=True, metavar="ID",
                       help="this node's id (1 to 2^63-1)")
        g.add_argument("--data-dir", required=True, metavar="DIR",
                       help="this node's state; created if missing, locked while running")
        g.add_argument("--listen", type=url_arg, required=True, metavar="URL",
                       help="where peer traffic is accepted (tcp://HOST:PORT or unix:///path.sock)")
        g.add_argument("--client", type=url_arg, required=True, metavar="URL",
                       help="where clients are served (RESP2)")
        g.add_argument("--advertise-client", type=url_arg, metavar="URL",
                       help="the client address other nodes name in MOVED (default: --client)")
        g.add_argument("--peer", type=_type_peer, action="append", metavar="ID=URL",
                       help="how this node dials another node (repeatable)")
        g.add_argument("--join", action="store_true",
                       help="start as a non-member that waits to be added")
        g.add_argument("--cluster-secret-file", metavar="FILE",
                       help="a secret shared by every node: each peer connection proves it "
                            "both ways before a message is read (default: none)")
        g.add_argument("--cluster-secret-optional", action="store_true", default=None,
                       help="with --cluster-secret-file, also let in peers that prove no "
                            "secret (logged): the first roll of introducing a secret")
        g.add_argument("--tls-cert-file", metavar="FILE",
                       help="the client port's TLS certificate (with --client tls://...)")
        g.add_argument("--tls-key-file", metavar="FILE", help="its private key")
        g.add_argument("--tls-ca-cert-file", metavar="FILE",
                       help="the CA that signs client certificates")
        g.add_argument("--tls-auth-clients", choices=("yes", "no"),
                       help="clients must present a certificate the CA signed (default: yes)")
        g.add_argument("--peer-tls-cert-file", metavar="FILE",
                       help="this node's certificate for mutual TLS between peers (tls:// "
                            "--listen and --peer addresses)")
        g.add_argument("--peer-tls-key-file", metavar="FILE", help="its private key")
        g.add_argument("--peer-tls-ca-cert-file", metavar="FILE",
                       help="the CA that signs every peer's certificate")
        g.add_argument("--insecure-peers", action="store_true", default=None,
                       help="allow peers over plain TCP on a non-loopback address")
        g.add_argument("--unixsocketperm", type=octal_mode, metavar="MODE",
                       help="the mode of a unix:// client socket, in octal (default: 600)")
        g.add_argument("--metrics", type=url_arg, metavar="URL",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics "
                            "(--metrics tcp://HOST:PORT; default: none)")
        g.add_argument("--force-new-cluster", action="store_true", default=None,
                       help="start as the only member of this data dir's configuration, "
                            "keeping its log and snapshot, after a majority was lost for good")
        g.add_argument("--requirepass-file", metavar="FILE",
                       help="clients must AUTH with the password in FILE before any other "
                            "command, as with Redis's requirepass (default: none)")
    g = parser.add_argument_group("tunables")
    for flag, name, kw in _TUNABLES:
        g.add_argument(flag, dest=name, default=None,
                       **{**kw, "help": f"{kw['help']} (default: {_default(name)})"})
    return parser


def tunable_argv(ns: argparse.Namespace) -> list[str]:
    """The tunable flags that were given in `ns`, as argv for a node process."""
    argv: list[str] = []
    for flag, name, _ in _TUNABLES:
        v = getattr(ns, name, None)
        if v is not None:
            argv += [flag, str(v)]
    return argv


def parse_node_config(argv: Sequence[str] | None = None,
                      prog: str = "python -m raftfast.node") -> Config:
    """Parse and validate a node command line; bad usage exits 2 with one line."""
    parser = add_node_arguments(ArgumentParser(
        prog=prog, description="Run one raftfast node.",
        epilog="Also: `python -m raftfast.node backup --client URL FILE` takes a backup of a "
               "running cluster, `python -m raftfast.node restore FILE --data-dir DIR --id ID` "
               "makes a new cluster's first data dir from one (each with --help)."))
    try:
        argv = expand_config(parser, sys.argv[1:] if argv is None else argv)
    except ConfigFileError as e:
        parser.error(str(e))
    ns = parser.parse_args(argv)
    try:
        return Config.from_args(ns).validate()
    except ConfigError as e:
        parser.error(str(e))
