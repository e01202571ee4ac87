"""A local cluster as an object, for the benchmarks and the tests: the
launcher's planning and supervision without its command.

    async with LocalCluster(ns) as c:   # ns as the cluster's parser makes it
        url = c.client_url(c.leader_id)

NodeGroup is what any set of node processes started together shares
(waiting until one leads, stopping them all); the benchmarks start other
systems' nodes with it too.
"""
import os
import shutil
import tempfile
import time

from raftfast import resp_client
from raftfast.launcher.layout import ensure_secret, log_path, plan
from raftfast.launcher.status import poll_all
from raftfast.launcher.supervisor import LEADER_WAIT, TIMEOUT, spawn, stop_all, until


class ClusterError(RuntimeError):
    """The cluster did not come up; the message carries the nodes' last lines."""


class NodeGroup:
    """Node processes started together (by start_nodes(), which subclasses
    write) and waited on until every one is ready and one leads.  Raises
    ClusterError when a node exits first or no leader comes within
    leader_wait seconds; the nodes are stopped first."""

    label = "node"  # how messages name one of them

    def __init__(self, leader_wait=LEADER_WAIT):
        self.leader_wait = leader_wait
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

    async def start_nodes(self):
        """Start the processes and fill self.nodes: each kind of cluster
        (raftfast's, PySyncObj's) says how."""
        raise NotImplementedError

    async def start(self):
        try:
            await self.start_nodes()
            await self.wait_leader(self.leader_wait)
        except BaseException:
            await self.stop()
            raise
        return self

    async def wait_leader(self, timeout=LEADER_WAIT):
        """The leader's id once every node is ready and one leads."""
        outcome = await until(self.nodes, self._leader_once_ready, time.monotonic() + timeout,
                              interval=0.05)
        if outcome == TIMEOUT:
            raise ClusterError(f"no leader after {timeout:g} s; the {self.label}s' last "
                               "lines:\n" + "\n".join(n.last_lines() for n in self.nodes))
        if isinstance(outcome, list):
            raise ClusterError("\n".join(
                f"{self.label} {n.id} (pid {n.proc.pid}) exited with code {n.proc.returncode}; "
                f"its last lines:\n{n.last_lines()}" for n in outcome))
        self.leader_id = outcome
        return outcome

    async def _leader_once_ready(self):
        if not all(n.ready.done() for n in self.nodes):
            return None
        return resp_client.leader_of(await poll_all(self.nodes))

    async def stop(self):
        nodes, self.nodes = self.nodes, []
        await stop_all(nodes)


class LocalCluster(NodeGroup):
    """The nodes of a planned cluster (`ns` as the cluster's parser makes
    it).  Without ns.data_dir a fresh temporary directory is used and
    removed on stop.  `env` (a dict) is added to every node's environment,
    e.g. {"RAFTFAST_COUNT_CALLS": "1"}.  Raises ConfigError (bad settings)
    or ClusterError."""

    def __init__(self, ns, leader_wait=LEADER_WAIT, env=None):
        super().__init__(leader_wait)
        self.ns = ns
        self.env = dict(env or {})
        self.temp = getattr(ns, "data_dir", None) is None
        # Short and under /tmp: unix socket paths are limited to 107 bytes.
        self.data_dir = (tempfile.mkdtemp(prefix="rf-", dir="/tmp" if os.path.isdir("/tmp")
                                          else None)
                         if self.temp else os.path.abspath(ns.data_dir))

    async def start_nodes(self):
        specs = plan(self.ns, self.data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        ensure_secret(self.data_dir)
        for spec in specs:
            self.nodes.append(await spawn(spec, log_path(self.data_dir, spec.id), self.env))

    async def stop(self):
        try:
            await super().stop()
        finally:
            if self.temp:
                shutil.rmtree(self.data_dir, ignore_errors=True)
