"""--metrics on real node processes: what a Prometheus scrape of each node
shows, that it agrees with INFO, and that nothing a stranger sends to the
metrics port hurts the node."""
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftfast.metrics.endpoint import MAX_CONNECTIONS, MAX_REQUEST_BYTES
from tests.support.harness import Cluster, free_ports
from tests.support.wait import until

pytestmark = pytest.mark.multiprocess

DEADLINE = 30.0  # liveness bound for waits, not a timing assertion

# Every family the contract lists (and a few more), with its type.
FAMILIES = {
    "raftfast_node": "gauge", "raftfast_role": "gauge", "raftfast_term": "gauge",
    "raftfast_leader_id": "gauge", "raftfast_commit_index": "gauge",
    "raftfast_applied_index": "gauge", "raftfast_last_log_index": "gauge",
    "raftfast_snapshot_index": "gauge",
    "raftfast_follower_match_index": "gauge", "raftfast_follower_lag_entries": "gauge",
    "raftfast_follower_state": "gauge",
    "raftfast_elections_started": "counter", "raftfast_leader_changes": "counter",
    "raftfast_proposals": "counter", "raftfast_entries_proposed": "counter",
    "raftfast_entries_replicated": "counter", "raftfast_appends_sent": "counter",
    "raftfast_peer_bytes_sent": "counter", "raftfast_entries_written": "counter",
    "raftfast_entries_applied": "counter", "raftfast_fsyncs": "counter",
    "raftfast_fsync_duration_seconds": "histogram",
    "raftfast_commit_latency_seconds": "histogram", "raftfast_reads_served": "counter",
    "raftfast_snapshots_taken": "counter", "raftfast_snapshots_sent": "counter",
    "raftfast_snapshots_installed": "counter", "raftfast_snapshot_bytes_sent": "counter",
    "raftfast_client_connections": "gauge", "raftfast_maxclients": "gauge",
    "raftfast_rejected_connections": "counter", "raftfast_memory_used_bytes": "gauge",
    "raftfast_maxmemory_bytes": "gauge", "raftfast_memory_refusing_writes": "gauge",
    "raftfast_oom_refusals": "counter",
    "process_resident_memory_bytes": "gauge", "process_open_fds": "gauge",
}


def metrics_cluster(root, n, **kw):
    """A cluster whose node i serves metrics on a port of its own: (cluster,
    {id: metrics URL})."""
    c = Cluster(root, n=n, **kw)
    urls = {}
    for i, port in zip(c.ids, free_ports(n)):
        c.nodes[i].extra += ["--metrics", f"tcp://127.0.0.1:{port}"]
        urls[i] = f"http://127.0.0.1:{port}/metrics"
    return c, urls


