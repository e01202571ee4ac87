"""Rolling restarts in tests: a writer that records what was acknowledged,
and a node restarted in place (a leader hands over first), waited for
until it caught up."""
import re
import threading
import time

import redis

__all__ = ["Writer", "wait_caught_up", "replace_node", "check_every_acked_write"]


class Writer(threading.Thread):
    """SET w<i> = <i>, one at a time, following MOVED across nodes; every
    write answered +OK is acknowledged.  An error or a lost connection
    leaves that write's fate unknown, and it is not retried."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.acked = []
        self.acked_at = []      # time.monotonic() of each acknowledgement
        self.errors = 0
        self.halt = threading.Event()
        self.target = cluster.ids[0]

    def run(self):
        i = 0
        conns = {}
        while not self.halt.is_set():
            i += 1
            node = self.cluster.nodes[self.target]
            try:
                c = conns.get(self.target)
                if c is None:
                    c = conns[self.target] = redis.Redis(host="127.0.0.1", port=node.client_port,
                                                         socket_timeout=3)
                c.set(f"w{i}", str(i))
                self.acked.append(i)
                self.acked_at.append(time.monotonic())
            except redis.ResponseError as e:
                # redis-py raises MOVED as its own class, whose text is "0 host:port".
                m = re.search(r"127\.0\.0\.1:(\d+)", str(e))
                if m:
                    port = int(m.group(1))
                    self.target = next(j for j, p in self.cluster.client_ports.items()
                                       if p == port)
                else:
                    # No leader known here (a node just restarted, or one
                    # that just handed over): ask the next node, as a client
                    # that follows the leader would.
                    self.errors += 1
                    self.target = self.cluster.ids[(self.cluster.ids.index(self.target) + 1)
                                                   % len(self.cluster.ids)]
                    self.halt.wait(0.02)
            except (redis.ConnectionError, redis.TimeoutError):
                conns.pop(self.target, None)
                self.target = self.cluster.ids[i % len(self.cluster.ids)]
                self.halt.wait(0.02)

    def stop(self):
        self.halt.set()
        if self.is_alive():
            self.join(timeout=30)

    def longest_gap(self, since=0.0):
        """The longest time between two acknowledgements after `since`
        (time.monotonic()), in seconds: how long writes were unavailable."""
        times = [t for t in self.acked_at if t >= since]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def wait_caught_up(cluster, node_id, timeout=30):
    """node_id applied everything the leader had committed when asked."""
    lid = cluster.wait_leader(timeout=timeout)
    commit = int(cluster.nodes[lid].info()["raft_commit_index"])
    cluster.wait_applied(commit, ids=[node_id], timeout=timeout)


def replace_node(cluster, node_id, new):
    """Stop node_id (SIGTERM, a clean stop), start `new(old NodeProc)` (a
    NodeProc for the same id and data dir, e.g. with other flags or another
    release) in its place, wait until it caught up.  A leader hands over
    first."""
    lid = cluster.wait_leader()
    if lid == node_id:
        other = next(i for i in cluster.ids if i != node_id)
        assert cluster.nodes[node_id].raw("RAFT.TRANSFER_LEADER", str(other)) == b"+OK"
    old = cluster.nodes[node_id]
    assert old.kill(15) == 0
    node = new(old)
    cluster.nodes[node_id] = node
    node.start()
    wait_caught_up(cluster, node_id)


def check_every_acked_write(cluster, writer):
    lid = cluster.wait_leader()
    c = cluster.nodes[lid].client()
    values = c.mget([f"w{i}" for i in writer.acked])
    lost = [i for i, v in zip(writer.acked, values) if v != str(i).encode()]
    assert not lost, f"{len(lost)} acknowledged writes lost, first {lost[:5]}"
