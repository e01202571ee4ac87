"""One node of the library comparison: raftfast's Node or PySyncObj's
SyncObj, replicating a Python counter or dict; the node that leads drives
the load itself, from its own process, and prints the result.

    python -m raftfast.bench.library_node --system raftfast|pysyncobj
        --machine counter|dict --id I --nodes N --dir DIR --base-port B
        --seconds S --callers C [--fsync always|never] [PySyncObj settings]

Every process prints `ready id=I`; the leader, once the load ran, prints
one JSON line {"ops": ..., "seconds": ..., "latencies_us": [p50, p90, p99]}.
A caller is a chain of calls: the next one leaves when the last returned,
so C callers keep C calls in flight.  SIGTERM stops a node.
"""
import asyncio
import json
import os
import signal
import sys
import threading
import time

from raftfast.config import ArgumentParser

VALUE = b"v" * 64
KEYS = 10_000


def latencies(samples):
    samples.sort()
    n = len(samples)
    return [round(samples[min(n - 1, int(q * n))] * 1e6, 1) for q in (0.5, 0.9, 0.99)]


# ------------------------------------------------------------------ raftfast

async def run_raftfast(ns):
    import raftfast
    machine = raftfast.ReplCounter() if ns.machine == "counter" else raftfast.ReplDict()
    peers = {j: f"unix://{ns.dir}/p{j}.sock" for j in range(1, ns.nodes + 1)}
    node = raftfast.Node(machine, id=ns.id, data_dir=f"{ns.dir}/d{ns.id}", listen=peers.pop(ns.id),
                         peers=peers, fsync=ns.fsync, log_level="warning")
    await node.start()
    print(f"ready id={ns.id}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not node.leader_id and not stop.is_set():
        await asyncio.sleep(0.01)  # an election takes a second or so; nothing to wait on
    if node.is_leader:
        if ns.machine == "counter":
            def call(k):
                return machine.add(1)
        else:
            def call(k):
                return machine.set(k % KEYS, VALUE)
        samples = []
        deadline = time.perf_counter() + ns.seconds

        async def caller(c):
            k = c
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                await call(k)
                samples.append(time.perf_counter() - t0)
                k += ns.callers

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(c) for c in range(ns.callers)))
        elapsed = time.perf_counter() - t0
        print(json.dumps({"ops": len(samples), "seconds": elapsed,
                          "latencies_us": latencies(samples)}), flush=True)
    await stop.wait()
    await node.stop()


# ----------------------------------------------------------------- PySyncObj

def run_pysyncobj(ns):
    from pysyncobj import SyncObj, SyncObjConf
    from pysyncobj.batteries import ReplCounter, ReplDict

    from raftfast.bench import pysyncobj_tuning
    machine = ReplCounter() if ns.machine == "counter" else ReplDict()
    port = ns.base_port + 100
    me = f"127.0.0.1:{port + ns.id}"
    others = [f"127.0.0.1:{port + j}" for j in range(1, ns.nodes + 1) if j != ns.id]
    conf = SyncObjConf(**pysyncobj_tuning.conf_kwargs(ns), autoTickPeriod=ns.auto_tick_period)
    obj = SyncObj(me, others, conf=conf, consumers=[machine])
    print(f"ready id={ns.id}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while obj._getLeader() is None and not stop.is_set():
        time.sleep(0.01)
    if obj._isLeader():
        samples, done = [], threading.Event()
        deadline = time.perf_counter() + ns.seconds
        active = [ns.callers]
        lock = threading.Lock()

        def start(c, k):
            t0 = time.perf_counter()

            def returned(result, error):
                samples.append(time.perf_counter() - t0)
                if time.perf_counter() < deadline:
                    start(c, k + ns.callers)
                else:
                    with lock:
                        active[0] -= 1
                        if not active[0]:
                            done.set()
            if ns.machine == "counter":
                machine.add(1, callback=returned)
            else:
                machine.set(k % KEYS, VALUE, callback=returned)

        t0 = time.perf_counter()
        for c in range(ns.callers):
            start(c, c)
        done.wait(ns.seconds + 30)
        elapsed = time.perf_counter() - t0
        print(json.dumps({"ops": len(samples), "seconds": elapsed,
                          "latencies_us": latencies(samples)}), flush=True)
    stop.wait()
    obj.destroy()


def main(argv=None):
    p = ArgumentParser(prog="python -m raftfast.bench.library_node")
    p.add_argument("--system", choices=("raftfast", "pysyncobj"), required=True)
    p.add_argument("--machine", choices=("counter", "dict"), required=True)
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--dir", required=True)
    p.add_argument("--base-port", type=int, default=7000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--callers", type=int, default=64)
    p.add_argument("--fsync", choices=("always", "never"), default="always")
    from raftfast.bench import pysyncobj_tuning
    pysyncobj_tuning.add_arguments(p)
    # Calls from outside PySyncObj's tick thread wait for its next tick;
    # calls from a callback (as here) too: the tick period bounds latency.
    p.add_argument("--auto-tick-period", type=float, default=0.05, metavar="S",
                   help="SyncObjConf autoTickPeriod (PySyncObj's default: 0.05)")
    ns = p.parse_args(argv)
    os.umask(0o077)
    if ns.system == "raftfast":
        import uvloop
        uvloop.run(run_raftfast(ns))
    else:
        run_pysyncobj(ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