def scrape(url):
    """{family name: Metric} of one scrape, parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families, name, **labels):
    """The value of the one sample of `name` (a family's own name, or a
    counter's _total, a histogram's _count...) with these labels."""
    fam = next(f for f in families.values() if any(s.name == name for s in f.samples))
    found = [s.value for s in fam.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, fam.samples)
    return found[0]


def test_every_node_is_scraped_and_agrees_with_info(root):
    c, urls = metrics_cluster(root, 3)
    try:
        c.start()
        lid = c.wait_leader()
        leader = c.nodes[lid]
        client = leader.client()
        for i in range(50):
            assert client.set(f"k{i}", "v")
        client.close()
        last = int(leader.info()["raft_last_log_index"])
        c.wait_applied(last)
        for i, node in c.nodes.items():
            # A follower's last fsync (of the commit index it learned) may
            # still be under way: counters are checked between two INFOs.
            client = node.client()
            before = client.info("stats")
            fams = scrape(urls[i])
            after = client.info("stats")
            maxmemory = client.info("memory")["maxmemory"]
            client.close()
            info = node.info()

            def agrees(name, field):
                return before[field] <= value(fams, name) <= after[field]
            for name, kind in FAMILIES.items():
                assert name in fams, f"node {i}: no {name}"
                assert fams[name].type == kind, (name, fams[name].type)
            role = info["raft_role"]
            assert value(fams, "raftfast_role", role=role) == 1
            assert sum(s.value for s in fams["raftfast_role"].samples) == 1
            assert value(fams, "raftfast_term") == int(info["raft_current_term"])
            assert value(fams, "raftfast_leader_id") == lid
            assert value(fams, "raftfast_commit_index") == int(info["raft_commit_index"]) == last
            assert value(fams, "raftfast_applied_index") == int(info["raft_last_applied"])
            assert value(fams, "raftfast_last_log_index") == last
            assert agrees("raftfast_fsyncs_total", "raftfast_fsyncs")
            assert agrees("raftfast_fsync_duration_seconds_count", "raftfast_fsyncs")
            assert agrees("raftfast_proposals_total", "raftfast_proposals")
            assert agrees("raftfast_entries_replicated_total", "raftfast_entries_sent")
            assert agrees("raftfast_entries_applied_total", "raftfast_entries_applied")
            assert value(fams, "raftfast_leader_changes_total") >= 1
            assert value(fams, "raftfast_memory_used_bytes") > 0
            assert value(fams, "raftfast_maxmemory_bytes") == maxmemory
            matches = {s.labels["peer"]: s.value
                       for s in fams["raftfast_follower_match_index"].samples}
            lags = {s.labels["peer"]: s.value
                    for s in fams["raftfast_follower_lag_entries"].samples}
            states = {(s.labels["peer"], s.labels["state"]): s.value
                      for s in fams["raftfast_follower_state"].samples}
            if i == lid:
                followers = {str(j) for j in c.ids if j != lid}
                assert set(matches) == set(lags) == followers
                # Caught up and acknowledging: each follower is sent to pipelined.
                assert all(states[(p, "replicate")] == 1 and states[(p, "probe")] == 0
                           and states[(p, "snapshot")] == 0 for p in followers), states
                # Every follower applied the last entry, so the leader knows it holds it
                # once its next heartbeat answer came back.
                assert all(m <= last for m in matches.values())
                assert all(lags[p] == last - matches[p] for p in followers)
                assert value(fams, "raftfast_elections_started_total") >= 1
                assert value(fams, "raftfast_proposals_total") == 50
                assert value(fams, "raftfast_commit_latency_seconds_count") == 50
                assert 0 < value(fams, "raftfast_commit_latency_seconds_sum") < 50 * DEADLINE
            else:
                assert matches == {} and lags == {} and states == {}
                assert value(fams, "raftfast_commit_latency_seconds_count") == 0
        # The leader learns each follower's match from its answers: it
        # reaches the last index, and the lag 0.
        until(lambda: all(value(scrape(urls[lid]), "raftfast_follower_lag_entries",
                                peer=str(j)) == 0 for j in c.ids if j != lid),
              "every follower's lag to reach 0 on the leader", DEADLINE)
    finally:
        c.stop()


def http(port, data):
    """Send raw bytes to the metrics port; what comes back before it
    closes (b"" when it cut the connection off)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return got


def cut_off(s):
    """Did the other end close s (a clean close or a reset)?"""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_stranger_on_the_metrics_port_cannot_hurt_the_node(root):
    c, urls = metrics_cluster(root, 1)
    port = int(urls[1].rsplit(":", 1)[1].split("/")[0])
    held = []
    try:
        c.start()
        c.wait_leader()
        assert http(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert http(port, b"\x00\xff" * 10 + b"\n\n").startswith(b"HTTP/1.1 400 ")
        assert http(port, b"GET /nothing HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
        assert http(port, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
        head = http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        # A request that never ends is cut off once past the limit.
        assert http(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (4 * MAX_REQUEST_BYTES)) == b""
        # More connections than it serves at once, held open half-sent:
        # those past the limit are closed, and the node goes on.
        for _ in range(MAX_CONNECTIONS + 8):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /metr")
            held.append(s)
        closed = 0
        for s in held[MAX_CONNECTIONS:]:
            closed += cut_off(s)
        assert closed == 8
        client = c.nodes[1].client()
        assert client.set("still", "serving") and client.get("still") == b"serving"
        client.close()
        for s in held:
            s.close()
        held = []
        fams = until(lambda: _scrape_or_none(urls[1]), "the metrics port to answer again",
                     DEADLINE)
        assert value(fams, "raftfast_proposals_total") == 1
        assert c.nodes[1].alive()
    finally:
        for s in held:
            s.close()
        c.stop()


def _scrape_or_none(url):
    try:
        return scrape(url)
    except (urllib.error.URLError, ConnectionError):
        return None


def test_a_metrics_port_in_use_stops_the_node_at_start(root):
    c, urls = metrics_cluster(root, 1)
    port = int(urls[1].rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        node = c.nodes[1].start(wait_ready=False)
        try:
            assert node.proc.wait(timeout=DEADLINE) == 1
            assert "cannot start" in node.log_tail() and str(port) in node.log_tail()
        finally:
            c.stop()
