"""One measurement of a key-value snapshot (not a test, not a benchmark
suite): N keys of 16 bytes with 16-byte values, written by SnapshotWriter
step by step while a block of writes is applied between steps, as the node's
event loop would interleave them.  Prints the file size, the total time, and
the longest single step: the longest a client would wait behind the snapshot.

    python -m bench.snapshot_pause [--keys 1000000] [--step-keys 8192] [--dir /tmp]
"""
import argparse
import os
import tempfile
import time

from raftfast._kv import OP_SET, KVStore, encode_commands
from raftfast.runtime.snapshot import SnapshotWriter, load_snapshot


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--step-keys", type=int, default=8192)
    ap.add_argument("--writes-per-step", type=int, default=100)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    kv = KVStore()
    for lo in range(0, a.keys, 10_000):
        kv.apply(encode_commands([(OP_SET, [b"k%015d" % i, b"v%015d" % i])
                                  for i in range(lo, min(lo + 10_000, a.keys))]), False)
    writes = [encode_commands([(OP_SET, [b"k%015d" % ((s * 7919 + j) % a.keys), b"w" * 16])
                               for j in range(a.writes_per_step)]) for s in range(64)]
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = os.path.join(d, "snap")
        pauses = {"begin": 0.0, "write_step": 0.0, "sync": 0.0, "merge_step": 0.0, "apply": 0.0}
        t0 = time.perf_counter()
        w = SnapshotWriter(kv, path, a.keys, 1)
        pauses["begin"] = time.perf_counter() - t0
        steps = 0
        done = False
        while not done:
            phase = ("write_step" if not w.written else "sync" if not w.synced else "merge_step")
            t = time.perf_counter()
            done = w.step(a.step_keys)
            pauses[phase] = max(pauses[phase], time.perf_counter() - t)
            t = time.perf_counter()
            kv.apply(writes[steps % 64], False)
            pauses["apply"] = max(pauses["apply"], time.perf_counter() - t)
            steps += 1
        total = time.perf_counter() - t0
        size = os.path.getsize(path)
        t = time.perf_counter()
        loaded, meta = load_snapshot(path)
        load = time.perf_counter() - t
        assert len(loaded) == a.keys == meta.count
    print(f"keys {a.keys:,} (16-byte keys and values), {steps} steps of <= {a.step_keys} keys, "
          f"{a.writes_per_step} SETs applied between steps")
    print(f"snapshot size {size:,} bytes ({size / a.keys:.1f} per key)")
    print(f"total time (begin to merged back, fsync included) {total * 1000:.0f} ms")
    print("longest single step, ms: " + ", ".join(f"{k} {v * 1000:.2f}" for k, v in pauses.items()))
    print(f"load (verify + rebuild the store) {load * 1000:.0f} ms")


if __name__ == "__main__":
    main()
