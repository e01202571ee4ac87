"""The node log with --log-format json, as a log shipper reads it: three
real node processes, the leader killed; every line each node wrote to
stderr is one JSON object, and together they tell the start (the state
recovered, the settings), the elections, the new leader and the change of
leader, and never the cluster secret itself."""
import json

from raftfast.launcher.layout import ensure_secret

from tests.support.harness import Cluster
from tests.support.wait import until

BASE_KEYS = {"time", "level", "node", "logger", "message"}


def records(node):
    """Every line of the node's stderr, parsed; a line that is not one
    JSON object fails the test with the line."""
    with open(node.log_path, encoding="utf-8") as f:
        text = f.read()
    # A line still being written (the node runs) is read next time.
    lines = text[:text.rfind("\n") + 1].splitlines()
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"node {node.id}: not a JSON line: {line!r}") from None
        assert isinstance(obj, dict) and BASE_KEYS <= set(obj), line
        assert obj["node"] == node.id, line
        out.append(obj)
    return out


def of(recs, kind):
    return [r for r in recs if r.get("event") == kind]


def test_json_logs_tell_the_start_the_elections_and_the_new_leader(tmp_path):
    secret_file = ensure_secret(str(tmp_path))
    secret = open(secret_file).read().strip()
    cluster = Cluster(str(tmp_path), n=3, extra_args=[
        "--log-format", "json", "--cluster-secret-file", secret_file])
    try:
        cluster.start()
        first = cluster.wait_leader()
        first_term = int(cluster.nodes[first].info()["raft_current_term"])
        cluster.nodes[first].kill()
        second = cluster.wait_leader(exclude=(first,))
        assert second != first
        second_term = int(cluster.nodes[second].info()["raft_current_term"])

        def told():
            # The survivors' lines naming the new leader are written by now
            # or very soon (a line is written when the event is handled).
            recs = {i: records(n) for i, n in cluster.nodes.items() if i != first}
            done = all(any(r["leader"] == second and r["term"] == second_term
                           for r in of(rs, "leader_changed")) for rs in recs.values())
            return recs if done else None
        survivors = until(told, "each survivor's leader_changed line", 15, 0.05)
    finally:
        cluster.stop()

    everything = {i: records(n) for i, n in cluster.nodes.items()}
    for i, recs in everything.items():
        # The start: what was recovered (a new data dir) and every setting.
        (recovered,) = of(recs, "recovered")
        assert (recovered["term"], recovered["last_index"], recovered["voters"]) == (0, 0,
                                                                                   [1, 2, 3])
        (settings,) = of(recs, "settings")
        shown = settings["settings"]
        assert shown["node_id"] == i and shown["log_format"] == "json"
        assert shown["cluster_secret_file"] == secret_file
        assert shown["election_timeout_ms"] == cluster.election_ms
        # The first leader, told by every node.
        assert any(r["leader"] == first and r["term"] == first_term
                   for r in of(recs, "leader_changed"))
        # The secret itself never, in any line.
        with open(cluster.nodes[i].log_path, encoding="utf-8") as f:
            assert secret not in f.read()

    # The first leader's own election, and the second one's.
    assert any(r["term"] == first_term for r in of(everything[first], "election_won"))
    started = of(survivors[second], "election_started")
    assert any(r["term"] == second_term and not r["pre_vote"] for r in started)
    assert any(r["term"] == second_term and r["pre_vote"] for r in started)
    won = [r for r in of(survivors[second], "election_won") if r["term"] == second_term]
    assert [r["pre_vote"] for r in won] == [True, False]
    assert won[-1]["logger"] == "raftfast.raft" and won[-1]["level"] == "info"
    # The change of leader, told by both survivors with the one before.
    for i, recs in survivors.items():
        change = [r for r in of(recs, "leader_changed") if r["term"] == second_term][-1]
        assert (change["leader"], change["previous"], change["previous_term"]) == (
            second, first, first_term)
