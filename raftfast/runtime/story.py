"""The operator's story of one node, logged at info on `raftfast.raft`:
what it recovered and the settings it runs with, at start; then every
election (started, won, lost and why), leader change, step-down (and
why), vote, leadership transfer and committed membership change.

The core notes those transitions in `core.events` ((kind, fields) pairs,
raftfast/core/raft.py) as they happen, without I/O; the driver hands them
here after a Ready pass, only when the list is not empty, which it is
on every pass of the hot path.  Each record carries its event's fields
(raftfast.logs.event), so the JSON log holds them as keys.
"""
import dataclasses
import logging

from raftfast.logs import event

__all__ = ["Story", "describe", "settings"]

log = logging.getLogger("raftfast.raft")

# A setting whose name says it holds a secret is logged as hidden, unless
# it names the file the secret is in (as every secret setting does now).
_SECRET_WORDS = ("secret", "pass", "key", "token")


def settings(cfg):
    """Every setting of Config `cfg` as in force (a default that depends on
    the machine resolved), secrets hidden."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if (value is not None and any(w in f.name for w in _SECRET_WORDS)
                and not f.name.endswith("_file")):
            value = "(hidden)"
        out[f.name] = value
    out["advertise_client"] = cfg.client_advertised()
    out["maxmemory"] = cfg.effective_maxmemory()
    out["maxmemory_clients"] = cfg.effective_maxmemory_clients()
    out["unixsocketperm"] = format(cfg.unixsocketperm, "03o")
    return out


def _ids(values):
    return ",".join(map(str, values)) or "none"


def _leader(fields):
    prev = fields["previous"]
    before = (f"node {prev} in term {fields['previous_term']}" if prev
              else "no leader known")
    return f"node {fields['leader']} is the leader of term {fields['term']} (was {before})"


def _contest(fields):
    return "pre-vote" if fields["pre_vote"] else "election"


def _started(fields):
    how = " at the leader's request (leadership transfer)" if fields["transfer"] else ""
    return (f"{_contest(fields)} for term {fields['term']} started{how} (last log entry "
            f"{fields['last_index']} of term {fields['last_term']})")


def _won(fields):
    then = "; campaigning" if fields["pre_vote"] else ""
    return (f"{_contest(fields)} for term {fields['term']} won with votes from "
            f"{_ids(fields['votes'])}{then}")


_LOST = {
    "rejected": lambda f: "rejected by a majority",
    "timed_out": lambda f: "no majority answered within the election timeout",
    "higher_term": lambda f: f"node {f['frm']} is in the higher term {f['seen_term']}",
    "leader_elected": lambda f: f"node {f['leader']} leads already",
}


def _lost(fields):
    why = _LOST.get(fields["reason"], lambda f: f["reason"])(fields)
    return (f"{_contest(fields)} for term {fields['term']} lost: {why} (yes: "
            f"{_ids(fields['granted'])}; no: {_ids(fields['rejected'])})")


_STEP_DOWN = {
    "higher_term": lambda f: f"node {f['frm']} is in the higher term {f['seen_term']}",
    "check_quorum": lambda f: ("CheckQuorum: no word from a majority of the voters for an "
                               "election timeout"),
    "removed": lambda f: "removed from the configuration" + (
        f"; node {f['successor']} told to take over" if f["successor"] else ""),
    "transferred": lambda f: f"leadership transferred to node {f['successor']}",
}


def _stepped_down(fields):
    why = _STEP_DOWN.get(fields["reason"], lambda f: f["reason"])(fields)
    return f"stepped down as the leader of term {fields['term']}: {why}"


_CHANGES = {
    "learner_added": "node {nodes} added as a learner",
    "promoted": "node {nodes} promoted to voter",
    "voter_added": "node {nodes} added as a voter",
    "removed": "node {nodes} removed",
    "cluster_version": "cluster version raised to {cluster_version}",
    "learned": "this node learned the configuration it was added to",
    "unchanged": "no change of members",
}


def _membership(fields):
    change = _CHANGES.get(fields["change"], fields["change"]).format(
        nodes=_ids(fields["nodes"]), cluster_version=fields["cluster_version"])
    return (f"membership change committed at index {fields['index']}: {change}; voters "
            f"{_ids(fields['voters'])}, learners {_ids(fields['learners'])}")


def _transfer_abandoned(fields):
    why = ("it was removed" if fields["reason"] == "target_removed"
           else "not done within an election timeout")
    return f"leadership transfer to node {fields['target']} abandoned: {why}"


_MESSAGES = {
    "election_started": _started,
    "election_won": _won,
    "election_lost": _lost,
    "leader_changed": _leader,
    "stepped_down": _stepped_down,
    "vote_granted": lambda f: (f"voted for node {f['candidate']} in term {f['term']}"
                               + (" (leadership transfer)" if f["transfer"] else "")),
    "transfer_started": lambda f: (f"leadership transfer to node {f['target']} started in "
                                   f"term {f['term']} (its log at {f['match']} of "
                                   f"{f['last_index']})"),
    "transfer_abandoned": _transfer_abandoned,
    "membership_changed": _membership,
}


def describe(kind, fields):
    """The sentence an operator reads for a core event."""
    render = _MESSAGES.get(kind)
    if render is None:
        return f"{kind}: {fields}"
    return render(fields)


class Story:
    """Logs one node's story, handed its core (read, and its `events`
    drained) and its Config."""

    def __init__(self, core, cfg):
        self.core = core
        self.cfg = cfg

    def started(self):
        """The state the node recovered from its data dir, and its settings."""
        core = self.core
        lg = core.log
        node = core.id
        state = dict(term=core.term, vote=core.vote, first_index=lg.snap_index + 1,
                     last_index=lg.last_index, commit_index=lg.committed,
                     snapshot_index=core.snapshot_index, snapshot_term=core.snapshot_term,
                     voters=sorted(core.voters), learners=sorted(core.learners),
                     cluster_version=core.cluster_version)
        log.info("recovered: term %d, voted for %s, log %d..%d (committed %d), snapshot at "
                 "%d (term %d), voters %s, learners %s, cluster version %s",
                 core.term, core.vote or "nobody", lg.snap_index + 1, lg.last_index,
                 lg.committed, core.snapshot_index, core.snapshot_term,
                 _ids(state["voters"]), _ids(state["learners"]), core.cluster_version,
                 extra=event("recovered", node=node, **state))
        values = settings(self.cfg)
        log.info("settings: %s", " ".join(f"{k}={v}" for k, v in values.items()),
                 extra=event("settings", node=node, settings=values))

    def tell(self):
        """Log the events the core noted since the last call, and forget them."""
        core = self.core
        events, core.events = core.events, []
        node = core.id
        for kind, fields in events:
            log.info("%s", describe(kind, fields), extra=event(kind, node=node, **fields))
