"""`python -m raftfast.cluster`: run a local cluster, one process per node.

    python -m raftfast.cluster --nodes 5 [--transport unix|tcp] [--base-port 7000]
        [--data-dir DIR] [node tunables] [--bench SECONDS]
    python -m raftfast.cluster add --data-dir DIR         # grow the running cluster by one
    python -m raftfast.cluster remove ID --data-dir DIR   # shrink it

Growing and shrinking: the running launcher listens on a Unix socket in its
data dir (DIR/launcher.sock).  `add` asks it to start node <next id> with
--join, add it with RAFT.NODE ADD (the leader promotes it to voter once it
has caught up) and report it once it votes; `remove` asks it to remove a
node with RAFT.NODE REMOVE and then stop its process.  The launcher starts
every node itself, so no node outlives it, added ones included.  Which
nodes exist is kept in DIR/cluster.json: a restart of the launcher on the
same DIR starts the added nodes again and not the removed ones.  Ids are
never reused (a removed node's data dir stays where it was).

Node i serves clients on tcp://127.0.0.1:<base-port + i>; peers talk over
unix:///DIR/node<i>/raft.sock, or with --transport tcp over
127.0.0.1:<base-port + 100 + i>.  Each node's output goes to DIR/node<i>.log
and its last lines are kept to explain a failure.

No node outlives the launcher: every node gets PR_SET_PDEATHSIG=SIGTERM, so
the kernel stops it even when the launcher is SIGKILLed, without any help
from the node's code.  Each node also runs in its own process group, so a
Ctrl-C at the terminal reaches only the launcher, which then stops the nodes
in order (SIGTERM, wait, SIGKILL stragglers) instead of racing them.
"""
import argparse
import asyncio
import collections
import ctypes
import json
import os
import re
import socket
import shutil
import signal
import sys
import tempfile
import time

import uvloop

from raftfast.bench import loadgen
from raftfast.address import AddressError, parse_address
from raftfast.config import (ArgumentParser, Config, ConfigError, _int_at_least, add_node_arguments,
                             tunable_argv)

# Tests swap in a stand-in node; everything else runs the real one.
NODE_MODULE = os.environ.get("RAFTFAST_NODE_MODULE", "raftfast.node")
LEADER_WAIT = 30.0
STOP_WAIT = 10.0
LOG_LINES = 40
PR_SET_PDEATHSIG = 1
READY_RE = re.compile(r"^ready id=(\d+) listen=(\S+) client=(\S+)\s*$")
STATE_FILE = "cluster.json"
STATE_FORMAT = 1
CONTROL_SOCKET = "launcher.sock"
CHANGE_WAIT = 30.0   # for a membership change to commit, and for an added node to vote
DEFAULTS = {"nodes": 3, "transport": "unix", "base_port": 7000}


CONTROL_HELP = """\
growing and shrinking a running cluster (it needs --data-dir DIR):
  python -m raftfast.cluster add --data-dir DIR
      start the next node with --join, add it (RAFT.NODE ADD to the leader),
      wait until it votes, print its row
  python -m raftfast.cluster remove ID --data-dir DIR
      remove node ID (RAFT.NODE REMOVE), stop its process, print the rest
A restart with the same --data-dir starts the nodes added since and not the
removed ones; --nodes, --transport and --base-port then come from DIR."""


