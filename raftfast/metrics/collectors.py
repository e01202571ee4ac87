"""Collectors that read, when scraped, the counters and state a node keeps
anyway, and turn them into Prometheus metric families.

Nothing here runs on the replication path.  The runtime counts what it
counts for INFO (per batch), the core counts elections and leader changes
(rare), GroupCommit and the Batcher fill a fixed-bucket histogram once per
fsync and per committed batch (runtime.latency); a scrape reads them.

RaftCollector: what every node has, a server or a library node (role,
term, indexes, followers, elections, replication, fsyncs, snapshots,
memory).  ServerCollector: what only the RESP server has (proposals from
clients, commit latency, connections, OOM answers).  Every name starts
with `raftfast_`; docs/operations.md lists them.
"""
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from raftfast import __version__
from raftfast.core import LEADER, PROBE, REPLICATE, SNAPSHOT
from raftfast.runtime.node_role import ROLES, role_of

__all__ = ["RaftCollector", "ServerCollector", "server_registry", "library_registry",
           "histogram_family"]


class _Collector:
    def describe(self):
        # The names are fixed, but an empty description keeps registration
        # from running a collection before the node has started.
        return []


class RaftCollector(_Collector):
    """cfg: the node's Config.  driver: its RaftDriver.  memory: what
    accounts for --maxmemory (used, maxmemory, refusing)."""

    def __init__(self, cfg, driver, memory):
        self.cfg = cfg
        self.driver = driver
        self.memory = memory

    def collect(self):
        driver = self.driver
        core = driver.core
        lg = core.log
        meta = GaugeMetricFamily("raftfast_node", "This node: its id, cluster id and version",
                                 labels=["id", "cluster_id", "version"])
        meta.add_metric([str(core.id), self.cfg.cluster_id, __version__], 1)
        yield meta
        role = GaugeMetricFamily("raftfast_role", "1 for the role this node has now",
                                 labels=["role"])
        now = role_of(core)
        for r in ROLES:
            role.add_metric([r], 1 if now == r else 0)
        yield role
        yield _gauge("raftfast_term", "Current Raft term", core.term)
        yield _gauge("raftfast_leader_id", "The leader this node knows of (0: none)",
                     core.leader_id)
        yield _gauge("raftfast_commit_index", "Highest log index known committed",
                     lg.committed)
        yield _gauge("raftfast_applied_index", "Highest log index applied to the state machine",
                     lg.applied)
        yield _gauge("raftfast_last_log_index", "Last index in this node's log", lg.last_index)
        yield _gauge("raftfast_snapshot_index", "Index the newest snapshot covers",
                     core.snapshot_index)
        yield from _followers(core, lg)

        yield _counter("raftfast_elections_started", "Elections this node started as a "
                       "candidate (pre-votes not counted)", core.elections_started)
        yield _counter("raftfast_leader_changes", "Times this node learned of a new leader "
                       "(itself included)", core.leader_changes)
        yield _counter("raftfast_entries_replicated", "Entries sent to followers in appends",
                       driver.entries_sent)
        yield _counter("raftfast_appends_sent", "Append messages sent to followers",
                       driver.appends_sent)
        yield _counter("raftfast_peer_bytes_sent", "Bytes of frames sent to peers",
                       driver.transport.bytes_sent)
        yield _counter("raftfast_entries_written", "Entries written to this node's log",
                       driver.entries_written)
        yield _counter("raftfast_entries_applied", "Entries applied to the state machine",
                       driver.applied_entries)
        group = driver.group_commit
        yield _counter("raftfast_fsyncs", "fsyncs of the log (one per group commit)",
                       group.fsyncs)
        yield histogram_family("raftfast_fsync_duration_seconds",
                               "How long each fsync of the log took", group.sync_times)
        yield _counter("raftfast_reads_served", "Linearizable reads served",
                       driver.reads.served)

        snaps = driver.snapshots.stats()
        yield _counter("raftfast_snapshots_taken", "Snapshots this node took",
                       snaps["raftfast_snapshots_taken"])
        yield _counter("raftfast_snapshots_sent", "Snapshots sent to followers",
                       snaps["raftfast_snapshots_sent"])
        yield _counter("raftfast_snapshots_installed", "Snapshots received and installed",
                       snaps["raftfast_snapshots_installed"])
        yield _counter("raftfast_snapshot_bytes_sent", "Bytes of snapshots sent",
                       snaps["raftfast_snapshot_bytes_sent"])

        memory = self.memory
        yield _gauge("raftfast_memory_used_bytes", "Memory counted against --maxmemory",
                     memory.used)
        yield _gauge("raftfast_maxmemory_bytes", "--maxmemory (0: no limit)", memory.maxmemory)
        yield _gauge("raftfast_memory_refusing_writes", "1 while writes that grow the data "
                     "set are refused (this node or a voter over its limit)",
                     int(memory.refusing))


