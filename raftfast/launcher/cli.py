"""`python -m raftfast.cluster`: run a local cluster, one process per node.

    python -m raftfast.cluster --nodes 5 [--transport unix|tcp] [--base-port 7000]
        [--metrics] [--data-dir DIR] [node tunables] [--bench SECONDS]
    python -m raftfast.cluster add --data-dir DIR         # grow the running cluster by one
    python -m raftfast.cluster remove ID --data-dir DIR   # shrink it

The running launcher listens on DIR/launcher.sock; `add` and `remove` are
requests to it.  Which nodes exist is kept in DIR/cluster.json: a restart
of the launcher on the same DIR starts the nodes added since and not the
removed ones.  Bad usage exits 2 with one line; a cluster that does not
come up exits 1.
"""
import argparse
import asyncio
import os
import shutil
import sys
import tempfile

import uvloop

from raftfast.arg_types import int_at_least
from raftfast.config import ArgumentParser, ConfigError, add_node_arguments
from raftfast.config_file import ConfigFileError, expand_config
from raftfast.launcher import control
from raftfast.launcher.launcher import Launcher
from raftfast.launcher.layout import Layout, ensure_certificates, ensure_secret, plan

DEFAULTS = {"nodes": 3, "transport": "unix", "base_port": 7000}

CONTROL_HELP = """\
growing and shrinking a running cluster (it needs --data-dir DIR):
  python -m raftfast.cluster add --data-dir DIR
      start the next node with --join, add it (RAFT.NODE ADD to the leader),
      wait until it votes, print its row
  python -m raftfast.cluster remove ID --data-dir DIR
      remove node ID (RAFT.NODE REMOVE), stop its process, print the rest
  python -m raftfast.cluster roll --data-dir DIR
      restart every node in turn, the leader last after a transfer, each
      once the one before caught up (picks up a new release, secret, ...)
A restart with the same --data-dir starts the nodes added since and not the
removed ones; --nodes, --transport and --base-port then come from DIR."""

# The node flags' own integer checks, so every command words errors alike.
positive = int_at_least(1)
nonnegative = int_at_least(0)


def positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def build_parser(defaults=True):
    """The launcher's parser.  defaults=False leaves out the defaults of the
    flags a data dir records (to tell which ones were given)."""
    def d(name):
        return DEFAULTS[name] if defaults else argparse.SUPPRESS
    p = ArgumentParser(
        prog="python -m raftfast.cluster",
        description="Run a local raftfast cluster, one process per node, until Ctrl-C.",
        epilog=CONTROL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=positive, default=d("nodes"), metavar="N",
                   help="number of nodes (default: 3)")
    p.add_argument("--transport", choices=("unix", "tcp"), default=d("transport"),
                   help="peer traffic: unix sockets in the data dir, or tcp on "
                        "127.0.0.1:<base-port + 100 + i> (default: unix)")
    p.add_argument("--tls", action="store_true", default=False if defaults else argparse.SUPPRESS,
                   help="peers and clients over TLS (implies --transport tcp): a private CA "
                        "and certificates are made in DIR/tls")
    p.add_argument("--requirepass-file", metavar="FILE",
                   help="clients (and the launcher) AUTH with the password in FILE, as with "
                        "Redis's requirepass; every node gets it (default: none)")
    p.add_argument("--base-port", type=positive, default=d("base_port"), metavar="PORT",
                   help="node i serves clients on 127.0.0.1:<PORT + i> (default: 7000)")
    p.add_argument("--metrics", action="store_true",
                   help="node i serves Prometheus metrics at "
                        "http://127.0.0.1:<base-port + 200 + i>/metrics")
    p.add_argument("--data-dir", metavar="DIR",
                   help="keep node state in DIR/node<i> (default: a temporary "
                        "directory removed on exit)")
    b = p.add_argument_group("load")
    b.add_argument("--bench", type=positive_float, metavar="SECONDS",
                   help="run the built-in load against the leader, print the results, stop")
    b.add_argument("--bench-clients", type=positive, default=50, metavar="N",
                   help="concurrent connections (default: 50)")
    b.add_argument("--bench-pipeline", type=positive, default=1, metavar="N",
                   help="requests in flight per connection (default: 1)")
    b.add_argument("--bench-value-size", type=nonnegative, default=64, metavar="BYTES",
                   help="SET value size (default: 64)")
    add_node_arguments(p, cluster=True)
    return p


