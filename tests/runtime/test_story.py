"""The operator's log, on simulated drivers: what a node logs at info when
it starts (the state it recovered, every setting), and for each election,
leader change, step-down, transfer, membership change and snapshot, with
the event's fields, read back through the JSON formatter as a log
shipper would."""
import dataclasses
import json
import logging
import sys

import pytest

from raftfast._kv import OP_SET, encode_commands
from raftfast.config import Config
from raftfast.core import LEADER
from raftfast.logs import JsonFormatter, event, text_formatter
from raftfast.runtime.story import describe, settings

from tests.support.simdriver import SimDrivers


@pytest.fixture
def events(caplog):
    """events(kind=None, node=None): the JSON objects of the records
    logged so far (those of that event, and that node, when given)."""
    caplog.set_level(logging.INFO, logger="raftfast")
    fmt = JsonFormatter()

    def select(kind=None, node=None):
        out = []
        for record in caplog.records:
            obj = json.loads(fmt.format(record))
            if (kind is None or obj.get("event") == kind) and (node is None
                                                               or obj["node"] == node):
                out.append(obj)
        return out
    return select


def write(sim, leader, lo, hi):
    answers = []
    cmds = [(OP_SET, [b"k%d" % j, b"v%d" % j]) for j in range(lo, hi)]
    leader.propose(encode_commands(cmds), len(cmds), answers.append)
    sim.loop.run_until(lambda: answers, 2.0, "the write's answer")


def test_a_start_logs_the_recovered_state_and_every_setting(tmp_path, events):
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        write(sim, leader, 0, 10)
        term = leader.core.term
    # Started again on the same data dirs: each recovers its term and log.
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        recovered = events("recovered", node=1)
        assert len(recovered) == 2
        first, again = recovered
        assert first["term"] == 0 and first["last_index"] == 0 and first["vote"] == 0
        assert again["term"] >= term and again["last_index"] >= 11
        assert again["first_index"] == 1 and again["snapshot_index"] == 0
        assert again["voters"] == [1, 2, 3] and again["learners"] == []
        assert again["level"] == "info" and again["logger"] == "raftfast.raft"
        assert f"term {again['term']}" in again["message"]
        shown = events("settings", node=2)[-1]["settings"]
        assert set(shown) == {f.name for f in dataclasses.fields(Config)}
        cfg = sim.nodes[2].cfg
        assert shown["data_dir"] == cfg.data_dir
        assert shown["heartbeat_interval_ms"] == cfg.heartbeat_interval_ms
        assert shown["maxmemory"] == cfg.effective_maxmemory() > 0  # as in force