def build_parser(defaults=True):
    """The launcher's parser.  defaults=False leaves out the defaults of the
    flags a data dir records (to tell which ones were given)."""
    def d(name):
        return DEFAULTS[name] if defaults else argparse.SUPPRESS
    p = ArgumentParser(
        prog="python -m raftfast.cluster",
        description="Run a local raftfast cluster, one process per node, until Ctrl-C.",
        epilog=CONTROL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=_positive, default=d("nodes"), metavar="N",
                   help="number of nodes (default: 3)")
    p.add_argument("--transport", choices=("unix", "tcp"), default=d("transport"),
                   help="peer traffic: unix sockets in the data dir, or tcp on "
                        "127.0.0.1:<base-port + 100 + i> (default: unix)")
    p.add_argument("--base-port", type=_positive, default=d("base_port"), metavar="PORT",
                   help="node i serves clients on 127.0.0.1:<PORT + i> (default: 7000)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="keep node state in DIR/node<i> (default: a temporary "
                        "directory removed on exit)")
    b = p.add_argument_group("load")
    b.add_argument("--bench", type=_positive_float, metavar="SECONDS",
                   help="run the built-in load against the leader, print the results, stop")
    b.add_argument("--bench-clients", type=_positive, default=50, metavar="N",
                   help="concurrent connections (default: 50)")
    b.add_argument("--bench-pipeline", type=_positive, default=1, metavar="N",
                   help="requests in flight per connection (default: 1)")
    b.add_argument("--bench-value-size", type=_nonnegative, default=64, metavar="BYTES",
                   help="SET value size (default: 64)")
    add_node_arguments(p, cluster=True)
    return p


def _argerr(msg):
    return argparse.ArgumentTypeError(msg)


# The node flags' own integer checks, so both commands word errors alike.
_positive = _int_at_least(1)
_nonnegative = _int_at_least(0)


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise _argerr(f"{s!r} is not a number") from None
    if not v > 0:
        raise _argerr(f"must be > 0, got {s}")
    return v


class NodeSpec:
    __slots__ = ("id", "data_dir", "listen", "client", "argv")

    def __init__(self, node_id, data_dir, listen, client, argv):
        self.id = node_id
        self.data_dir = data_dir
        self.listen = listen
        self.client = client
        self.argv = argv


class Layout:
    """Which nodes a cluster has and where each listens: the founding nodes
    1..founders, the nodes added since, and the ids removed.  Ids are never
    reused: an added node gets one more than any id the cluster ever had
    (a node that lost its state must come back under a new id: it may have voted)."""

    def __init__(self, founders, transport, base_port, added=(), removed=()):
        self.founders = founders
        self.transport = transport
        self.base_port = base_port
        self.added = list(added)
        self.removed = set(removed)

    @classmethod
    def from_ns(cls, ns):
        return cls(ns.nodes, ns.transport, ns.base_port)

    def ids(self):
        """Every id the cluster ever had."""
        return list(range(1, self.founders + 1)) + self.added

    def live_ids(self):
        return [i for i in self.ids() if i not in self.removed]

    def next_id(self):
        return max(self.ids()) + 1

    def listen(self, data_dir, i):
        return (f"unix://{data_dir}/node{i}/raft.sock" if self.transport == "unix"
                else f"tcp://127.0.0.1:{self.base_port + 100 + i}")

    def client(self, i):
        return f"tcp://127.0.0.1:{self.base_port + i}"

    def check_ports(self, top_id):
        """ConfigError unless node ids up to top_id get ports of their own."""
        base = self.base_port
        top = base + (100 if self.transport == "tcp" else 0) + top_id
        if top > 65535:
            raise ConfigError(f"--base-port {base} with {top_id} nodes needs ports up to "
                              f"{top}, past 65535")
        if self.transport == "tcp" and top_id >= 100:
            raise ConfigError("--transport tcp supports node ids up to 99 (peer ports are "
                              "client ports + 100)")

    def to_json(self):
        return {"format": STATE_FORMAT, "founders": self.founders, "transport": self.transport,
                "base_port": self.base_port, "added": self.added,
                "removed": sorted(self.removed)}

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
                         doc["removed"])
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


def node_spec(layout, data_dir, i, tunables):
    """Node i's command line: it dials every other live node by --peer; a
    node added after the founding joins (on a data dir that holds state,
    --join is just a restart)."""
    ddir = os.path.join(data_dir, f"node{i}")
    listen = layout.listen(data_dir, i)
    argv = ["--id", str(i), "--data-dir", ddir, "--listen", listen,
            "--client", layout.client(i)]
    for j in layout.live_ids():
        if j != i:
            argv += ["--peer", f"{j}={layout.listen(data_dir, j)}"]
    if i > layout.founders:
        argv.append("--join")
    return NodeSpec(i, ddir, listen, layout.client(i), argv + tunables)


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
    tunables = tunable_argv(ns)
    specs = [node_spec(layout, data_dir, i, tunables) for i in layout.live_ids()]
    if not specs:
        raise ConfigError(f"{os.path.join(data_dir, STATE_FILE)}: every node was removed")
    # Check the tunables the way every node will, before starting any.
    first = specs[0]
    Config.from_args(_Namespace(ns, node_id=first.id, data_dir=first.data_dir,
                                listen=first.listen, client=first.client)).validate()
    return specs


