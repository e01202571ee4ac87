"""Node processes: how one is started (command line, environment, the
child's setup between fork and exec), what its ready line says, and how
it is watched and stopped.

Everything that starts nodes goes through NodeCommand: the launcher,
LocalCluster and the benchmarks with asyncio (spawn, Node, stop_all), the
test harness and scripts with subprocess (NodeCommand.start,
stop_processes).  So a node started either way runs the same module with
the same environment and the same child setup:

- No node outlives whoever started it: a node gets PR_SET_PDEATHSIG=SIGTERM,
  so the kernel stops it even when its parent is SIGKILLed, without any
  help from the node's code.
- Each node runs in its own process group, so a Ctrl-C at the terminal
  reaches only the parent, which then stops the nodes in order (SIGTERM,
  wait, SIGKILL stragglers) instead of racing them.
- The node prints `ready id=I listen=URL client=URL` once it serves;
  parse_ready reads it.
"""
import asyncio
import collections
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import NamedTuple

import raftfast

NODE_MODULE_ENV = "RAFTFAST_NODE_MODULE"
DEFAULT_NODE_MODULE = "raftfast.node"
STOP_WAIT = 10.0     # for a node to stop on SIGTERM before it is killed
LEADER_WAIT = 30.0   # for started nodes to be ready and elect a leader
LOG_LINES = 40
PR_SET_PDEATHSIG = 1
READY_RE = re.compile(r"^ready id=(\d+) listen=(\S+) client=(\S+)\s*$")

# The directory raftfast is imported from: nodes import the same code as
# their parent, installed or not.
_IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(raftfast.__file__)))


def node_module():
    """The module a node runs: raftfast.node, or the stand-in that
    $RAFTFAST_NODE_MODULE names (the launcher's tests swap one in)."""
    return os.environ.get(NODE_MODULE_ENV, DEFAULT_NODE_MODULE)


class Ready(NamedTuple):
    id: int
    listen: str
    client: str


def parse_ready(line):
    """The node's ready line (str or bytes) as a Ready, or None if it is not one."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    m = READY_RE.match(line.rstrip())
    return Ready(int(m[1]), m[2], m[3]) if m else None


def node_env(extra=None):
    """A node's environment: ours, with `extra` (a dict) on top."""
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"  # the ready line must not wait in a buffer
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_IMPORT_ROOT, env.get("PYTHONPATH")) if p)
    return env


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def child_setup():
    """preexec_fn for a node: runs in the child between fork and exec.

    The kernel sends the parent-death signal when the *thread* that forked
    exits, not the process: a node started from another thread (a test's
    fault injector restarting it) would be stopped as soon as that thread
    ends, so only a node started from the main thread gets it."""
    parent_pid = os.getpid()
    die_with_parent = threading.current_thread() is threading.main_thread()

    def setup():
        os.setpgid(0, 0)  # out of the terminal's foreground group: Ctrl-C is the parent's to relay
        if die_with_parent and _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died before prctl took effect.
        if os.getppid() != parent_pid:
            os._exit(1)
    return setup