def test_settings_show_secret_files_by_name_only(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cr3t-contents-0123456789")
    cfg = Config(node_id=1, data_dir=str(tmp_path), listen="unix:///x.sock",
                 client="tcp://127.0.0.1:1", cluster_secret_file=str(secret))
    shown = settings(cfg)
    assert shown["cluster_secret_file"] == str(secret)
    assert "s3cr3t" not in json.dumps(shown, default=str)


def test_an_election_won_is_told_by_every_node(tmp_path, events):
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        me, term = leader.core.id, leader.core.term
        sim.loop.advance(0.1)  # the followers hear of it
        started = events("election_started", node=me)
        assert [e["pre_vote"] for e in started[-2:]] == [True, False]
        assert started[-1]["term"] == term
        won = events("election_won", node=me)[-1]
        assert won["term"] == term and not won["pre_vote"] and me in won["votes"]
        assert len(won["votes"]) >= 2
        for node in (1, 2, 3):
            change = events("leader_changed", node=node)[-1]
            assert change["leader"] == me and change["term"] == term
            assert change["previous"] == 0
        voters = {e["node"] for e in events("vote_granted") if e["candidate"] == me}
        assert voters and me not in voters


def test_check_quorum_step_down_and_the_next_leader_are_told(tmp_path, events):
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        old = sim.wait_leader()
        me, term = old.core.id, old.core.term
        sim.net.drop = lambda m: me in (m.frm, m.to)  # the leader is cut off
        sim.loop.run_until(lambda: not old.is_leader and sim.leader() is not None, 5.0,
                           "a new leader")
        sim.loop.run_ready()
        down = events("stepped_down", node=me)
        assert [(e["reason"], e["term"]) for e in down] == [("check_quorum", term)]
        assert "CheckQuorum" in down[0]["message"]
        new = sim.leader()
        change = events("leader_changed", node=new.core.id)[-1]
        assert (change["leader"], change["previous"]) == (new.core.id, me)
        assert change["term"] > change["previous_term"] == term
        # Back in touch, the old leader hears of the new one.
        sim.net.drop = None
        sim.loop.run_until(lambda: old.core.leader_id == new.core.id, 2.0, "the old leader back")
        sim.loop.run_ready()
        change = events("leader_changed", node=me)[-1]
        assert (change["leader"], change["term"]) == (new.core.id, new.core.term)


def test_a_transfer_is_told_by_both_ends(tmp_path, events):
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        me, term = leader.core.id, leader.core.term
        target = min(i for i in sim.nodes if i != me)
        answers = []
        leader.transfer_leadership(target, answers.append)
        sim.loop.run_until(lambda: answers, 2.0, "the transfer's answer")
        sim.loop.run_ready()
        assert events("transfer_started", node=me)[-1]["target"] == target
        down = events("stepped_down", node=me)[-1]
        assert (down["reason"], down["successor"], down["term"]) == ("transferred", target, term)
        started = events("election_started", node=target)[-1]
        assert started["transfer"] and not started["pre_vote"] and started["term"] == term + 1
        assert events("election_won", node=target)[-1]["term"] == term + 1


def test_a_committed_membership_change_is_told_with_the_members_it_leaves(tmp_path, events):
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        me = leader.core.id
        gone = max(i for i in sim.nodes if i != me)
        answers = []
        index = leader.change_membership("remove", gone, "", answers.append)
        sim.loop.run_until(lambda: answers, 2.0, "the change applied")
        sim.loop.advance(0.1)  # the other follower commits it too
        for node in sim.nodes:
            if node == gone:
                continue
            change = events("membership_changed", node=node)[-1]
            assert (change["change"], change["nodes"], change["index"]) == ("removed", [gone],
                                                                             index)
            assert change["voters"] == sorted(set(sim.nodes) - {gone})
            assert change["learners"] == []
            assert f"node {gone} removed" in change["message"]


def test_snapshots_taken_sent_and_installed_are_told(tmp_path, events):
    with SimDrivers(tmp_path, voters=(1, 2, 3), snapshot_entries=50,
                    snapshot_trailing=0) as sim:
        leader = sim.wait_leader()
        me = leader.core.id
        behind = max(i for i in sim.nodes if i != me)
        sim.net.drop = lambda m: behind in (m.frm, m.to)
        for lo in range(0, 200, 20):
            write(sim, leader, lo, lo + 20)
        sim.loop.run_until(lambda: leader.core.log.snap_index > 0, 5.0, "a compaction")
        sim.net.drop = None
        sim.loop.run_until(lambda: sim.nodes[behind].snapshots.installed >= 1
                           and leader.snapshots.sent >= 1, 10.0, "the snapshot sent and installed")
        sim.loop.run_ready()
        taken = events("snapshot_taken", node=me)
        assert taken and taken[-1]["index"] >= 50 and taken[-1]["bytes"] > 0
        assert taken[-1]["keys"] > 0 and taken[-1]["ms"] >= 0
        sent = events("snapshot_sent", node=me)[-1]
        assert sent["peer"] == behind and sent["bytes"] > 0
        installed = events("snapshot_installed", node=behind)[-1]
        assert installed["leader"] == me and installed["index"] == sent["index"]
        assert installed["bytes"] == sent["bytes"]


def test_every_core_event_reads_as_a_sentence():
    text = describe("stepped_down", {"term": 4, "reason": "higher_term", "frm": 2,
                                     "seen_term": 5})
    assert text == "stepped down as the leader of term 4: node 2 is in the higher term 5"
    text = describe("election_lost", {"term": 3, "pre_vote": True, "reason": "timed_out",
                                      "granted": [1], "rejected": []})
    assert text.startswith("pre-vote for term 3 lost: no majority answered")


def test_a_json_record_is_one_line_and_an_event_field_never_hides_a_base_key():
    logger = logging.getLogger("raftfast.test")
    try:
        raise ValueError("two\nlines")
    except ValueError:
        record = logger.makeRecord("raftfast.test", logging.ERROR, __file__, 1,
                                   "failed: %s", ("a\nb",), sys.exc_info(),
                                   extra=event("demo", term=3, level="not this", node=5))
    line = JsonFormatter(node_id=1).format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert (obj["level"], obj["node"], obj["event"], obj["term"]) == ("error", 5, "demo", 3)
    assert obj["message"] == "failed: a\nb" and "ValueError: two\nlines" in obj["exception"]
    text = text_formatter(1).format(record)
    assert " node1 ERROR raftfast.test: failed: a" in text


def test_replication_notes_nothing(tmp_path, events):
    """Steady replication (appends, acknowledgements, heartbeats, commits)
    notes no event: nothing reaches the story per entry or per message."""
    with SimDrivers(tmp_path, voters=(1, 2, 3)) as sim:
        leader = sim.wait_leader()
        sim.loop.advance(0.1)
        before = len(events())
        for lo in range(0, 300, 30):
            write(sim, leader, lo, lo + 30)
        sim.loop.advance(0.5)  # heartbeats
        assert events()[before:] == []
        assert all(d.core.events == [] for d in sim.nodes.values())
