"""`python -m raftfast.cluster`: run a local cluster, one process per node.

    python -m raftfast.cluster --nodes 5 [--transport unix|tcp] [--base-port 7000]
        [--data-dir DIR] [node tunables] [--bench SECONDS]

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
import os
import re
import shutil
import signal
import sys
import tempfile
import time

import uvloop

from . import loadgen
from .address import AddressError, parse_address
from .config import (ArgumentParser, Config, ConfigError, _int_at_least, add_node_arguments,
                     tunable_argv)

# Tests swap in a stand-in node; everything else runs the real one.
NODE_MODULE = os.environ.get("RAFTFAST_NODE_MODULE", "raftfast.node")
LEADER_WAIT = 30.0
STOP_WAIT = 10.0
LOG_LINES = 40
PR_SET_PDEATHSIG = 1
READY_RE = re.compile(r"^ready id=(\d+) listen=(\S+) client=(\S+)\s*$")


def build_parser():
    p = ArgumentParser(
        prog="python -m raftfast.cluster",
        description="Run a local raftfast cluster, one process per node, until Ctrl-C.")
    p.add_argument("--nodes", type=_positive, default=3, metavar="N",
                   help="number of nodes (default: 3)")
    p.add_argument("--transport", choices=("unix", "tcp"), default="unix",
                   help="peer traffic: unix sockets in the data dir, or tcp on "
                        "127.0.0.1:<base-port + 100 + i> (default: unix)")
    p.add_argument("--base-port", type=_positive, default=7000, metavar="PORT",
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


def plan(ns, data_dir):
    """Every node's addresses and command line; raises ConfigError for a
    combination no node could run with."""
    data_dir = os.path.abspath(data_dir)
    n, base = ns.nodes, ns.base_port
    top = base + (100 if ns.transport == "tcp" else 0) + n
    if top > 65535:
        raise ConfigError(f"--base-port {base} with --nodes {n} needs ports up to {top}, "
                          "past 65535")
    if ns.transport == "tcp" and n >= 100:
        raise ConfigError("--transport tcp supports up to 99 nodes (peer ports are "
                          "client ports + 100)")
    listen = {}
    for i in range(1, n + 1):
        listen[i] = (f"unix://{data_dir}/node{i}/raft.sock" if ns.transport == "unix"
                     else f"tcp://127.0.0.1:{base + 100 + i}")
        try:
            parse_address(listen[i])
        except AddressError as e:
            raise ConfigError(f"--data-dir: {e}; use a shorter --data-dir or "
                              "--transport tcp") from None
    tunables = tunable_argv(ns)
    specs = []
    for i in range(1, n + 1):
        ddir = os.path.join(data_dir, f"node{i}")
        client = f"tcp://127.0.0.1:{base + i}"
        argv = ["--id", str(i), "--data-dir", ddir, "--listen", listen[i], "--client", client]
        for j in range(1, n + 1):
            if j != i:
                argv += ["--peer", f"{j}={listen[j]}"]
        specs.append(NodeSpec(i, ddir, listen[i], client, argv + tunables))
    # Check the tunables the way every node will, before starting any.
    first = specs[0]
    Config.from_args(_Namespace(ns, node_id=1, data_dir=first.data_dir, listen=first.listen,
                                client=first.client)).validate()
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
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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

class Launcher:
    def __init__(self, ns, specs, data_dir):
        self.ns = ns
        self.specs = specs
        self.data_dir = data_dir
        self.nodes = []
        self.stop = asyncio.Event()
        self.tty = sys.stdout.isatty()
        self.status_shown = False

    def say(self, text, err=False):
        if self.status_shown:  # end the status line first
            sys.stdout.write("\r\x1b[K")
            self.status_shown = False
        print(text, file=sys.stderr if err else sys.stdout, flush=True)

    async def run(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            return await self._run()
        finally:
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
        watchers = [asyncio.create_task(self._watch(n)) for n in self.nodes]
        try:
            if self.ns.bench:
                return await self._bench(leader_infos)
            await self._serve()
            return 0
        finally:
            for w in watchers:
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
        if not self.stop.is_set():
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


def main(argv=None):
    parser = build_parser()
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    temp = ns.data_dir is None
    data_dir = tempfile.mkdtemp(prefix="raftfast-") if temp else os.path.abspath(ns.data_dir)
    try:
        try:
            specs = plan(ns, data_dir)
        except ConfigError as e:
            parser.error(str(e))
        os.makedirs(data_dir, exist_ok=True)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(Launcher(ns, specs, data_dir).run())
    finally:
        if temp:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
