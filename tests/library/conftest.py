"""A cluster of library nodes in the test's own process, on uvloop."""
import asyncio
import shutil
import tempfile

import pytest
import uvloop

import raftfast
from tests.support.wait import until_async

FAST = {"heartbeat_interval": 20, "election_timeout": 200, "fsync": "never"}


class LocalCluster:
    """Library nodes in one process, over Unix sockets in `root`.
    make(i): the state machine of node i (a fresh one per start)."""

    def __init__(self, root, n, make, clocks=None, **options):
        self.root = root
        self.ids = list(range(1, n + 1))
        self.make = make
        self.clocks = clocks or {}
        self.options = {**FAST, **options}
        self.nodes = {}
        self.machines = {}

    def url(self, i):
        return f"unix://{self.root}/n{i}.sock"

    def peers_of(self, i, ids=None):
        return {j: self.url(j) for j in (ids or self.ids) if j != i}

    async def start_node(self, i, ids=None, **extra):
        sm = self.machines[i] = self.make(i)
        kw = {**self.options, **extra}
        if i in self.clocks:
            kw["wall_clock"] = self.clocks[i]
        node = raftfast.Node(sm, id=i, data_dir=f"{self.root}/d{i}", listen=self.url(i),
                             peers=self.peers_of(i, ids), **kw)
        await node.start()
        self.nodes[i] = node
        return node

    async def start(self):
        for i in self.ids:
            await self.start_node(i)
        await self.leader()
        return self

    async def stop_node(self, i):
        await self.nodes.pop(i).stop()

    async def stop(self):
        for i in list(self.nodes):
            await self.stop_node(i)

    async def leader(self, timeout=10.0):
        """The node every running node agrees leads."""
        def agreed():
            nodes = list(self.nodes.values())
            leaders = [n for n in nodes if n.is_leader]
            if len(leaders) == 1 and all(n.leader_id == leaders[0].id for n in nodes):
                return leaders[0]
            return None
        return await until_async(agreed, "a leader every node agrees on", timeout)

    async def follower(self):
        leader = await self.leader()
        return next(n for n in self.nodes.values() if n is not leader)


@pytest.fixture
def run():
    """run(coro_fn): run an async test body on a fresh uvloop."""
    def go(fn, timeout=60):
        async def body():
            return await asyncio.wait_for(fn(), timeout)
        return uvloop.run(body())
    return go


@pytest.fixture
def local_cluster():
    made = []

    async def make(n=3, state_machine=raftfast.ReplCounter, **kw):
        root = tempfile.mkdtemp(prefix="rf")
        c = LocalCluster(root, n, lambda i: state_machine(), **kw)
        made.append(c)
        return await c.start()

    yield make
    for c in made:
        for node in c.nodes.values():
            # A test that failed midway: release the data dirs anyway.
            if node._storage is not None:
                node._storage.close()
        shutil.rmtree(c.root, ignore_errors=True)