class NodeCommand:
    """One node process to start: its command line and what its environment
    adds to ours.  start() starts it with subprocess, start_async() with
    asyncio; both with node_env(), stdin from /dev/null, its own process
    group and (from the main thread) child_setup()."""

    def __init__(self, line, env=None):
        self.line = list(line)
        self.env = dict(env or {})

    @classmethod
    def node(cls, argv, env=None, module=None, prefix=()):
        """`python -m <module> argv...` (module: node_module()), run under
        the command `prefix` when one is given (e.g. nsenter)."""
        return cls([*prefix, sys.executable, "-m", module or node_module(), *argv], env)

    def start(self, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen_kwargs):
        """A subprocess.Popen."""
        if threading.current_thread() is threading.main_thread():
            setup = dict(preexec_fn=child_setup())
        else:
            # No parent-death signal from another thread (see child_setup), and
            # no Python code between fork and exec either, which is not safe
            # while other threads run: the process group alone, set in C.
            setup = dict(process_group=0)
        return subprocess.Popen(self.line, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=stderr, env=node_env(self.env), **setup, **popen_kwargs)

    async def start_async(self, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
        """An asyncio.subprocess.Process."""
        return await asyncio.create_subprocess_exec(
            *self.line, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            env=node_env(self.env), preexec_fn=child_setup())


def stop_processes(procs, timeout=STOP_WAIT):
    """SIGTERM every live subprocess.Popen, wait up to `timeout` for them
    all, SIGKILL stragglers; their exit codes, in order."""
    for p in procs:
        if p.poll() is None:
            _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            _signal(p, signal.SIGKILL)
            codes.append(p.wait())
    return codes


def _signal(proc, sig):
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


# ---- asyncio -------------------------------------------------------------------------

class Node:
    """One running node process and what it printed: every line goes to its
    log file, the last LOG_LINES are kept to explain a failure, and `ready`
    resolves with its Ready line.  `spec` is what it was started from (its
    id, client URL, command line)."""

    def __init__(self, spec, proc, log_path):
        self.spec = spec
        self.proc = proc
        self.lines = collections.deque(maxlen=LOG_LINES)
        self.ready = asyncio.get_running_loop().create_future()
        # Unbuffered: the log must be complete even if the parent is killed.
        self.log = open(log_path, "ab", buffering=0)
        self.readers = [asyncio.create_task(self._read(proc.stdout, True)),
                        asyncio.create_task(self._read(proc.stderr, False))]
        self.exited = asyncio.create_task(proc.wait())
        self.stopping = False  # stopped on purpose (a removed node): not a failure

    @property
    def id(self):
        return self.spec.id

    @property
    def alive(self):
        return self.proc.returncode is None

    async def _read(self, stream, is_stdout):
        # Always drain both pipes: a full pipe would block the node.
        while line := await stream.readline():
            self.log.write(line)
            text = line.decode("utf-8", "replace").rstrip()
            self.lines.append(text)
            if is_stdout and not self.ready.done() and (ready := parse_ready(text)):
                self.ready.set_result(ready)

    def last_lines(self):
        return ("\n".join(f"  node{self.id}| {t}" for t in self.lines)
                or f"  node{self.id}| (no output)")

    async def close_log(self):
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.log.close()


async def spawn(spec, log_path, env=None, module=None):
    """Start the node `spec` describes (its .id, .argv and .data_dir, which
    is created first when set); `env` (a dict) is added to its environment."""
    if spec.data_dir:
        os.makedirs(spec.data_dir, exist_ok=True)
    proc = await NodeCommand.node(spec.argv, env, module).start_async()
    return Node(spec, proc, log_path)


async def stop_all(nodes, timeout=STOP_WAIT):
    """SIGTERM every live node, wait, SIGKILL stragglers."""
    live = [n for n in nodes if n.alive]
    for n in live:
        _signal(n.proc, signal.SIGTERM)
    if live:
        # Fresh waits: a node's `exited` task may have been cancelled along
        # with whoever awaited it.
        await asyncio.wait([asyncio.ensure_future(n.proc.wait()) for n in live],
                           timeout=timeout)
    for n in live:
        if n.alive:
            print(f"node {n.id} (pid {n.proc.pid}) did not stop in {timeout:g} s: killing it",
                  file=sys.stderr)
            _signal(n.proc, signal.SIGKILL)
    await asyncio.gather(*(n.proc.wait() for n in nodes), return_exceptions=True)
    for n in nodes:
        await n.close_log()


STOPPED = "stopped"
TIMEOUT = "timeout"


async def until(nodes, check, deadline, stop=None, interval=0.1):
    """Await check() until it returns something other than None, a node
    exits, `stop` (an asyncio.Event) is set, or time.monotonic() passes
    `deadline`.  Returns check()'s result, the list of exited nodes,
    STOPPED or TIMEOUT."""
    while True:
        dead = [n for n in nodes if not n.alive]
        if dead:
            return dead
        if stop is not None and stop.is_set():
            return STOPPED
        result = await check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            return TIMEOUT
        if stop is None:
            await asyncio.sleep(interval)
            continue
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass
