"""Snapshots of a million keys in a running cluster, measured end to end
(not a test; prints figures for docs/bench/snapshot_catchup.txt):

1. three nodes (fsync always, unix peers) are loaded with N keys of 16
   bytes, 16-byte values, by pipelined SETs;
2. a probe client then SETs one key at a time, paced, and times each
   reply, while a few more entries make every node take its snapshot
   (--snapshot-entries is set just above the load): the longest reply
   during the snapshots against the longest before them is the pause
   clients see;
3. a fresh node is started with --join and added with RAFT.NODE ADD; the
   leader's log is compacted by then, so it gets the snapshot: time until
   it is a voter that applied everything the leader had committed.

    python -m bench.snapshot_catchup [--keys 1000000] [--dir /tmp]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)  # the repository root, for tests.support
from raftfast import resp_client  # noqa: E402
from raftfast.launcher.supervisor import NodeCommand, parse_ready, stop_processes  # noqa: E402
from raftfast.resp_client import Connection, encode_command, info_sync, parse_info  # noqa: E402
from tests.support.harness import free_ports  # noqa: E402  (the test harness's port probe)


class Node:
    def __init__(self, root, nid, client_port, ids, extra=()):
        self.id, self.client_port = nid, client_port
        self.log_path = os.path.join(root, f"node{nid}.log")
        argv = ["--id", str(nid), "--data-dir", os.path.join(root, f"node{nid}"),
                "--listen", f"unix://{root}/n{nid}.sock",
                "--client", f"tcp://127.0.0.1:{client_port}", "--fsync", "always"]
        argv += [a for j in ids if j != nid for a in ("--peer", f"{j}=unix://{root}/n{j}.sock")]
        with open(self.log_path, "ab") as logf:
            self.proc = NodeCommand.node(argv + list(extra)).start(stdout=subprocess.PIPE,
                                                                   stderr=logf, cwd=HERE)
        line = self.proc.stdout.readline()
        if parse_ready(line) is None:
            raise RuntimeError(f"node {nid} did not start: {line!r}")

    def conn(self):
        return Connection(f"127.0.0.1:{self.client_port}", timeout=60)

    def info(self, section="raft"):
        with self.conn() as c:
            return parse_info(c.call("INFO", section))

    def log_lines(self, pattern):
        with open(self.log_path, errors="replace") as f:
            return [ln for ln in f if re.search(pattern, ln)]

    def stop(self):
        stop_processes([self.proc], timeout=30)
        self.proc.stdout.close()


def leader_of(nodes, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = {n.id: info_sync(f"127.0.0.1:{n.client_port}") for n in nodes}
        lid = resp_client.leader_of(infos)
        if lid is not None:
            return next(n for n in nodes if n.id == lid)
        time.sleep(0.1)
    raise RuntimeError("no leader")


def load(leader, keys, conns=4, batch=2000):
    """Pipelined SETs of keys k%015d -> v%015d over a few connections."""
    cs = [leader.conn() for _ in range(conns)]
    t0 = time.monotonic()
    for lo in range(0, keys, batch * conns):
        for i, c in enumerate(cs):
            a = lo + i * batch
            b = min(a + batch, keys)
            if a < b:
                c.send_raw(b"".join(encode_command("SET", b"k%015d" % k, b"v%015d" % k)
                                    for k in range(a, b)))
        for i, c in enumerate(cs):
            a = lo + i * batch
            for _ in range(max(0, min(a + batch, keys) - a)):
                r = c.reply()
                if r != "OK":
                    raise RuntimeError(f"SET answered {r!r}")
    return time.monotonic() - t0


PROBES = (("PING", lambda i: ("PING",), "PONG"),
          ("GET", lambda i: ("GET", b"k%015d" % (i % 1000)), None),
          ("SET", lambda i: ("SET", b"probe%011d" % (i % 1000), b"p%015d" % i), "OK"))


def probe(leader, nodes, seconds_after, pace_s=0.002):
    """PING, GET and SET, one at a time, until every node took its
    snapshot and `seconds_after` more passed: (kind, start, end) per
    reply.  PING shows the leader's event loop alone; GET adds a
    heartbeat round (ReadIndex); SET adds the commit (fsync on a majority)."""
    c = leader.conn()
    samples = []
    done_at = None
    i = 0
    while True:
        i += 1
        for kind, args, want in PROBES:
            t = time.monotonic()
            r = c.call(*args(i))
            end = time.monotonic()
            if want is not None and r != want:
                raise RuntimeError(f"probe {kind} answered {r!r}")
            samples.append((kind, t, end))
        if done_at is None and all(n.log_lines(r"snapshot at index \d+ .* taken") for n in nodes):
            done_at = end
        if done_at is not None and end - done_at > seconds_after:
            return samples
        time.sleep(max(0.0, pace_s - (time.monotonic() - end)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--trailing", type=int, default=1000, help="--snapshot-trailing")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="rfsnap", dir=a.dir)
    nodes = []
    try:
        ports = free_ports(4)
        # The snapshot comes once every node applied a little more than the load.
        extra = ("--snapshot-entries", str(a.keys + 200), "--snapshot-trailing", str(a.trailing))
        nodes = [Node(root, i, ports[i - 1], [1, 2, 3], extra) for i in (1, 2, 3)]
        leader = leader_of(nodes)
        took = load(leader, a.keys)
        print(f"loaded {a.keys:,} keys (16-byte keys and values) in {took:.1f} s "
              f"({a.keys / took:,.0f} SET/s, pipelined)")
        t_probe = time.monotonic()
        samples = probe(leader, nodes, seconds_after=1.0)
        taken = {}
        for n in nodes:
            line = n.log_lines(r"snapshot at index \d+ .* taken")[0]
            m = re.search(r"index (\d+) .* (\d+) keys, (\d+) bytes\) taken in (\d+) ms", line)
            taken[n.id] = tuple(int(x) for x in m.groups())
        for nid, (index, nkeys, nbytes, ms) in sorted(taken.items()):
            print(f"node {nid}: snapshot at index {index:,}: {nkeys:,} keys, {nbytes:,} bytes, "
                  f"taken in {ms} ms (freeze to fsynced, writing from the event loop)")
        # The window in which some node was taking its snapshot: from the
        # first probe after the load until every log said "taken"; then
        # the second after it, for comparison.
        end_all = samples[-1][2] - 1.0
        ms = lambda x: f"{1000 * x:7.2f} ms"  # noqa: E731
        print(f"probes on the leader, one at a time: {end_all - t_probe:.2f} s while the "
              f"snapshots were taken, then 1 s after")
        for kind, _, _ in PROBES:
            during = [e - t for k, t, e in samples if k == kind and t <= end_all]
            after = [e - t for k, t, e in samples if k == kind and t > end_all]
            print(f"  {kind:4}  during ({len(during):4}): median {ms(statistics.median(during))}, "
                  f"max {ms(max(during))}   after ({len(after):4}): median "
                  f"{ms(statistics.median(after))}, max {ms(max(after))}")
        # A fresh node joins; the leader's log no longer reaches back to 1.
        info = leader.info()
        print(f"leader: first log index {int(info['raft_first_log_index']):,}, "
              f"snapshot index {int(info['raft_snapshot_index']):,}, "
              f"commit {int(info['raft_commit_index']):,}")
        fresh = Node(root, 4, ports[3], [1, 2, 3, 4], ("--join",))
        nodes.append(fresh)
        target = int(info["raft_commit_index"])
        t0 = time.monotonic()
        reply = leader.conn().call("RAFT.NODE", "ADD", 4, f"unix://{root}/n4.sock")
        if reply != "OK":
            raise RuntimeError(f"RAFT.NODE ADD answered {reply!r}")
        t_added = time.monotonic() - t0
        fc = fresh.conn()
        while True:
            fi = parse_info(fc.call("INFO", "raft"))
            if "4" in fi["raft_voters"].split(",") and int(fi["raft_last_applied"]) >= target:
                break
            time.sleep(0.01)
        t_done = time.monotonic() - t0
        st = parse_info(fc.call("INFO", "stats"))
        db0 = parse_info(fc.call("INFO", "keyspace"))["db0"]
        print(f"fresh node 4: ADD answered in {t_added:.2f} s; a voter that applied "
              f"everything through {target:,} after {t_done:.2f} s "
              f"({int(st['raftfast_snapshot_bytes_received']):,} snapshot bytes received, "
              f"{st['raftfast_snapshots_installed']} installed, "
              f"{int(db0.split('keys=')[1].split(',')[0]):,} keys)")
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
