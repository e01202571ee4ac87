"""The driver's snapshots section on one node (its own majority): a
snapshot every --snapshot-entries applied entries, written step by step
from the loop and synced in a thread, the log compacted behind it with the
trailing margin, a failure logged and retried, 0 meaning never."""
import asyncio
import os

import uvloop

from raftfast._kv import OP_SET, encode_commands
from raftfast.config import Config
from raftfast.core import LEADER
from raftfast.runtime.driver import RaftDriver
from raftfast.node import tick_ms
from raftfast.runtime.snapshot import load_snapshot
from raftfast.runtime.storage import Storage

from tests.support.wait import until_async

DEADLINE = 20.0  # liveness bound for waits, not a timing assertion


class NoPeers:
    def send(self, m):
        return False

    def send_frame(self, to, frame):
        return False

    def can_send(self, peer):
        return False

    def peer_version(self, peer):
        return 0

    def dialed_ids(self):
        return []

    def set_address(self, node_id, url):
        pass


def until(pred, what):
    return until_async(pred, what, DEADLINE)


def run_node(tmp_path, body, **knobs):
    """Start a one-node driver on a fresh data dir, run body(driver, write),
    stop; returns what body returned and the storage (closed)."""
    cfg = Config(node_id=1, data_dir=str(tmp_path / "d"), listen="unix:///unused.sock",
                 client="tcp://127.0.0.1:1", heartbeat_interval_ms=10,
                 election_timeout_ms=50, **knobs)
    storage = Storage.open(cfg.data_dir, 1, "raftfast")
    fatal = []

    async def main():
        loop = asyncio.get_running_loop()
        d = RaftDriver(loop, cfg, storage, storage.kv or _empty_kv(), NoPeers(),
                       (frozenset({1}), frozenset(), {}),
                       fatal.append, tick_ms(cfg))
        d.start()
        try:
            await until(lambda: d.core.role == LEADER, "leadership")
            written = []  # (index, key, value) of every SET, in index order

            async def write(lo, hi):
                done = asyncio.Event()
                cmds = [(OP_SET, [b"k%d" % (j % 150), b"v%d" % j]) for j in range(lo, hi)]
                last = d.propose(encode_commands(cmds), len(cmds), lambda r: done.set())
                for n, (_, (k, v)) in enumerate(cmds):
                    written.append((last - len(cmds) + 1 + n, k, v))
                await done.wait()

            return await body(d, write, written)
        finally:
            d.stop()
            await asyncio.sleep(0.05)  # let worker-thread callbacks land

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(main())
    finally:
        storage.close()
    assert fatal == []
    return result


def _empty_kv():
    from raftfast._kv import KVStore
    return KVStore()


def state_at(written, index):
    return {k: v for i, k, v in written if i <= index}  # later SETs win


def test_snapshots_are_taken_and_the_log_compacted_behind_them(tmp_path):
    async def body(d, write, written):
        for lo in range(0, 600, 20):
            await write(lo, lo + 20)
        await until(lambda: d.compactions >= 2, "two compactions")
        snap = d.core.snapshot_index
        history = list(written)
        return d.snapshots_taken, snap, d.core.log.snap_index, d.snapshot_stats(), history

    taken, snap, first, stats, written = run_node(
        tmp_path, body, snapshot_entries=100, snapshot_trailing=30)
    assert taken >= 2 and snap >= 200
    # The margin behind the snapshot stays in the log.
    assert 0 < first <= snap - 30
    assert stats["raftfast_snapshots_taken"] == taken and stats["raftfast_compactions"] >= 2
    # The newest snapshot file holds exactly the state at its index, and the
    # data dir recovers from it.
    with Storage.open(str(tmp_path / "d"), 1, "raftfast") as st:
        path, meta = st.latest_snapshot()
        assert st.snap_index == meta.index >= snap
        kv, _ = load_snapshot(path)
        assert dict(kv.items()) == state_at(written, meta.index)
        # ... and the log after it.
        assert st.entry_log.first_index == meta.index + 1
        assert st.entry_log.last_index >= max(i for i, _, _ in written)


def test_a_failed_snapshot_is_logged_and_retried(tmp_path, caplog):
    async def body(d, write, written):
        real = d.storage.snapshot_path
        d.storage.snapshot_path = lambda i: os.path.join(str(tmp_path), "no-such-dir", "x.snap")
        d.SNAP_RETRY_S = 0.0
        await write(0, 60)
        await until(lambda: d.snapshot_failures >= 1, "a failure")
        assert d.snapshots_taken == 0
        await write(60, 80)  # the node goes on serving
        d.storage.snapshot_path = real
        await until(lambda: d.snapshots_taken >= 1, "the retry")
        return d.snapshot_failures, d.core.snapshot_index

    failures, snap = run_node(tmp_path, body, snapshot_entries=50, snapshot_trailing=0)
    assert failures >= 1 and snap >= 50
    assert any("snapshot failed" in r.getMessage() for r in caplog.records)


def test_zero_means_never(tmp_path):
    async def body(d, write, written):
        for lo in range(0, 300, 50):
            await write(lo, lo + 50)
        await asyncio.sleep(0.1)
        return d.snapshots_taken, d.core.snapshot_index, d.core.log.snap_index

    assert run_node(tmp_path, body, snapshot_entries=0) == (0, 0, 0)
    assert not os.path.exists(tmp_path / "d" / "snap") or not [
        n for n in os.listdir(tmp_path / "d" / "snap") if n.endswith(".snap")]
