"""System calls by kind, counted with `strace -c -f -p PID` on running nodes.

One strace per node attaches (every thread: -f) for the measured window
and writes its summary to a file when interrupted; parse_summary() reads
that table.  strace stops every thread at every system call, so a traced
node is several times slower: the counts per SET or per batch hold, the
speed of a traced run does not.
"""
import asyncio
import os
import shutil
import signal
import tempfile

__all__ = ["SLOWDOWN_NOTE", "strace_path", "parse_summary", "Tracer"]

SLOWDOWN_NOTE = ("system calls counted with strace -c -f, which stops every node thread "
                 "at each call: the throughput and latency of this run are not speed "
                 "figures")
ATTACH_TIMEOUT = 10.0


def strace_path():
    """The strace executable, or None when it is not installed."""
    return shutil.which("strace")


def parse_summary(text):
    """strace -c's table as {syscall: calls}; the total line, headers and
    anything unparsable are skipped."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) < 5 or parts[-1] == "total":
            continue
        try:
            float(parts[0])
            calls = int(parts[3])
        except ValueError:
            continue
        out[parts[-1]] = out.get(parts[-1], 0) + calls
    return out


class Tracer:
    """strace -c on every pid of {node id: pid} between start() and stop()."""

    def __init__(self, pids, strace="strace"):
        self.pids = pids
        self.strace = strace
        self.dir = None
        self.procs = {}

    async def start(self):
        """Attach to every node; returns once strace says each is attached."""
        self.dir = tempfile.mkdtemp(prefix="raftfast-strace-")
        for i, pid in self.pids.items():
            self.procs[i] = await asyncio.create_subprocess_exec(
                self.strace, "-c", "-f", "-p", str(pid), "-o", self._out(i),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        for i, proc in self.procs.items():
            await asyncio.wait_for(self._attached(i, proc), ATTACH_TIMEOUT)

    async def _attached(self, i, proc):
        while True:
            line = await proc.stderr.readline()
            if not line:
                raise RuntimeError(f"strace on node {i} exited: "
                                   f"attaching to pid {self.pids[i]} failed")
            if b"attached" in line:
                return

    def _out(self, i):
        return os.path.join(self.dir, f"node{i}.txt")

    async def stop(self):
        """Detach (SIGINT) and return {node id: {syscall: calls}}."""
        out = {}
        try:
            for proc in self.procs.values():
                if proc.returncode is None:
                    proc.send_signal(signal.SIGINT)
            for i, proc in self.procs.items():
                # Its stderr must keep draining, or strace could block on it.
                await asyncio.wait_for(proc.communicate(), ATTACH_TIMEOUT)
                try:
                    with open(self._out(i)) as f:
                        out[i] = parse_summary(f.read())
                except OSError:
                    out[i] = {}
        finally:
            self.close()
        return out

    def close(self):
        for proc in self.procs.values():
            if proc.returncode is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
        self.procs = {}
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
