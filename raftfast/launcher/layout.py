"""Which nodes a local cluster has, where each listens, and the command
line each is started with.

Node i serves clients on tcp://127.0.0.1:<base-port + i>; peers talk over
unix:///DIR/node<i>/raft.sock, or with --transport tcp over
127.0.0.1:<base-port + 100 + i>; with --metrics it serves Prometheus at
http://127.0.0.1:<base-port + 200 + i>/metrics.  The layout (the founding nodes, the ones
added since, the ids removed) is kept in DIR/cluster.json, so a restart on
the same DIR starts the same nodes.
"""
import json
import os
import secrets

from raftfast.address import AddressError, parse_address
from raftfast.config import Config, ConfigError, half_of_ram, tunable_argv

STATE_FILE = "cluster.json"
STATE_FORMAT = 1
SECRET_FILE = "cluster.secret"  # the secret every node's peer handshakes prove


def secret_path(data_dir):
    return os.path.join(data_dir, SECRET_FILE)


def ensure_secret(data_dir):
    """Create the cluster's secret in data_dir (0600, 32 random bytes as
    hex, durable) unless it is there already: a restart keeps the one the
    nodes were started with."""
    path = secret_path(data_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def log_path(data_dir, i):
    """Where node i's output goes."""
    return os.path.join(data_dir, f"node{i}.log")


class NodeSpec:
    """One node to start: its id, data dir, addresses and command line (its
    flags, without the interpreter and module)."""
    __slots__ = ("id", "data_dir", "listen", "client", "argv", "metrics")

    def __init__(self, node_id, data_dir, listen, client, argv, metrics=None):
        self.id = node_id
        self.data_dir = data_dir
        self.listen = listen
        self.client = client
        self.argv = argv
        self.metrics = metrics  # the URL Prometheus scrapes, or None


class Layout:
    """Which nodes a cluster has and where each listens: the founding nodes
    1..founders, the nodes added since, and the ids removed.  Ids are never
    reused: an added node gets one more than any id the cluster ever had
    (a node that lost its state must come back under a new id)."""

    def __init__(self, founders, transport, base_port, added=(), removed=(), tls=False,
                 metrics=False):
        self.founders = founders
        self.transport = transport
        self.base_port = base_port
        self.tls = tls  # peers and clients over TLS, with DIR/tls/ certificates
        # Every node serves metrics (this run's choice, not recorded in DIR).
        self.metrics = metrics
        self.added = list(added)
        self.removed = set(removed)

    @classmethod
    def from_ns(cls, ns):
        tls = getattr(ns, "tls", False)
        return cls(ns.nodes, "tcp" if tls else ns.transport, ns.base_port, tls=tls,
                   metrics=getattr(ns, "metrics", False))

    def ids(self):
        """Every id the cluster ever had."""
        return list(range(1, self.founders + 1)) + self.added

    def live_ids(self):
        return [i for i in self.ids() if i not in self.removed]

    def next_id(self):
        return max(self.ids()) + 1

    def listen(self, data_dir, i):
        return (f"unix://{data_dir}/node{i}/raft.sock" if self.transport == "unix"
                else f"{self._scheme}://127.0.0.1:{self.base_port + 100 + i}")

    def client(self, i):
        return f"{self._scheme}://127.0.0.1:{self.base_port + i}"

    def metrics_url(self, i):
        """Node i's --metrics address, or None without --metrics."""
        return f"tcp://127.0.0.1:{self.base_port + 200 + i}" if self.metrics else None

    @property
    def _scheme(self):
        return "tls" if self.tls else "tcp"

    def check_ports(self, top_id):
        """ConfigError unless node ids up to top_id get ports of their own."""
        base = self.base_port
        top = base + (200 if self.metrics else 100 if self.transport == "tcp" else 0) + top_id
        if top > 65535:
            raise ConfigError(f"--base-port {base} with {top_id} nodes needs ports up to "
                              f"{top}, past 65535")
        if self.transport == "tcp" and top_id >= 100:
            raise ConfigError("--transport tcp supports node ids up to 99 (peer ports are "
                              "client ports + 100)")
        if self.metrics and top_id >= 100:
            raise ConfigError("--metrics supports node ids up to 99 (metrics ports are "
                              "client ports + 200)")

    def to_json(self):
        return {"format": STATE_FORMAT, "founders": self.founders, "transport": self.transport,
                "base_port": self.base_port, "added": self.added,
                "removed": sorted(self.removed), "tls": self.tls}

    @classmethod
    def load(cls, data_dir):
        """The layout recorded in data_dir, or None when there is none;
        ConfigError when the file cannot be read."""
        path = os.path.join(data_dir, STATE_FILE)
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read().decode("utf-8"))
            if doc["format"] != STATE_FORMAT:
                raise ValueError(f"format {doc['format']!r}, this launcher reads {STATE_FORMAT}")
            layout = cls(doc["founders"], doc["transport"], doc["base_port"], doc["added"],
                         doc["removed"], doc.get("tls", False) is True)
            ids = layout.ids()
            if (not all(type(i) is int and i > 0 for i in ids + sorted(layout.removed))
                    or len(set(ids)) != len(ids) or layout.transport not in ("unix", "tcp")
                    or type(layout.base_port) is not int):
                raise ValueError("node ids, transport or base port out of shape")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: cannot read the cluster's layout ({e})") from None
        return layout

    def save(self, data_dir):
        """Write atomically: a launcher killed meanwhile leaves the old file or the new."""
        path = os.path.join(data_dir, STATE_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)