class _Namespace:
    """ns with a node's identity added, for Config.from_args."""

    def __init__(self, ns, **extra):
        self.__dict__.update(vars(ns))
        self.__dict__.update(extra)


# ---- processes ----------------------------------------------------------------

def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def child_setup(parent_pid):
    """preexec_fn: runs in the child between fork and exec."""
    def setup():
        os.setpgid(0, 0)  # out of the terminal's foreground group: Ctrl-C is ours to relay
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The launcher may have died before prctl took effect.
        if os.getppid() != parent_pid:
            os._exit(1)
    return setup


def node_env(extra=None):
    """The nodes' environment: ours, with `extra` (a dict) on top."""
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"  # the ready line must not wait in a buffer
    # Nodes import the same raftfast as the launcher, installed or not.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class Node:
    """One running node process and what it printed."""

    def __init__(self, spec, proc, log_path):
        self.spec = spec
        self.proc = proc
        self.lines = collections.deque(maxlen=LOG_LINES)
        self.ready = asyncio.get_running_loop().create_future()
        # Unbuffered: the log must be complete even if the launcher is killed.
        self.log = open(log_path, "ab", buffering=0)
        self.readers = [asyncio.create_task(self._read(proc.stdout, True)),
                        asyncio.create_task(self._read(proc.stderr, False))]
        self.exited = asyncio.create_task(proc.wait())
        self.stopping = False  # the launcher stops it on purpose (a removed node)

    @property
    def id(self):
        return self.spec.id

    async def _read(self, stream, is_stdout):
        # Always drain both pipes: a full pipe would block the node.
        while line := await stream.readline():
            self.log.write(line)
            text = line.decode("utf-8", "replace").rstrip()
            self.lines.append(text)
            if is_stdout and not self.ready.done() and (m := READY_RE.match(text)):
                self.ready.set_result(m.groups())

    def last_lines(self):
        return "\n".join(f"  node{self.id}| {t}" for t in self.lines) or f"  node{self.id}| (no output)"

    async def close_log(self):
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.log.close()


async def spawn(spec, log_path, env=None):
    """Start one node; `env` (a dict) is added to its environment."""
    os.makedirs(spec.data_dir, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", NODE_MODULE, *spec.argv,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=node_env(env),
        preexec_fn=child_setup(os.getpid()))
    return Node(spec, proc, log_path)


async def stop_all(nodes, timeout=STOP_WAIT):
    """SIGTERM every live node, wait, SIGKILL stragglers."""
    live = [n for n in nodes if n.proc.returncode is None]
    for n in live:
        _signal(n.proc, signal.SIGTERM)
    if live:
        # Fresh waits: a node's `exited` task may have been cancelled along
        # with whoever awaited it.
        await asyncio.wait([asyncio.ensure_future(n.proc.wait()) for n in live],
                           timeout=timeout)
    for n in live:
        if n.proc.returncode is None:
            print(f"node {n.id} (pid {n.proc.pid}) did not stop in {timeout:g} s: killing it",
                  file=sys.stderr)
            _signal(n.proc, signal.SIGKILL)
    await asyncio.gather(*(n.proc.wait() for n in nodes), return_exceptions=True)
    for n in nodes:
        await n.close_log()


def _signal(proc, sig):
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


# ---- talking to nodes -----------------------------------------------------------

async def resp_call(host, port, *args, timeout=2.0):
    """One command on a fresh connection; returns the decoded reply."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(loadgen.encode_command(*args))
        parser = loadgen.RespReplyParser()
        while (reply := parser.take()) is loadgen.RespReplyParser.INCOMPLETE:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                raise ConnectionError(f"{host}:{port} closed the connection")
            parser.feed(data)
        return reply
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def parse_info(text):
    """`field:value` lines of an INFO reply as a dict (sections skipped)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


