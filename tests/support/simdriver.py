"""Raft drivers on a simulated loop and clock, with real storage.

    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        sim.loop.advance(0.5)

Each node is a runtime.driver.RaftDriver on one FakeLoop (its clock is the
loop's), talking over a MemNet, applying to a KVStateMachine, writing to a
Storage in its own directory under tmp_path.  fsync runs from the loop
(sync_in_thread=False), so a whole run is deterministic for a seed.  A
fatal error of any node fails the test at close.
"""
from raftfast.config import Config
from raftfast.core import LEADER
from raftfast.node import tick_ms
from raftfast.runtime.cluster_version import CLUSTER_VERSION
from raftfast.runtime.driver import RaftDriver
from raftfast.runtime.kv_state_machine import KVStateMachine
from raftfast.runtime.storage import Storage

from tests.support.fakeloop import FakeLoop
from tests.support.memnet import MemNet

__all__ = ["SimDrivers"]

HEARTBEAT_MS = 10
ELECTION_MS = 100


class SimDrivers:
    def __init__(self, tmp_path, voters=(1,), seed=7, **knobs):
        self.tmp_path = tmp_path
        self.voters = frozenset(voters)
        self.seed = seed
        self.knobs = knobs
        self.loop = FakeLoop()
        self.net = MemNet(self.loop)
        self.nodes = {}
        self.storages = {}
        self.fatal = []
        for node_id in sorted(self.voters):
            self.start(node_id)

    def config(self, node_id):
        knobs = dict(heartbeat_interval_ms=HEARTBEAT_MS, election_timeout_ms=ELECTION_MS)
        knobs.update(self.knobs)
        return Config(node_id=node_id, data_dir=str(self.tmp_path / f"n{node_id}"),
                      listen="unix:///unused.sock", client="tcp://127.0.0.1:1", **knobs)

    def start(self, node_id):
        cfg = self.config(node_id)
        storage = Storage.open(cfg.data_dir, node_id, cfg.cluster_id, fsync=False)
        driver = RaftDriver(self.loop, self.loop.time, cfg, storage, KVStateMachine(storage.kv),
                            self.net.transport(node_id),
                            (self.voters, frozenset(), {}, CLUSTER_VERSION),
                            lambda why: self.fatal.append((node_id, why)), tick_ms(cfg),
                            seed=self.seed * 1000 + node_id, sync_in_thread=False)
        self.nodes[node_id] = driver
        self.storages[node_id] = storage
        self.net.attach(node_id, driver.step_read)
        driver.start()
        return driver

    def leader(self):
        leaders = [d for d in self.nodes.values() if d.core.role == LEADER]
        return leaders[0] if len(leaders) == 1 else None

    def wait_leader(self, within=5.0):
        self.loop.run_until(lambda: self.leader() is not None, within, "a leader")
        leader = self.leader()
        # Its first entry (the no-op of its term) committed: it takes
        # proposals and answers reads from here on.
        self.loop.run_until(lambda: leader.core.log.committed == leader.core.log.last_index
                            and leader.core.log.applied == leader.core.log.committed,
                            within, "the leader's first entry applied")
        return leader

    def close(self):
        for driver in self.nodes.values():
            driver.stop()
        self.loop.run_ready()  # what stopping scheduled
        for storage in self.storages.values():
            storage.close()
        assert self.fatal == []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            for driver in self.nodes.values():
                driver.stop()
            for storage in self.storages.values():
                storage.close()
