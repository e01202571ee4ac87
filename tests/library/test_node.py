"""raftfast.Node with Python state machines, nodes in the test's process."""
import asyncio
import pickle

import pytest

import raftfast
from raftfast.library.state_machine import PythonSeam
from tests.support.wait import until_async


class Journal(raftfast.StateMachine):
    """Keeps every command with its index and cluster time; results are
    the running count."""

    def __init__(self):
        self.log = []          # (index, time, command)
        self.restored = 0

    def apply(self, commands, ctx):
        out = []
        for i, c in enumerate(commands):
            self.log.append((ctx.index + i, ctx.time, c))
            out.append(len(self.log))
        return out

    def snapshot(self):
        return [pickle.dumps(self.log[:len(self.log) // 2]),
                pickle.dumps(self.log[len(self.log) // 2:])]

    def restore(self, chunks):
        parts = [pickle.loads(c) for c in chunks]
        self.log = [e for p in parts for e in p]
        self.restored += 1


def test_propose_and_read_work_on_every_node(run, local_cluster):
    async def body():
        c = await local_cluster()
        try:
            for node in c.nodes.values():
                assert await c.machines[node.id].add(node.id) > 0
            follower = await c.follower()
            assert await c.machines[follower.id].add(10) == 1 + 2 + 3 + 10
            for node in c.nodes.values():
                assert await node.read(lambda sm: sm.value) == 16
        finally:
            await c.stop()
    run(body)


def test_many_concurrent_callers_each_get_their_own_result(run, local_cluster):
    async def body():
        c = await local_cluster(state_machine=Journal)
        try:
            follower = await c.follower()
            leader = await c.leader()
            calls = [n.propose(b"%d-%d" % (n.id, k)) for k in range(200) for n in
                     (leader, follower)]
            results = await asyncio.gather(*calls)
            assert sorted(results) == list(range(1, 401))
            logs = [await n.read(lambda sm: [e[2] for e in sm.log]) for n in c.nodes.values()]
            assert logs[0] == logs[1] == logs[2] and len(logs[0]) == 400
        finally:
            await c.stop()
    run(body)


def test_a_replicated_method_raises_to_its_caller_and_the_node_goes_on(run, local_cluster):
    async def body():
        c = await local_cluster(state_machine=raftfast.ReplDict)
        try:
            d = c.machines[(await c.leader()).id]
            with pytest.raises(KeyError):
                await d.pop("missing")
            await d.set("k", 1)
            assert await d.pop("k") == 1
            assert await d.pop("k", "default") == "default"
        finally:
            await c.stop()
    run(body)


class Exploding(raftfast.StateMachine):
    def apply(self, commands, ctx):
        if b"boom" in commands:
            raise RuntimeError("boom")
        return [None] * len(commands)

    def snapshot(self):
        return b""

    def restore(self, chunks):
        pass


def test_an_exception_escaping_apply_stops_the_node(run, local_cluster):
    # Every replica that applies the command stops the same way; the
    # leader applies it first and stops before it tells the others it
    # committed, so only its stop is certain.
    async def body():
        c = await local_cluster(state_machine=Exploding)
        leader = await c.leader()
        await leader.propose(b"fine")
        with pytest.raises(raftfast.RaftError, match="boom"):
            await leader.propose(b"boom")
        await asyncio.wait_for(leader.wait_stopped(), 10)
        assert "boom" in leader.stop_reason
        with pytest.raises(raftfast.RaftError, match="stopped"):
            leader.propose(b"more")
        await c.stop()
    run(body)


def test_a_lagging_node_gets_a_snapshot_and_restores_from_it(run, local_cluster):
    async def body():
        c = await local_cluster(state_machine=Journal, snapshot_entries=40, snapshot_trailing=5)
        try:
            leader = await c.leader()
            lagging = next(i for i in c.ids if i != leader.id)
            await c.stop_node(lagging)
            for k in range(300):
                await leader.propose(b"cmd %d" % k)
            # Snapshots are taken in the background: wait for one well past
            # where the lagging node stopped (the log before it is gone).
            await until_async(lambda: leader.status()["snapshot_index"] > 100,
                              "a snapshot past index 100")
            node = await c.start_node(lagging)
            # A read on the restarted node: served once it has caught up.
            got = await node.read(lambda sm: list(sm.log), timeout=10)
            assert got == await leader.read(lambda sm: list(sm.log))
            assert c.machines[lagging].restored >= 1
            assert [e[2] for e in got][-1] == b"cmd 299"
        finally:
            await c.stop()
    run(body)


def test_a_restarted_node_recovers_its_state_from_its_snapshot_and_log(run, local_cluster):
    async def body():
        c = await local_cluster(state_machine=Journal, snapshot_entries=30, snapshot_trailing=0)
        try:
            leader = await c.leader()
            for k in range(100):
                await leader.propose(b"%d" % k)
            before = await leader.read(lambda sm: list(sm.log))
            await c.stop()
            for i in c.ids:
                await c.start_node(i)
            leader = await c.leader()
            after = await leader.read(lambda sm: list(sm.log))
            assert after[:len(before)] == before
            assert sum(c.machines[i].restored for i in c.ids) >= 1
        finally:
            await c.stop()
    run(body)


def test_members_are_added_and_removed_and_leadership_moves(run, local_cluster):
    async def body():
        c = await local_cluster()
        try:
            leader = await c.leader()
            await c.machines[leader.id].add(7)
            c.ids.append(4)
            new = await c.start_node(4, join=True)
            await leader.add_member(4, c.url(4))
            assert await new.read(lambda sm: sm.value, timeout=10) == 7
            await until_async(lambda: 4 in leader.status()["voters"], "node 4 promoted")
            await leader.transfer_leadership(4)
            assert new.is_leader
            await c.machines[4].add(1)
            await new.remove_member(leader.id)
            assert leader.id not in new.status()["voters"]
        finally:
            await c.stop()
    run(body)


def test_without_a_majority_a_request_ends_with_not_leader(run, local_cluster):
    async def body():
        c = await local_cluster()
        try:
            keep = await c.follower()
            for i in [i for i in c.ids if i != keep.id]:
                await c.stop_node(i)
            with pytest.raises(raftfast.NotLeader):
                await keep.read(lambda sm: sm.value, timeout=1.0)
            with pytest.raises((raftfast.NotLeader, raftfast.OutcomeUnknown)):
                await keep.propose(pickle.dumps(("add", (1,))), timeout=1.0)
        finally:
            await c.stop()
    run(body)


def test_cluster_time_never_goes_back_in_log_order_across_skewed_leaders(run, local_cluster):
    offsets = {1: 60_000, 2: -60_000, 3: 0}   # a minute fast, a minute slow, on time

    def skewed(i):
        from raftfast.runtime.cluster_time import wall_ms
        return lambda: wall_ms() + offsets[i]

    async def body():
        c = await local_cluster(state_machine=Journal, clocks={i: skewed(i) for i in offsets})
        try:
            for round_ in range(6):
                leader = await c.leader()
                for k in range(20):
                    await leader.propose(b"r%d-%d" % (round_, k))
                target = (leader.id % 3) + 1
                await leader.transfer_leadership(target)
            logs = [await n.read(lambda sm: list(sm.log)) for n in c.nodes.values()]
            assert logs[0] == logs[1] == logs[2]  # the same times on every replica
            times = [t for _, t, _ in logs[0]]
            assert times == sorted(times)
            # Node 1's clock led once; after that no leader went below it.
            assert times[-1] >= times[0]
        finally:
            await c.stop()
    run(body)


def test_a_lock_lease_ends_by_cluster_time_and_tokens_fence(run, local_cluster):
    skew = [0]

    def clock(i):
        from raftfast.runtime.cluster_time import wall_ms
        return lambda: wall_ms() + skew[0]

    async def body():
        c = await local_cluster(state_machine=raftfast.ReplLock,
                                clocks={i: clock(i) for i in (1, 2, 3)})
        try:
            leader = await c.leader()
            lock = c.machines[leader.id]
            t1 = await lock.acquire("a", 5_000)
            assert t1 is not None
            assert await lock.acquire("b", 5_000) is None
            assert await lock.renew("a", 5_000) is True
            skew[0] += 10_000   # the lease runs out on cluster time
            t2 = await lock.acquire("b", 5_000)
            assert t2 is not None and t2 > t1
            assert await lock.renew("a", 5_000) is False
            assert await lock.release("a") is False
            assert await lock.owner() == ("b", t2)
            assert await lock.release("b") is True
            assert await lock.owner() is None
        finally:
            await c.stop()
    run(body)


def test_threaded_node_blocks_and_returns_results(tmp_path):
    counter = raftfast.ReplCounter()
    node = raftfast.ThreadedNode(counter, id=1, data_dir=str(tmp_path / "d"),
                                 listen=f"unix://{tmp_path}/n.sock", **{"fsync": "never",
                                 "heartbeat_interval": 20, "election_timeout": 200})
    with node:
        assert counter.add(2) == 2
        assert counter.add(3) == 5
        assert node.read(lambda c: c.value) == 5
        assert node.is_leader and node.leader_id == 1


def test_unknown_options_and_bad_commands_are_refused(tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        raftfast.Node(Journal(), id=1, data_dir=str(tmp_path), listen="unix:///tmp/x.sock",
                      no_such_flag=1)
    with pytest.raises(ValueError):
        raftfast.Node(Journal(), id=1, data_dir=str(tmp_path), listen="nonsense")


def test_the_seam_cuts_a_block_at_its_time_entries():
    from raftfast._entrylog import encode_entries
    from raftfast.core.messages import ENTRY_NOOP, ENTRY_NORMAL
    from raftfast.runtime.cluster_time import time_entry

    class Log:
        applied = 9

    sm = Journal()
    seam = PythonSeam(sm)
    seam.log = Log()
    block = (encode_entries([(1, ENTRY_NORMAL, b"a")]) + time_entry(500)
             + encode_entries([(1, ENTRY_NOOP, b""), (1, ENTRY_NORMAL, b"b"),
                               (1, ENTRY_NORMAL, b"c")]))
    results, _ = seam.apply_replies(block)
    assert results == [1, None, None, 2, 3]
    assert sm.log == [(10, 0, b"a"), (13, 500, b"b"), (14, 500, b"c")]


class Sized(raftfast.ReplCounter):
    """A counter that says its state costs `size` bytes."""

    size = 0

    def memory_used(self):
        return self.size


def test_a_replica_over_its_memory_limit_stops_writes_but_not_reads(run, local_cluster):
    async def body():
        c = await local_cluster(state_machine=Sized, maxmemory=1 << 30)
        try:
            leader = await c.leader()
            follower = await c.follower()
            await c.machines[leader.id].add(1)
            c.machines[follower.id].size = 2 << 30        # one voter is over its limit
            await until_async(lambda: leader._memory.refusing, "the leader to hear of it")
            for node in (leader, follower):
                with pytest.raises(raftfast.RaftError, match="OOM"):
                    await c.machines[node.id].add(1)
                assert await node.read(lambda sm: sm.value) == 1
            c.machines[follower.id].size = 0
            await until_async(lambda: not leader._memory.refusing, "the report to clear")
            assert await c.machines[follower.id].add(1) == 2
        finally:
            await c.stop()
    run(body)


def test_force_new_cluster_makes_a_survivor_lead_alone(run, local_cluster):
    """force_new_cluster=True, as the node's flag: two of three nodes lost,
    the third restarted with it leads alone with every committed command."""
    async def body():
        c = await local_cluster(state_machine=Journal)
        try:
            leader = await c.leader()
            for k in range(20):
                await leader.propose(b"cmd-%d" % k)
            survivor = (await c.follower()).id
            await until_async(lambda: len(c.machines[survivor].log) == 20,
                              "the survivor to apply every command")
            for i in list(c.nodes):
                await c.stop_node(i)
            node = await c.start_node(survivor, force_new_cluster=True)
            await until_async(lambda: node.is_leader, "the survivor to lead alone")
            assert await node.read(lambda sm: [cmd for _, _, cmd in sm.log]) == [
                b"cmd-%d" % k for k in range(20)]
            assert await node.propose(b"after") == 21
        finally:
            await c.stop()
    run(body)


def test_a_library_node_serves_its_raft_metrics(run):
    """metrics=URL, as --metrics on a node: the Raft families (no client
    families: a library node has no RESP clients)."""
    import shutil
    import tempfile
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    root = tempfile.mkdtemp(prefix="rf")

    def scrape(url):
        with urllib.request.urlopen(url, timeout=10) as r:
            return {f.name: f for f in text_string_to_metric_families(r.read().decode())}

    async def body():
        node = raftfast.Node(Journal(), id=1, data_dir=f"{root}/d", listen=f"unix://{root}/n.sock",
                             metrics="tcp://127.0.0.1:0", fsync="never", heartbeat_interval=20,
                             election_timeout=200)
        async with node:
            await until_async(lambda: node.is_leader, "the single node to lead")
            for i in range(3):
                await node.propose(b"x%d" % i)
            fams = await asyncio.get_running_loop().run_in_executor(None, scrape,
                                                                     node.metrics_url)
            role = {s.labels["role"]: s.value for s in fams["raftfast_role"].samples}
            assert role["leader"] == 1 and sum(role.values()) == 1
            (commit,) = fams["raftfast_commit_index"].samples
            assert commit.value >= 3
            (elections,) = fams["raftfast_elections_started"].samples
            assert elections.value == 1
            assert fams["raftfast_fsync_duration_seconds"].type == "histogram"
            assert "raftfast_proposals" not in fams and "raftfast_client_connections" not in fams
        assert node.metrics_url.startswith("http://127.0.0.1:")

    try:
        run(body)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_library_nodes_log_the_story_each_record_naming_its_node(run, local_cluster, caplog):
    """The library shares the runtime's story: the program's own logging
    gets the start and the elections at info, on raftfast.raft, each event
    record carrying the id of the node it happened on."""
    import logging
    caplog.set_level(logging.INFO, logger="raftfast")

    def told(me, term):
        return {r.node for r in caplog.records if getattr(r, "event", None) == "leader_changed"
                and (r.fields["leader"], r.fields["term"]) == (me, term)} == {1, 2, 3}

    async def body():
        c = await local_cluster()
        try:
            leader = await c.leader()
            await until_async(lambda: told(leader.id, leader.term), "every node told")
            return leader.id, leader.term
        finally:
            await c.stop()
    me, term = run(body)
    story = [r for r in caplog.records if r.name == "raftfast.raft"]
    assert {r.node for r in story if r.event == "recovered"} == {1, 2, 3}
    assert {r.node for r in story if r.event == "settings"} == {1, 2, 3}
    won = [r for r in story if r.event == "election_won" and not r.fields["pre_vote"]]
    assert any(r.node == me and r.fields["term"] == term for r in won)