async def info_raft(url, timeout=2.0):
    """INFO raft of the node serving clients at url, or None if it does not answer."""
    a = parse_address(url)
    try:
        reply = await resp_call(a.host, a.port, "INFO", "raft", timeout=timeout)
    except (OSError, asyncio.TimeoutError, ValueError):
        return None
    return parse_info(reply) if isinstance(reply, bytes) else None


async def poll_all(nodes):
    live = [n for n in nodes if n.proc.returncode is None]
    infos = await asyncio.gather(*(info_raft(n.spec.client) for n in live))
    return {n.id: i for n, i in zip(live, infos) if i is not None}


def find_leader(infos):
    """The id of the node that says it leads in the highest term, or None."""
    best = None
    for nid, info in infos.items():
        if info.get("raft_role") == "leader":
            term = _int(info.get("raft_current_term"))
            if best is None or term > best[0]:
                best = (term, nid)
    return best and best[1]


def _int(s, default=0):
    try:
        return int(s)
    except (TypeError, ValueError):
        return default


def format_table(nodes, infos):
    rows = [("id", "pid", "role", "term", "client")]
    for n in nodes:
        info = infos.get(n.id) or {}
        alive = n.proc.returncode is None
        rows.append((str(n.id), str(n.proc.pid),
                     info.get("raft_role", "?") if alive else f"exited({n.proc.returncode})",
                     info.get("raft_current_term", "?"), n.spec.client))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


class StatusLine:
    """leader, term, commit index and ops/s from commit index deltas."""

    def __init__(self):
        self.prev = None  # (time, commit index)

    def render(self, leader, info, now):
        if leader is None or info is None:
            self.prev = None
            return "no leader"
        commit = _int(info.get("raft_commit_index"))
        rate = ""
        if self.prev is not None and now > self.prev[0] and commit >= self.prev[1]:
            rate = f"  {(commit - self.prev[1]) / (now - self.prev[0]):,.0f} ops/s"
        self.prev = (now, commit)
        return (f"leader {leader}  term {info.get('raft_current_term', '?')}  "
                f"commit {commit}{rate}")


# ---- a cluster as an object ---------------------------------------------------------

class ClusterError(RuntimeError):
    """The cluster did not come up; the message carries the nodes' last lines."""


class LocalCluster:
    """The launcher's machinery without its command: start the nodes of a
    planned cluster, wait for a leader, stop them.  For the benchmarks and
    tests:

        async with LocalCluster(ns) as c:   # ns as build_parser() makes it
            url = c.client_url(c.leader_id)

    Without ns.data_dir a fresh temporary directory is used and removed on
    stop.  `env` (a dict) is added to every node's environment, e.g.
    {"RAFTFAST_COUNT_CALLS": "1"}.  Raises ConfigError (bad settings) or ClusterError (a node exited,
    or no leader within leader_wait seconds; the nodes are stopped first).
    """

    def __init__(self, ns, leader_wait=LEADER_WAIT, env=None):
        self.ns = ns
        self.leader_wait = leader_wait
        self.env = dict(env or {})
        self.temp = getattr(ns, "data_dir", None) is None
        # Short and under /tmp: unix socket paths are limited to 107 bytes.
        self.data_dir = (tempfile.mkdtemp(prefix="rf-", dir="/tmp" if os.path.isdir("/tmp")
                                          else None)
                         if self.temp else os.path.abspath(ns.data_dir))
        self.nodes = []
        self.leader_id = None

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.stop()

    @property
    def pids(self):
        return {n.id: n.proc.pid for n in self.nodes}

    def client_url(self, node_id):
        return next(n.spec.client for n in self.nodes if n.id == node_id)

    async def start(self):
        try:
            specs = plan(self.ns, self.data_dir)
            os.makedirs(self.data_dir, exist_ok=True)
            for spec in specs:
                self.nodes.append(await spawn(spec, os.path.join(self.data_dir,
                                                                 f"node{spec.id}.log"),
                                              self.env))
            await self.wait_leader(self.leader_wait)
        except BaseException:
            await self.stop()
            raise
        return self

    async def wait_leader(self, timeout=LEADER_WAIT):
        """The leader's id once every node is ready and one leads."""
        deadline = time.monotonic() + timeout
        while True:
            dead = [n for n in self.nodes if n.proc.returncode is not None]
            if dead:
                raise ClusterError("\n".join(
                    f"node {n.id} (pid {n.proc.pid}) exited with code {n.proc.returncode}; "
                    f"its last lines:\n{n.last_lines()}" for n in dead))
            if all(n.ready.done() for n in self.nodes):
                self.leader_id = find_leader(await poll_all(self.nodes))
                if self.leader_id is not None:
                    return self.leader_id
            if time.monotonic() > deadline:
                raise ClusterError(f"no leader after {timeout:g} s; the nodes' last lines:\n"
                                   + "\n".join(n.last_lines() for n in self.nodes))
            await asyncio.sleep(0.05)

    async def stop(self):
        nodes, self.nodes = self.nodes, []
        try:
            await stop_all(nodes)
        finally:
            if self.temp:
                shutil.rmtree(self.data_dir, ignore_errors=True)


