"""The least a Python server on uvloop costs per SET on this machine.

A process that does only what any node's front door must do for a SET,
with nothing behind it: uvloop wakes it, the compiled RESP parser splits
the requests, each one's key and value go into a dict, and one write
answers `+OK` for the requests of that read.  No log, no fsync, no peers.
The same `redis-benchmark -t set` loads as the targets drive it, and the
process's CPU per SET (user and kernel, from /proc) is printed for each,
beside `redis-server` with `appendonly no` (the same work done in C) when
one is installed.  Every raftfast node runs this loop and more, so what it
costs is a floor under every node's CPU per SET; the docs set it against
the targets (docs/benchmarks.md, "Why the missed targets stop there").

    python -m bench.python_server_floor [--requests N] [--value-size B] [--port PORT]
"""
import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from raftfast.bench.stats import proc_cpu_times

LOADS = (("-P", "16", "-c", "50"), ("-P", "1", "-c", "50"), ("-P", "1", "-c", "1"))
OK = b"+OK\r\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _SetServer(asyncio.Protocol):
    def __init__(self, store):
        from raftfast._resp import RespParser
        self.parser = RespParser()
        self.store = store

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed(data)
        requests = self.parser.parse()
        for req in requests:
            if len(req) == 3:
                self.store[req[1]] = req[2]
        if requests:
            self.transport.write(OK * len(requests))


def serve(port):
    import uvloop
    store = {}

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _SetServer(store), "127.0.0.1", port)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        print("ready", flush=True)
        await stop
        server.close()

    uvloop.run(main())


def _wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def measure(pid, port, load, requests, value_size):
    """SET/s and the process's user and kernel µs per SET under one load."""
    bench = ["redis-benchmark", "-p", str(port), "-t", "set", "-r", "1000000", "-q",
             "-d", str(value_size), *load]
    subprocess.run(bench + ["-n", "2000"], check=True, capture_output=True)  # warm-up
    u0, s0 = proc_cpu_times(pid)
    t0 = time.monotonic()
    subprocess.run(bench + ["-n", str(requests)], check=True, capture_output=True)
    seconds = time.monotonic() - t0
    u1, s1 = proc_cpu_times(pid)
    return requests / seconds, (u1 - u0) * 1e6 / requests, (s1 - s0) * 1e6 / requests


def _run(name, argv, port, requests, value_size):
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        _wait_port(port)
        for load in LOADS:
            n = requests if load[1] == "16" else requests // (1 if load[3] == "50" else 10)
            rate, user, kernel = measure(proc.pid, port, load, n, value_size)
            print(f"{name:28} {' '.join(load):12} {rate:>10,.0f} SET/s  "
                  f"user {user:6.1f} us  kernel {kernel:6.1f} us  total {user + kernel:6.1f} us")
    finally:
        proc.terminate()
        proc.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--value-size", type=int, default=64, help="SET value bytes")
    ap.add_argument("--port", type=int, default=7390)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns.serve:
        serve(ns.port)
        return 0
    if not shutil.which("redis-benchmark"):
        print("redis-benchmark is not installed", file=sys.stderr)
        return 1
    _run("python + uvloop, no fsync",
         [sys.executable, "-m", "bench.python_server_floor", "--serve", "--port", str(ns.port)],
         ns.port, ns.requests, ns.value_size)
    if shutil.which("redis-server"):
        with tempfile.TemporaryDirectory() as d:
            _run("redis-server, appendonly no",
                 ["redis-server", "--port", str(ns.port + 1), "--save", "", "--appendonly",
                  "no", "--dir", d], ns.port + 1, ns.requests, ns.value_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