TLS_DIR = "tls"


def tls_files(data_dir, name):
    """(certificate, key) paths of `name` (ca, node<i>, client) in DIR/tls."""
    d = os.path.join(data_dir, TLS_DIR)
    return os.path.join(d, f"{name}.crt"), os.path.join(d, f"{name}.key")


def ensure_certificates(data_dir, layout):
    """With --tls: a private CA in DIR/tls (kept across restarts) and a
    certificate for every node id and for clients, each made once."""
    from raftfast.launcher import certs
    d = os.path.join(data_dir, TLS_DIR)
    os.makedirs(d, 0o700, exist_ok=True)
    ca_crt, ca_key = tls_files(data_dir, "ca")
    if os.path.exists(ca_crt) and os.path.exists(ca_key):
        ca = certs.load_ca(d)
    else:
        ca = certs.make_ca(d)
    for name in [f"node{i}" for i in layout.ids()] + ["client"]:
        if not all(os.path.exists(p) for p in tls_files(data_dir, name)):
            certs.issue(d, name, ca)


def node_spec(layout, data_dir, i, tunables):
    """Node i's command line: it dials every other live node by --peer; a
    node added after the founding joins (on a data dir that holds state,
    --join is just a restart)."""
    ddir = os.path.join(data_dir, f"node{i}")
    listen = layout.listen(data_dir, i)
    argv = ["--id", str(i), "--data-dir", ddir, "--listen", listen,
            "--client", layout.client(i), "--cluster-secret-file", secret_path(data_dir)]
    for j in layout.live_ids():
        if j != i:
            argv += ["--peer", f"{j}={layout.listen(data_dir, j)}"]
    if i > layout.founders:
        argv.append("--join")
    metrics = layout.metrics_url(i)
    if metrics is not None:
        argv += ["--metrics", metrics]
    if layout.tls:
        cert, key = tls_files(data_dir, f"node{i}")
        ca = tls_files(data_dir, "ca")[0]
        argv += ["--peer-tls-cert-file", cert, "--peer-tls-key-file", key,
                 "--peer-tls-ca-cert-file", ca, "--tls-cert-file", cert, "--tls-key-file", key,
                 "--tls-ca-cert-file", ca]
    scrape = None if metrics is None else f"http://127.0.0.1:{layout.base_port + 200 + i}/metrics"
    return NodeSpec(i, ddir, listen, layout.client(i), argv + tunables, scrape)


def node_flags(ns, founders):
    """The flags every node gets from the launcher's command line: the
    tunables given, each node's share of the memory, the password file."""
    flags = tunable_argv(ns)
    if getattr(ns, "maxmemory", None) is None:
        # The nodes share one machine: half of its RAM among them.
        flags += ["--maxmemory", str(half_of_ram() // founders)]
    if getattr(ns, "requirepass_file", None):
        flags += ["--requirepass-file", os.path.abspath(ns.requirepass_file)]
    return flags


def plan(ns, data_dir, layout=None):
    """Every live node's addresses and command line (of `layout`, by
    default the founding nodes ns asks for); raises ConfigError for a
    combination no node could run with."""
    data_dir = os.path.abspath(data_dir)
    layout = layout or Layout.from_ns(ns)
    n, base = layout.founders, layout.base_port
    top = base + (100 if layout.transport == "tcp" else 0) + n
    if top > 65535:
        raise ConfigError(f"--base-port {base} with --nodes {n} needs ports up to {top}, "
                          "past 65535")
    if layout.transport == "tcp" and n >= 100:
        raise ConfigError("--transport tcp supports up to 99 nodes (peer ports are "
                          "client ports + 100)")
    layout.check_ports(max(layout.ids()))
    for i in layout.live_ids():
        try:
            parse_address(layout.listen(data_dir, i))
        except AddressError as e:
            raise ConfigError(f"--data-dir: {e}; use a shorter --data-dir or "
                              "--transport tcp") from None
    tunables = node_flags(ns, n)
    specs = [node_spec(layout, data_dir, i, tunables) for i in layout.live_ids()]
    if not specs:
        raise ConfigError(f"{os.path.join(data_dir, STATE_FILE)}: every node was removed")
    # Check the tunables the way every node will, before starting any.
    first = specs[0]
    tls = {}
    if layout.tls:
        cert, key = tls_files(data_dir, f"node{first.id}")
        ca = tls_files(data_dir, "ca")[0]
        tls = dict(tls_cert_file=cert, tls_key_file=key, tls_ca_cert_file=ca,
                   peer_tls_cert_file=cert, peer_tls_key_file=key, peer_tls_ca_cert_file=ca)
    Config.from_args(_WithIdentity(ns, node_id=first.id, data_dir=first.data_dir,
                                   listen=first.listen, client=first.client,
                                   metrics=layout.metrics_url(first.id), **tls)).validate()
    return specs


class _WithIdentity:
    """ns with a node's identity added, for Config.from_args."""

    def __init__(self, ns, **extra):
        self.__dict__.update(vars(ns))
        self.__dict__.update(extra)