def build_control_parser():
    p = ArgumentParser(prog="python -m raftfast.cluster",
                       description="Grow, shrink or roll a running local cluster.")
    sub = p.add_subparsers(dest="op", required=True, metavar="add|remove|roll")
    a = sub.add_parser("add", help="start the next node and add it to the cluster",
                       description="Start the next node with --join, add it to the running "
                                   "cluster, wait until it votes, print its row.")
    a.add_argument("--data-dir", required=True, metavar="DIR",
                   help="the --data-dir of the running launcher")
    r = sub.add_parser("remove", help="remove a node from the cluster and stop it",
                       description="Remove node ID from the running cluster, stop its "
                                   "process, print the remaining nodes.")
    r.add_argument("id", type=positive, metavar="ID", help="the node to remove")
    r.add_argument("--data-dir", required=True, metavar="DIR",
                   help="the --data-dir of the running launcher")
    o = sub.add_parser("roll", help="restart every node in turn, the leader last",
                       description="Restart every node of the running cluster in turn: "
                                   "followers first, the leader last after handing over its "
                                   "leadership, each once the one before caught up.")
    o.add_argument("--data-dir", required=True, metavar="DIR",
                   help="the --data-dir of the running launcher")
    for sp in (a, r, o):
        sp.error = p.error  # one-line usage errors, exit 2
    return p


def control_main(argv):
    """`add` / `remove` / `roll`: one request to the launcher running on --data-dir."""
    ns = build_control_parser().parse_args(argv)
    data_dir = os.path.abspath(ns.data_dir)
    req = {"op": "remove", "id": ns.id} if ns.op == "remove" else {"op": ns.op}
    try:
        # A roll's steps are printed as they end (add and remove send none).
        answer = control.request(data_dir, req, on_progress=lambda text: print(text, flush=True))
    except control.ControlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if "ok" in answer:
        print(answer["ok"])
        return 0
    print(f"error: {answer.get('error', answer)}", file=sys.stderr)
    return 1


def recorded_layout(parser, argv, ns, data_dir):
    """The layout DIR/cluster.json records, checked against the flags that
    were given (a restart takes --nodes, --transport and --base-port from
    the data dir; a flag saying otherwise is a usage error), or the one
    the flags ask for."""
    try:
        layout = Layout.load(data_dir)
    except ConfigError as e:
        parser.error(str(e))
    if layout is None:
        return Layout.from_ns(ns)
    given = vars(build_parser(defaults=False).parse_args(argv))
    for name, value in (("nodes", layout.founders), ("transport", layout.transport),
                        ("tls", layout.tls),
                        ("base_port", layout.base_port)):
        if name in given and given[name] != value:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} {given[name]}: {data_dir} holds a cluster started with "
                         f"{flag} {value} (leave the flag out to restart it)")
    return layout


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("add", "remove", "roll"):
        return control_main(argv)
    parser = build_parser()
    try:
        argv = expand_config(parser, argv)
    except ConfigFileError as e:
        parser.error(str(e))
    ns = parser.parse_args(argv)
    if ns.tls and ns.transport == "unix" and any(a.startswith("--transport") for a in argv):
        parser.error("--tls runs peers over TCP with TLS: leave out --transport unix")
    os.umask(0o077)  # the cluster's files (its secret, layout and logs) are its user's alone
    temp = ns.data_dir is None
    data_dir = tempfile.mkdtemp(prefix="raftfast-") if temp else os.path.abspath(ns.data_dir)
    try:
        layout = Layout.from_ns(ns) if temp else recorded_layout(parser, argv, ns, data_dir)
        layout.metrics = ns.metrics
        try:
            specs = plan(ns, data_dir, layout)
        except ConfigError as e:
            parser.error(str(e))
        os.makedirs(data_dir, exist_ok=True)
        ensure_secret(data_dir)
        if layout.tls:
            ensure_certificates(data_dir, layout)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(Launcher(ns, specs, data_dir, layout).run())
    finally:
        if temp:
            shutil.rmtree(data_dir, ignore_errors=True)
