"""--force-new-cluster: one surviving node becomes the only member of its
configuration, after a majority of the cluster was lost for good.

Without a majority a Raft cluster makes no progress, by design (the
contract's promise that nothing acknowledged is lost rests on it).  When
the lost nodes will never come back, the operator trades that promise for
availability: the survivor rewrites its own data dir so that it alone is a
majority, and the others are rebuilt from it.  This is etcd's
--force-new-cluster, done the same way on the data dir, before the node
starts:

1. The configuration the node holds (its snapshot's, then the newest
   configuration entry in its log) is read.  Already exactly this node as
   the only voter: nothing to do (a restart with the flag left on).
2. Otherwise one ENTRY_CONFIG entry is appended after the last entry of
   the log, holding voters {this node}, no learners, and the cluster
   version the log had; it is written in a new term (the stored term plus
   one; the vote is the node's own), so it belongs to no earlier leader's
   history.
3. The hard state's commit index is set to that entry's index: every
   entry in the log, including those past the commit index this node knew,
   is committed from now on.  etcd does the same, and for the same reason:
   an entry past the known commit index may have been committed by the
   lost majority and acknowledged to its client (a follower learns of a
   commit only with the leader's next message), so dropping it could lose
   an acknowledged write; and no client was ever told such an entry failed
   (a write whose fate was not known got -TIMEOUT outcome unknown, or lost
   its connection), so applying it breaks no promise.
4. All of it is made durable (one log record and the hard state, fsynced)
   before the node goes on, so a restart without the flag finds the same
   single-member configuration in the log, and a crash part-way leaves
   either the old log (run the flag again) or the new one.

What cannot be recovered is what this node never received: entries the
lost majority committed (and acknowledged) after this node's last log
entry.  The warning logged says so, with the indexes.

The lost members must never come back with their old data dirs: they may
hold a longer log and a higher term from the old cluster, and the rebuilt
cluster does not count them.  They rejoin with fresh data dirs and new ids
(RAFT.NODE ADD, then --join), as any node that lost its data dir does.
"""
import logging
import os

from raftfast.core.messages import (ENTRY_CONFIG, ENTRY_HEADER_SIZE, ConfigFormatError, HardState,
                                    config_cluster_version, decode_config, encode_config)
from raftfast.runtime.data_dir import META_FILE, StorageError

__all__ = ["ForcedConfiguration", "force_new_cluster", "current_configuration", "describe",
           "refuse_missing_state"]

log = logging.getLogger("raftfast.node")


class ForcedConfiguration:
    """What force_new_cluster did (or found already done)."""

    __slots__ = ("changed", "old_voters", "old_learners", "known_commit", "last_index",
                 "index", "term", "cluster_version")

    def __init__(self, changed, old_voters, old_learners, known_commit, last_index, index,
                 term, cluster_version):
        self.changed = changed            # False: it was the only member already
        self.old_voters = old_voters      # the configuration it replaced
        self.old_learners = old_learners
        self.known_commit = known_commit  # the commit index this node knew before
        self.last_index = last_index      # the last entry it held before
        self.index = index                # the new configuration entry's index
        self.term = term                  # ... and its term
        self.cluster_version = cluster_version


def current_configuration(storage):
    """(voters, learners, cluster version) the node would start with: its
    snapshot's or members file's configuration, then the newest
    configuration entry in its log that decodes with voters (the core
    skips others the same way)."""
    voters, learners, _, version = storage.configuration()
    entries = storage.entry_log
    lo, hi = storage.snap_index + 1, entries.last_index
    if hi >= lo:
        for _, data in reversed(entries.find_type(lo, hi + 1, ENTRY_CONFIG)):
            try:
                v, ls, _ = decode_config(data)
            except ConfigFormatError:
                continue
            if v:
                return frozenset(v), frozenset(ls), config_cluster_version(data)
    return frozenset(voters), frozenset(learners), version


def force_new_cluster(storage, node_id):
    """Make node_id the only voter of storage's configuration (see the
    module's docstring); returns a ForcedConfiguration.  StorageError when
    the data dir holds nothing to recover from (a new dir, or a node that
    was waiting to join).  The caller reopens the storage afterwards, so
    the core starts from what a restart would read."""
    if storage.is_new:
        raise StorageError(f"--force-new-cluster: data dir {storage.data_dir} holds no Raft "
                           "state to recover from")
    voters, learners, version = current_configuration(storage)
    if not voters:
        raise StorageError(f"--force-new-cluster: node {node_id} was started with --join and "
                           "never added: its data dir holds no state to recover from")
    hs = storage.hard_state
    last = storage.entry_log.last_index
    if last < storage.snap_index:
        last = storage.snap_index
    if voters == {node_id} and not learners:
        return ForcedConfiguration(False, voters, learners, hs.commit, last, 0, hs.term, version)
    data = encode_config({node_id}, (), {}, version)
    term = hs.term + 1
    block = (len(data).to_bytes(4, "little") + term.to_bytes(8, "little")
             + bytes([ENTRY_CONFIG]) + data)
    assert len(block) == ENTRY_HEADER_SIZE + len(data)
    index = last + 1
    storage.append(index, block, 1)
    storage.save_hard_state(HardState(term, node_id, index))
    storage.sync()
    return ForcedConfiguration(True, voters, learners, hs.commit, last, index, term, version)


def describe(forced, node_id, cluster_id):
    """The WARNING (or, when nothing changed, INFO) line for the node's log."""
    others = sorted((forced.old_voters | forced.old_learners) - {node_id})
    names = ",".join(map(str, others)) or "none"
    if not forced.changed:
        return (f"--force-new-cluster: node {node_id} is already the only member of cluster "
                f"{cluster_id!r}; nothing changed (remove the flag: it is needed once)")
    unknown = forced.last_index - forced.known_commit
    past = (f"entries {forced.known_commit + 1}..{forced.last_index}, which this node had "
            f"not known to be committed, are committed now (the old majority may have "
            f"acknowledged them, or their clients were told the outcome is unknown)"
            if unknown > 0 else "every entry it held was known to be committed")
    return (f"--force-new-cluster: node {node_id} is now the only member of cluster "
            f"{cluster_id!r} (it was one of voters {','.join(map(str, sorted(forced.old_voters)))}"
            f"; learners {','.join(map(str, sorted(forced.old_learners))) or 'none'}), by the "
            f"configuration entry at index {forced.index}, term {forced.term}. Its log held "
            f"entries through index {forced.last_index}; {past}. LOST for good: every write the "
            f"old majority committed after index {forced.last_index}, which this node never "
            f"received, even if it was acknowledged to a client. Never restart nodes {names} "
            f"with their old data dirs: add members back with RAFT.NODE ADD and --join, under "
            f"new ids and fresh data dirs. Remove --force-new-cluster from this node's command "
            f"line: the change is durable, and the flag would remove members added since")


def refuse_missing_state(data_dir):
    """StorageError, before anything is created, when data_dir is not a
    node's data dir at all (no meta file): there is nothing to force."""
    if not os.path.exists(os.path.join(data_dir, META_FILE)):
        raise StorageError(f"--force-new-cluster: {data_dir} is not a node's data dir (no "
                           f"{META_FILE} file); there is nothing to recover from")