# ---- the command ---------------------------------------------------------------

class ChangeFailed(Exception):
    """A membership change was refused or its outcome is not known; the
    message says which, for the operator."""


class Launcher:
    def __init__(self, ns, specs, data_dir, layout=None):
        self.ns = ns
        self.specs = specs
        self.data_dir = data_dir
        self.layout = layout or Layout.from_ns(ns)
        self.nodes = []
        self.stop = asyncio.Event()
        self.tty = sys.stdout.isatty()
        self.status_shown = False
        self.serving = False      # control requests are taken once the cluster is up
        self.control = None
        self.changing = asyncio.Lock()  # one membership change at a time
        self.watchers = []

    def say(self, text, err=False):
        if self.status_shown:  # end the status line first
            sys.stdout.write("\r\x1b[K")
            self.status_shown = False
        print(text, file=sys.stderr if err else sys.stdout, flush=True)

    async def run(self):
        loop = asyncio.get_running_loop()
        try:
            self.control = await self._listen_control()
        except ChangeFailed as e:
            self.say(f"error: {e}", err=True)
            return 1
        self.layout.save(self.data_dir)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            return await self._run()
        finally:
            self._close_control()
            await stop_all(self.nodes)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _run(self):
        deadline = time.monotonic() + LEADER_WAIT
        for spec in self.specs:
            self.nodes.append(await spawn(spec, os.path.join(self.data_dir,
                                                             f"node{spec.id}.log")))
        started = await self._until(self._all_ready, deadline)
        if started is not True:
            return self._startup_failed(started, "to be ready")
        leader_infos = await self._until(self._leader_known, deadline)
        if not isinstance(leader_infos, dict):
            return self._startup_failed(leader_infos, "to elect a leader")
        self.say(format_table(self.nodes, leader_infos))
        self.watchers = [asyncio.create_task(self._watch(n)) for n in self.nodes]
        try:
            if self.ns.bench:
                return await self._bench(leader_infos)
            self.serving = True
            await self._serve()
            return 0
        finally:
            self.serving = False
            for w in self.watchers:
                w.cancel()

    async def _until(self, check, deadline):
        """Run check() until it returns a result, a node exits, the launcher
        is told to stop, or the deadline passes; returns what happened."""
        while True:
            dead = [n for n in self.nodes if n.proc.returncode is not None]
            if dead:
                return dead
            if self.stop.is_set():
                return "stopped"
            result = await check()
            if result is not None:
                return result
            if time.monotonic() > deadline:
                return "timeout"
            try:
                await asyncio.wait_for(self.stop.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

    async def _all_ready(self):
        return True if all(n.ready.done() for n in self.nodes) else None

    async def _leader_known(self):
        infos = await poll_all(self.nodes)
        return infos if find_leader(infos) is not None else None

    def _startup_failed(self, what, waiting_for):
        if what == "stopped":
            return 0
        if what == "timeout":
            self.say(f"error: gave up after {LEADER_WAIT:g} s waiting for the nodes "
                     f"{waiting_for}", err=True)
            shown = self.nodes
        else:
            for n in what:
                self.say(f"error: node {n.id} (pid {n.proc.pid}) exited with code "
                         f"{n.proc.returncode} while waiting for the nodes {waiting_for}",
                         err=True)
            shown = what
        for n in shown:
            self.say(f"last lines of node {n.id} (full log: "
                     f"{os.path.join(self.data_dir, f'node{n.id}.log')}):", err=True)
            self.say(n.last_lines(), err=True)
        return 1

    async def _watch(self, node):
        # Shielded: cancelling this watcher must not cancel the node's own wait.
        await asyncio.shield(node.exited)
        if not self.stop.is_set() and not node.stopping:
            self.say(f"node {node.id} (pid {node.proc.pid}) exited unexpectedly with code "
                     f"{node.proc.returncode}; serving with the rest. Its last lines:",
                     err=True)
            self.say(node.last_lines(), err=True)

    async def _serve(self):
        self.say("serving; Ctrl-C stops every node")
        status = StatusLine()
        leader = None
        while not self.stop.is_set():
            if self.tty:
                infos = await poll_all(self.nodes)
                leader = find_leader(infos)
                line = status.render(leader, infos.get(leader), time.monotonic())
                sys.stdout.write("\r\x1b[K" + line)
                sys.stdout.flush()
                self.status_shown = True
            try:
                await asyncio.wait_for(self.stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
        self.say("stopping")

    async def _bench(self, infos):
        leader = find_leader(infos)
        url = parse_address(next(n.spec.client for n in self.nodes if n.id == leader))
        ns = self.ns
        self.say(f"bench: {ns.bench:g} s against node {leader} ({url})")
        task = asyncio.create_task(loadgen.run_async(
            f"{url.host}:{url.port}", ns.bench, ns.bench_clients, ns.bench_pipeline,
            ns.bench_value_size))
        stopper = asyncio.create_task(self.stop.wait())
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.say("bench interrupted")
            return 0
        try:
            result = task.result()
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            self.say(f"error: bench failed: {e}", err=True)
            return 1
        self.say(result.format())
        return 0

    # ---- growing and shrinking (the control socket) ---------------------------

    async def _listen_control(self):
        """Listen on DIR/launcher.sock for `add` and `remove`.  A socket file
        that refuses connections is a dead launcher's: removed.  One that
        answers means another launcher runs on this data dir."""
        path = os.path.join(self.data_dir, CONTROL_SOCKET)
        if len(os.fsencode(path)) > 107:
            self.say(f"warning: {path} is too long for a Unix socket: `add` and `remove` "
                     "will not reach this launcher (use a shorter --data-dir)", err=True)
            return None
        if os.path.exists(path):
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)
            except OSError:
                pass
            else:
                raise ChangeFailed(f"another launcher is running on {self.data_dir} "
                                   f"(it answers on {path})")
        try:
            server = await asyncio.start_unix_server(self._on_control, path)
            os.chmod(path, 0o600)  # the operator's, like the nodes' data
        except OSError as e:
            # The cluster itself does not need it: serve without add/remove.
            self.say(f"warning: cannot listen on {path} ({e}): `add` and `remove` will not "
                     "reach this launcher", err=True)
            return None
        return server

    def _close_control(self):
        if self.control is not None:
            self.control.close()
            try:
                os.unlink(os.path.join(self.data_dir, CONTROL_SOCKET))
            except FileNotFoundError:
                pass
            self.control = None

    async def _on_control(self, reader, writer):
        """One request per connection: a JSON line in, a JSON line out."""
        try:
            try:
                req = json.loads(await reader.readline())
                op = req["op"]
            except (ValueError, KeyError, TypeError):
                answer = {"error": "malformed request"}
            else:
                answer = await self._control(op, req)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the asking command went away; the change itself stands
        finally:
            writer.close()

    async def _control(self, op, req):
        if not self.serving:
            return {"error": "the cluster is not serving (still starting, or stopping); "
                             "try again"}
        async with self.changing:
            try:
                if op == "add":
                    return {"ok": await self.add_node()}
                if op == "remove" and type(req.get("id")) is int:
                    return {"ok": await self.remove_node(req["id"])}
                return {"error": f"unknown request {op!r}"}
            except ChangeFailed as e:
                return {"error": str(e)}

    async def add_node(self):
        """Start the next node with --join, add it, wait until it votes;
        returns its row of the table."""
        layout = self.layout
        nid = layout.next_id()
        try:
            layout.check_ports(nid)
        except ConfigError as e:
            raise ChangeFailed(f"cannot add node {nid}: {e}") from None
        spec = node_spec(layout, self.data_dir, nid, tunable_argv(self.ns))
        # The id is spent from now on, whatever happens next.
        layout.added.append(nid)
        layout.save(self.data_dir)
        node = await spawn(spec, os.path.join(self.data_dir, f"node{nid}.log"))
        self.nodes.append(node)
        self.watchers.append(asyncio.create_task(self._watch(node)))
        self.say(f"node {nid} started (pid {node.proc.pid}); adding it")
        try:
            await asyncio.wait_for(asyncio.shield(node.ready), LEADER_WAIT)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        if not node.ready.done():
            await self._drop_new(node)
            raise ChangeFailed(f"node {nid} did not start; its last lines:\n"
                               f"{node.last_lines()}")
        try:
            await self._change("add", nid, spec.listen)
        except ChangeFailed as e:
            if "outcome unknown" not in str(e):
                await self._drop_new(node)
            raise
        infos = await self._until_voter(nid)
        if infos is None:
            raise ChangeFailed(f"node {nid} was added as a learner but does not vote after "
                               f"{CHANGE_WAIT:g} s (it is left running; see "
                               f"{os.path.join(self.data_dir, f'node{nid}.log')})")
        row = format_table([node], infos).splitlines()
        self.say(f"node {nid} added:\n" + "\n".join(row))
        return "\n".join(row)

    async def _drop_new(self, node):
        """An added node that never became a member: stop it, never start it again."""
        node.stopping = True
        await stop_all([node])
        self.nodes.remove(node)
        self.layout.removed.add(node.id)
        self.layout.save(self.data_dir)

    async def remove_node(self, nid):
        """Remove node nid, then stop its process; returns the rows of the rest."""
        if nid not in self.layout.live_ids():
            raise ChangeFailed(f"node {nid} is not one of this cluster's nodes (they are "
                               f"{', '.join(map(str, self.layout.live_ids()))})")
        if len(self.layout.live_ids()) == 1:
            raise ChangeFailed(f"node {nid} is the only node left")
        await self._change("remove", nid)
        self.layout.removed.add(nid)
        self.layout.save(self.data_dir)
        node = next((n for n in self.nodes if n.id == nid), None)
        if node is not None:
            node.stopping = True
            await stop_all([node])
            self.nodes.remove(node)
        self.say(f"node {nid} removed and stopped")
        return format_table(self.nodes, await poll_all(self.nodes))

    async def _change(self, op, nid, url=None):
        """RAFT.NODE ADD/REMOVE at the leader, following MOVED and retrying
        while there is no leader, a change is in progress or the outcome of
        an attempt is unknown.  A retry told the change is already done
        (the earlier attempt committed) counts as done."""
        args = ["RAFT.NODE", op.upper(), str(nid)] + ([url] if url else [])
        done_already = "already a member" if op == "add" else "is not a member"
        deadline = time.monotonic() + CHANGE_WAIT
        target, unknown, last = None, False, "no node answered"
        while time.monotonic() < deadline and not self.stop.is_set():
            if target is None:
                infos = await poll_all(self.nodes)
                leader = find_leader(infos)
                target = parse_address(next(
                    (n.spec.client for n in self.nodes if n.id == leader), self.nodes[0].spec.client))
            try:
                reply = await resp_call(target.host, target.port, *args, timeout=CHANGE_WAIT)
            except (OSError, asyncio.TimeoutError, ValueError) as e:
                unknown, last, target = True, f"no answer from {target}: {e or 'timed out'}", None
                await asyncio.sleep(0.2)
                continue
            if not isinstance(reply, loadgen.RespError):
                return
            last = str(reply)
            kind = reply.kind
            if kind == "MOVED":
                target = parse_address("tcp://" + reply.split()[-1])
                continue
            if kind == "ERR":
                if unknown and done_already in reply:
                    return
                raise ChangeFailed(f"RAFT.NODE {op.upper()} {nid}: {reply}")
            if kind == "TIMEOUT":
                unknown = True
            # CLUSTERDOWN, TRYAGAIN, TIMEOUT, NOTLEADER: ask whoever leads next.
            target = None
            await asyncio.sleep(0.2)
        raise ChangeFailed(f"RAFT.NODE {op.upper()} {nid}: gave up after {CHANGE_WAIT:g} s "
                           f"({last})" + ("; its outcome unknown" if unknown else ""))

    async def _until_voter(self, nid):
        """INFO of the nodes once the leader lists nid among its voters, or None."""
        deadline = time.monotonic() + CHANGE_WAIT
        while time.monotonic() < deadline and not self.stop.is_set():
            infos = await poll_all(self.nodes)
            leader = find_leader(infos)
            if leader is not None and str(nid) in infos[leader].get("raft_voters", "").split(","):
                return infos
            await asyncio.sleep(0.1)
        return None


# ---- the add and remove commands -------------------------------------------------

def build_control_parser():
    p = ArgumentParser(prog="python -m raftfast.cluster",
                       description="Grow or shrink a running local cluster.")
    sub = p.add_subparsers(dest="op", required=True, metavar="add|remove")
    a = sub.add_parser("add", help="start the next node and add it to the cluster",
                       description="Start the next node with --join, add it to the running "
                                   "cluster, wait until it votes, print its row.")
    a.add_argument("--data-dir", required=True, metavar="DIR",
                   help="the --data-dir of the running launcher")
    r = sub.add_parser("remove", help="remove a node from the cluster and stop it",
                       description="Remove node ID from the running cluster, stop its "
                                   "process, print the remaining nodes.")
    r.add_argument("id", type=_positive, metavar="ID", help="the node to remove")
    r.add_argument("--data-dir", required=True, metavar="DIR",
                   help="the --data-dir of the running launcher")
    for sp in (a, r):
        sp.error = p.error  # one-line usage errors, exit 2
    return p


def control_main(argv):
    """`add` / `remove`: one request to the launcher running on --data-dir."""
    parser = build_control_parser()
    ns = parser.parse_args(argv)
    data_dir = os.path.abspath(ns.data_dir)
    path = os.path.join(data_dir, CONTROL_SOCKET)
    req = {"op": ns.op} if ns.op == "add" else {"op": "remove", "id": ns.id}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            print(f"error: no launcher is running on {data_dir} (start one with "
                  f"`python -m raftfast.cluster --data-dir {data_dir}`)", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"error: cannot reach the launcher at {path}: {e}", file=sys.stderr)
            return 1
        s.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    try:
        answer = json.loads(data)
    except ValueError:
        print("error: the launcher closed the connection without an answer (stopped?)",
              file=sys.stderr)
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
                        ("base_port", layout.base_port)):
        if name in given and given[name] != value:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} {given[name]}: {data_dir} holds a cluster started with "
                         f"{flag} {value} (leave the flag out to restart it)")
    return layout


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("add", "remove"):
        return control_main(argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    temp = ns.data_dir is None
    data_dir = tempfile.mkdtemp(prefix="raftfast-") if temp else os.path.abspath(ns.data_dir)
    try:
        layout = Layout.from_ns(ns) if temp else recorded_layout(parser, argv, ns, data_dir)
        try:
            specs = plan(ns, data_dir, layout)
        except ConfigError as e:
            parser.error(str(e))
        os.makedirs(data_dir, exist_ok=True)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(Launcher(ns, specs, data_dir, layout).run())
    finally:
        if temp:
            shutil.rmtree(data_dir, ignore_errors=True)

