"""A fresh data dir from a backup: one node, the only member of a new
cluster, whose state is the backup's snapshot.

A backup is a snapshot file (runtime/snapshot.py's format, as RAFT.BACKUP
streamed it), so it is verified the way a node verifies its own snapshots:
every chunk's CRC32C, the whole file's, the record counts, the end.  A
damaged or truncated file is refused before anything is written.

The new data dir holds:

    meta      the new node id and cluster id
    snap/     the backup's state, rewritten with the new configuration in
              its header (this node the only voter; the cluster version the
              backup was taken at), at the backup's index and term
    wal/      a log that continues after that snapshot (a reset record,
              as after an InstallSnapshot), and a hard state at the
              snapshot's term with the snapshot committed
    members   this node, for a data dir's consistency checks

Started with `python -m raftfast.node` (the same --id, --data-dir and
--cluster-id), the node elects itself and serves the data; members are
added with RAFT.NODE ADD and `--join` nodes, which receive the snapshot.
The index and term are kept so the node's log and INFO say where in the
old cluster's history the backup was taken; the new cluster id keeps the
old cluster's nodes and this one from ever talking to each other.
"""
import os
import secrets
from dataclasses import dataclass

from raftfast.core.messages import (ConfigFormatError, HardState, config_cluster_version,
                                    decode_config, encode_config)
from raftfast.runtime.data_dir import StorageError
from raftfast.runtime.kv_state_machine import KVStateMachine
from raftfast.runtime.snapshot import SnapshotError, load_snapshot
from raftfast.runtime.storage import Storage

__all__ = ["RestoreError", "Restored", "default_cluster_id", "restore"]


class RestoreError(Exception):
    """The backup cannot be restored there; the message says why, in one line."""


@dataclass(frozen=True)
class Restored:
    index: int            # the backup's last index, and its term
    term: int
    keys: int             # records (keys and sessions) it holds
    old_voters: frozenset  # the configuration it was taken in
    cluster_version: int


def default_cluster_id():
    """A new cluster id for a restore that names none: "restored-" and 8
    random hex digits, so that two restores of one backup are two clusters
    that refuse each other's nodes."""
    return "restored-" + secrets.token_hex(4)


def restore(backup_path, data_dir, node_id, cluster_id, fsync=True):
    """Make data_dir (absent or empty) a data dir of node_id, the only
    member of cluster_id, holding the backup's state; returns a Restored.
    RestoreError, with nothing written, when the backup is damaged or the
    dir is not empty."""
    data_dir = os.path.abspath(data_dir)
    if os.path.exists(data_dir):
        if not os.path.isdir(data_dir):
            raise RestoreError(f"{data_dir} exists and is not a directory")
        if os.listdir(data_dir):
            raise RestoreError(f"data dir {data_dir} is not empty: restore makes a fresh one "
                               "(pick a new directory)")
    try:
        kv, meta = load_snapshot(backup_path)
    except SnapshotError as e:
        raise RestoreError(f"{backup_path} is not a usable backup: {e}") from None
    try:
        old_voters = decode_config(meta.meta)[0]
        version = config_cluster_version(meta.meta)
    except ConfigFormatError as e:
        raise RestoreError(f"{backup_path} is not a usable backup: its configuration is "
                           f"unreadable ({e})") from None
    config = encode_config({node_id}, (), {}, version)
    try:
        storage = Storage.open(data_dir, node_id, cluster_id, fsync=fsync)
    except StorageError as e:
        raise RestoreError(str(e)) from None
    with storage:
        path = storage.incoming_snapshot_path()
        try:
            writer = KVStateMachine(kv).snapshot_writer(path, meta.index, meta.term, config)
            writer.run()
        except SnapshotError as e:
            raise RestoreError(f"cannot write the snapshot into {data_dir}: {e}") from None
        storage.install_snapshot(path, meta.index, meta.term)
        storage.save_hard_state(HardState(meta.term, 0, meta.index))
        storage.sync()
        storage.save_members([node_id], cluster_version=version)
    return Restored(meta.index, meta.term, meta.count, frozenset(old_voters), version)
