"""PySyncObj's settings for each load of `bench compare --against pysyncobj`:
the ones that suit the load, not the library's defaults, named in every row.

PySyncObj's defaults favour throughput: entries wait for the next
AppendEntries round (appendEntriesPeriod, 100 ms), batched.  A client that
waits for each reply then pays up to that period on every write, so light
loads (a few requests in flight in all) send each command at once
(appendEntriesUseBatch off) with a short period, and heavy loads keep the
batching with a short period, so that a batch leaves every few ms.
raftMinTimeout stays above three periods, as PySyncObj requires.

This module has no PySyncObj import: compare chooses the settings,
raftfast.bench.pysyncobj_node applies them.
"""

__all__ = ["PROFILES", "LIGHT_LOAD", "profile_for", "node_argv", "add_arguments",
           "conf_kwargs", "describe"]

# name -> SyncObjConf keyword arguments
PROFILES = {
    "unbatched": {"appendEntriesUseBatch": False, "appendEntriesPeriod": 0.01,
                  "raftMinTimeout": 0.4, "raftMaxTimeout": 1.4, "commandsWaitLeader": False},
    "batched": {"appendEntriesUseBatch": True, "appendEntriesPeriod": 0.005,
                "raftMinTimeout": 0.4, "raftMaxTimeout": 1.4, "commandsWaitLeader": False},
}
LIGHT_LOAD = 8  # requests in flight in all, at most, for the unbatched settings

# SyncObjConf name -> the node's flag
FLAGS = {"appendEntriesUseBatch": "--append-entries-use-batch",
         "appendEntriesPeriod": "--append-entries-period",
         "raftMinTimeout": "--raft-min-timeout", "raftMaxTimeout": "--raft-max-timeout",
         "commandsWaitLeader": "--commands-wait-leader"}


def profile_for(clients, pipeline):
    """The settings' name for a closed loop of clients x pipeline."""
    return "unbatched" if clients * (pipeline or 1) <= LIGHT_LOAD else "batched"


def node_argv(profile):
    """The pysyncobj_node flags of a profile."""
    out = []
    for name, value in PROFILES[profile].items():
        out += [FLAGS[name], ("yes" if value else "no") if isinstance(value, bool)
                else repr(value)]
    return out


def _yes_no(s):
    if s not in ("yes", "no"):
        raise ValueError(f"expected yes or no, got {s!r}")
    return s == "yes"


def add_arguments(p):
    """The node's flags, each defaulting to PySyncObj's own (None: not set)."""
    for name, flag in FLAGS.items():
        p.add_argument(flag, dest=name, metavar="V",
                       type=_yes_no if isinstance(PROFILES["batched"][name], bool) else float,
                       help=f"SyncObjConf {name} (default: PySyncObj's)")


def conf_kwargs(ns):
    """The SyncObjConf keyword arguments the node's flags set."""
    return {name: getattr(ns, name) for name in FLAGS if getattr(ns, name, None) is not None}


def describe(profile):
    """The settings as a row's note."""
    return "PySyncObj " + ", ".join(f"{k}={v}" for k, v in PROFILES[profile].items())