class ServerCollector(_Collector):
    """The RESP server's own: its clients' proposals and connections."""

    def __init__(self, server):
        self.server = server

    def collect(self):
        server = self.server
        batcher = server.batcher
        yield _counter("raftfast_proposals", "Batches of client writes proposed by this node "
                       "as leader", batcher.proposals)
        yield _counter("raftfast_entries_proposed", "Client write entries proposed",
                       batcher.entries_proposed)
        yield histogram_family("raftfast_commit_latency_seconds",
                               "From proposing a batch of client writes to their being applied, "
                               "on the leader", batcher.commit_times)
        yield _gauge("raftfast_client_connections", "Client connections open",
                     len(server.connections))
        yield _gauge("raftfast_maxclients", "--maxclients", server.maxclients)
        yield _counter("raftfast_rejected_connections", "Client connections refused at "
                       "--maxclients", server.rejected_connections)
        yield _counter("raftfast_oom_refusals", "Commands answered OOM",
                       server.memory.writes_refused)


# How the leader replicates to a follower (etcd's Progress states).
_STATES = ((PROBE, "probe"), (REPLICATE, "replicate"), (SNAPSHOT, "snapshot"))


def _followers(core, lg):
    """Per follower, on the leader: how far its log matches ours, how many
    entries it lacks, and how the leader is sending to it.  Other nodes
    have no series."""
    match = GaugeMetricFamily("raftfast_follower_match_index", "Highest index known "
                              "replicated on each follower (leader only)", labels=["peer"])
    lag = GaugeMetricFamily("raftfast_follower_lag_entries", "Entries of the leader's log "
                            "each follower lacks (leader only)", labels=["peer"])
    state = GaugeMetricFamily("raftfast_follower_state", "1 for how the leader sends to each "
                              "follower now: probe, replicate (pipelined) or snapshot "
                              "(leader only)", labels=["peer", "state"])
    if core.role == LEADER:
        last = lg.last_index
        for peer, pr in sorted(core.progress.items()):
            if peer != core.id:
                match.add_metric([str(peer)], pr.match)
                lag.add_metric([str(peer)], max(0, last - pr.match))
                for value, name in _STATES:
                    state.add_metric([str(peer), name], 1 if pr.state == value else 0)
    yield match
    yield lag
    yield state


def _gauge(name, doc, value):
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name, doc, value):
    return CounterMetricFamily(name, doc, value=value)


def histogram_family(name, doc, hist):
    """A runtime.latency histogram as Prometheus's cumulative buckets."""
    buckets, running = [], 0
    for bound, n in zip(hist.bounds, hist.counts):
        running += n
        buckets.append((repr(bound), running))
    running += hist.counts[len(hist.counts) - 1]
    buckets.append(("+Inf", running))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.total)


def _registry(*collectors):
    """The collectors and the process's own metrics (CPU, resident memory,
    open file descriptors, from /proc when scraped)."""
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    ProcessCollector(registry=registry)
    return registry


def server_registry(cfg, server):
    """What `python -m raftfast.node --metrics` serves."""
    return _registry(RaftCollector(cfg, server.driver, server.memory), ServerCollector(server))


def library_registry(cfg, driver, memory):
    """What a library node (raftfast.Node(..., metrics=URL)) serves: it has
    no clients of its own, so the Raft families only."""
    return _registry(RaftCollector(cfg, driver, memory))
