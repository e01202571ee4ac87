"""The library under faults: nodes in their own processes whose state
machine is user Python code (tests/support/library_node.py), crashed,
partitioned, lagging behind a snapshot, and changing members; the
histories their callers saw checked linearizable."""
import random
import shutil
import tempfile
import threading
import time

import pytest

from tests.support.library_cluster import LibraryCluster
from tests.support.linearizability import APPEND, GET, SET, Op, check_history
from tests.support.wait import until


@pytest.fixture
def library_cluster():
    made = []

    def make(n=3, flags=(), clock_skews=None):
        c = LibraryCluster(tempfile.mkdtemp(prefix="rf"), n, flags)
        made.append(c)
        return c.start(clock_skews)

    yield make
    for c in made:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


def run_clients(cluster, seconds, n_clients=4, keys=("a", "b", "c"), seed=0):
    """Clients calling random nodes with random ops until `seconds` pass;
    the history of ops whose outcome they learned or could not.  The keys
    are renewed every second (a few keys per generation keep the clients
    contending), so no key's history grows past what the checker can search."""
    history, lock = [], threading.Lock()
    start = time.monotonic()
    stop_at = start + seconds

    def client(cid):
        rng = random.Random(seed * 100 + cid)
        counter = 0
        while time.monotonic() < stop_at:
            node = cluster.nodes[rng.choice(list(cluster.nodes))]
            key = f"{rng.choice(keys)}{int(time.monotonic() - start)}"
            kind = rng.choice((GET, SET, APPEND, APPEND))
            counter += 1
            arg = None if kind == GET else f"{cid}.{counter};"
            try:
                ctl = node.control()
            except OSError:
                continue  # the process is down: nothing was sent
            call = time.monotonic()
            try:
                reply = ctl.call(op=kind, key=key, arg=arg, timeout=1.0)
            except OSError:
                reply = {"error": "OutcomeUnknown"}  # the process died under us
            finally:
                ctl.close()
            ret = time.monotonic()
            if "ok" in reply:
                op = Op(cid, key, kind, arg, call, ret, reply["ok"])
            elif reply["error"] == "OutcomeUnknown" or kind != GET and reply["error"] == "RaftError":
                op = Op(cid, key, kind, arg, call, None, None)  # may or may not take effect
            else:
                continue  # NotLeader: nothing happened
            with lock:
                history.append(op)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    return threads, history


def test_histories_stay_linearizable_through_crashes_and_partitions(library_cluster):
    c = library_cluster(3, flags=["--snapshot-entries", "60", "--snapshot-trailing", "10"])
    c.leader()
    threads, history = run_clients(c, seconds=8)
    rng = random.Random(7)
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        fault = rng.choice(("crash", "partition", "isolate_leader"))
        victim = rng.choice(c.ids)
        if fault == "crash":
            c.nodes[victim].kill()
            time.sleep(0.5)  # the fault's duration is the point of the test
            c.nodes[victim].start()
        elif fault == "partition":
            others = [i for i in c.ids if i != victim]
            c.proxy.partition([victim], others)
            time.sleep(0.6)
            c.proxy.heal_all()
        else:
            c.proxy.isolate(c.leader())
            time.sleep(0.6)
            c.proxy.heal_all()
        time.sleep(0.3)
    for t in threads:
        t.join()
    c.proxy.heal_all()
    c.leader()
    known = [op for op in history if op.ret is not None]
    assert len(known) > 50, f"only {len(known)} ops completed"
    result = check_history(history)
    assert result.ok, result.explanation
    dumps = [until(lambda n=n: n.call(op="dump").get("ok"), "a dump", 30)
             if n.alive() else None for n in c.nodes.values()]
    assert all(d == dumps[0] for d in dumps)


def test_a_lagging_process_catches_up_from_a_snapshot(library_cluster):
    c = library_cluster(3, flags=["--snapshot-entries", "40", "--snapshot-trailing", "5"])
    leader = c.nodes[c.leader()]
    lagging = next(n for i, n in c.nodes.items() if i != leader.id)
    lagging.kill()
    ctl = leader.control()
    try:
        for k in range(300):
            assert "ok" in ctl.call(op="append", key="k", arg=f"{k},")
        # Snapshots are taken in the background: wait for one well past
        # where the lagging node stopped.
        until(lambda: ctl.call(op="status")["ok"]["snapshot_index"] > 100,
              "a snapshot past index 100")
        want = ctl.call(op="dump")["ok"]
    finally:
        ctl.close()
    lagging.start()
    got = until(lambda: lagging.call(op="dump").get("ok"), "the restarted node to read", 30)
    assert got == want
    assert lagging.call(op="status")["ok"]["snapshot_index"] > 0


def test_a_process_joins_and_a_member_leaves(library_cluster):
    c = library_cluster(3)
    leader = c.nodes[c.leader()]
    assert "ok" in leader.call(op="set", key="x", arg="1")
    new = c.add(4)
    assert leader.call(op="add_member", id=4, url=c.peer_url(4)) == {"ok": None}
    assert until(lambda: new.call(op="get", key="x").get("ok"), "node 4 to read x", 30) == "1"
    gone = next(i for i in c.ids if i not in (leader.id, 4))
    assert leader.call(op="remove_member", id=gone) == {"ok": None}
    c.nodes[gone].kill()
    assert "ok" in new.call(op="set", key="y", arg="2")
    assert leader.call(op="get", key="y") == {"ok": "2"}


def test_cluster_time_stays_monotone_when_leaders_with_skewed_clocks_crash(library_cluster):
    """Node 1's clock runs a minute ahead, node 2's a minute behind: whoever
    leads, the commands' cluster times never go back in log order, and
    every replica has the same ones."""
    c = library_cluster(3, clock_skews={1: 60_000, 2: -60_000})
    for round_ in range(6):
        leader = c.nodes[c.leader()]
        ctl = leader.control()
        try:
            for _ in range(10):
                assert "ok" in ctl.call(op="stamp")
        finally:
            ctl.close()
        leader.kill()           # a crash, not a transfer: the next leader is elected
        c.leader()
        leader.start()
    c.leader()
    dumps = [until(lambda n=n: n.call(op="dump").get("ok"), "a dump", 30)
             for n in c.nodes.values()]
    times = dumps[0]["_times"]
    assert len(times) == 60 and all(d["_times"] == times for d in dumps)
    assert times == sorted(times)
