"""A node's data directory: its files, its lock and its identity.

Layout::

    <data_dir>/
        LOCK      flock(2)ed exclusively while a node uses the dir (holds its pid, for operators)
        meta      JSON {"format": 1, "node_id": N, "cluster_id": "..."}; written once, atomically
        members   JSON {"voters": [...]}: the initial configuration, written once at
                  bootstrap (later configurations live in the log and snapshots);
                  {"voters": [], "join": true} for a node started with --join,
                  which begins outside the configuration and waits to be added
        wal/      the write-ahead log: hard state and entry batches (raftfast._logstore)
        snap/     snapshots of the state machine, snap-<index, 16 hex digits>.snap
                  (raftfast.runtime.snapshot's format); .<name>.<random>.tmp while one is written,
                  .snap-incoming.<random>.tmp while one is received from the leader

Every refusal is a StorageError whose message is fit for the operator: one
line naming the file and what is wrong.  The checks here read only: a dir
that is refused is left as it was found.  Storage (raftfast.runtime.storage)
puts these pieces together.
"""
import fcntl
import json
import os
import stat

from raftfast._logstore import segment_name, segment_numbers

__all__ = ["StorageError", "META_FORMAT", "LOCK_FILE", "META_FILE", "MEMBERS_FILE", "WAL_DIR",
           "SNAP_DIR", "fsync_dir", "write_atomically", "lock_data_dir", "snapshot_name",
           "snapshot_files", "check_files", "check_meta", "remove_snapshot_temps",
           "read_members", "read_members_cluster_version", "write_members", "describe_error"]

META_FORMAT = 1
LOCK_FILE = "LOCK"
META_FILE = "meta"
MEMBERS_FILE = "members"
WAL_DIR = "wal"
SNAP_DIR = "snap"


class StorageError(Exception):
    """The data dir cannot be used; the message says why (node exit code 1)."""


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path):
    """Create the directory at path and any missing parents, each 0700
    and made durable in its parent, up to the first that exists."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for d in reversed(missing):
        os.mkdir(d, 0o700)
        fsync_dir(os.path.dirname(d))


def check_dir_access(data_dir, warn):
    """StorageError when users other than the owner can write to data_dir
    (they could replace its log); warn(text) when they can read it (a data
    dir an older release created 0755)."""
    mode = stat.S_IMODE(os.stat(data_dir).st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StorageError(f"data dir {data_dir} is writable by other users (mode {mode:04o}); "
                           f"chmod 700 it")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warn(f"data dir {data_dir} is readable by other users (mode {mode:04o}); chmod 700 it")


def write_atomically(path, data):
    # tmp + fsync + rename + fsync(dir): the file is either absent or whole.
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path))


def lock_data_dir(data_dir):
    path = os.path.join(data_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StorageError(f"cannot lock data dir {data_dir}: {e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % os.getpid())
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"data dir {data_dir} is locked by another running node") from None
    except OSError as e:
        os.close(fd)
        raise StorageError(f"cannot lock data dir {data_dir}: {e}") from None
    return fd


def _listdir(path):
    """The names in a directory, none when it does not exist (yet)."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _wal_segments(data_dir):
    """Sequence numbers of the WAL segments present, sorted."""
    wal = os.path.join(data_dir, WAL_DIR)
    return segment_numbers(wal) if os.path.isdir(wal) else []


def snapshot_name(index):
    return "snap-%016x.snap" % index


def snapshot_files(data_dir):
    """[(index, path)] of the snapshot files in <data_dir>/snap, oldest first."""
    snap = os.path.join(data_dir, SNAP_DIR)
    out = []
    for n in _listdir(snap):
        if len(n) == 26 and n.startswith("snap-") and n.endswith(".snap"):
            try:
                index = int(n[5:21], 16)
            except ValueError:
                continue
            if snapshot_name(index) == n:  # int() also takes "+", "_", spaces
                out.append((index, os.path.join(snap, n)))
    out.sort()
    return out


def _snapshot_temps(data_dir):
    """Temporary files of snapshot writes that never finished (a crash)."""
    snap = os.path.join(data_dir, SNAP_DIR)
    return sorted(os.path.join(snap, n) for n in _listdir(snap)
                  if n.startswith(".snap-") and n.endswith(".tmp"))


def check_files(data_dir):
    """Refuse a data dir whose files cannot belong together, before anything
    in it is written.

    Bootstrap writes meta, then the log's first segment (made durable), then
    members; so members imply a log, and a log implies meta.  Segments are
    numbered without gaps.  Without a snapshot the log starts at index 1,
    in segment 1; compaction drops old segments only once a snapshot covers
    them, so a log starting later needs a snapshot.  Whether the snapshot
    reaches far enough is checked by index when the log is opened.
    """
    wal = os.path.join(data_dir, WAL_DIR)
    seqs = _wal_segments(data_dir)
    snaps = snapshot_files(data_dir)
    has_members = os.path.exists(os.path.join(data_dir, MEMBERS_FILE))
    if not os.path.exists(os.path.join(data_dir, META_FILE)) and (seqs or has_members or snaps):
        raise StorageError(f"{os.path.join(data_dir, META_FILE)}: no meta file, but the data dir "
                           "holds Raft state; refusing to guess whose it is")
    if not seqs:
        if has_members:
            raise StorageError(f"{wal}: the log is missing (no segment), but the data dir was "
                               "bootstrapped; starting afresh could make this node vote twice")
        return
    last = seqs[len(seqs) - 1]  # no negative index: compiled modules run with wraparound off
    for want, have in enumerate(seqs, seqs[0]):
        if want != have:
            raise StorageError(f"{os.path.join(wal, segment_name(want))}: log segment missing "
                               f"(the log has segments {seqs[0]}..{want - 1} and {have}..{last})")
    if seqs[0] != 1 and not snaps:
        raise StorageError(f"{os.path.join(wal, segment_name(1))}: log segment missing (the log "
                           f"starts at segment {seqs[0]}, and no snapshot covers what is before)")


def check_meta(data_dir, node_id, cluster_id):
    """Verify the dir's identity, or write it on first use."""
    path = os.path.join(data_dir, META_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        # check_files refused a dir holding state without its meta.
        meta = {"format": META_FORMAT, "node_id": node_id, "cluster_id": cluster_id}
        write_atomically(path, json.dumps(meta, sort_keys=True).encode() + b"\n")
        return
    try:
        meta = json.loads(raw.decode("utf-8"))
        fmt, stored_id, stored_cluster = meta["format"], meta["node_id"], meta["cluster_id"]
    except (ValueError, TypeError, KeyError) as e:
        raise StorageError(f"{path}: damaged meta file ({describe_error(e)})") from None
    if fmt != META_FORMAT:
        raise StorageError(f"{path}: data dir format {fmt!r}, this raftfast reads {META_FORMAT}")
    if stored_cluster != cluster_id or stored_id != node_id:
        raise StorageError(f"data dir {data_dir} belongs to node {stored_id} of cluster "
                           f"{stored_cluster!r}, not node {node_id} of cluster {cluster_id!r}")


def remove_snapshot_temps(data_dir, fsync):
    """Delete what snapshot writes cut short by a crash left (only once
    every check passed: a refused start changes nothing)."""
    temps = _snapshot_temps(data_dir)
    for path in temps:
        os.unlink(path)
    if temps and fsync:
        fsync_dir(os.path.join(data_dir, SNAP_DIR))


def describe_error(e):
    """What a JSON or lookup error says, in words."""
    if isinstance(e, KeyError):
        return f"no {e.args[0]!r} field"
    if isinstance(e, TypeError):
        return "not a JSON object"
    return str(e) or type(e).__name__


def read_members(data_dir, is_new):
    """The initial voters recorded at bootstrap (an empty list for a node
    that started with --join), or None before that (is_new: the dir holds
    no Raft state, so a missing file is expected)."""
    path = os.path.join(data_dir, MEMBERS_FILE)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
        voters = doc["voters"]
        joining = doc.get("join", False)
    except FileNotFoundError:
        if not is_new:
            raise StorageError(f"{path}: members file missing, but the data dir holds "
                               "Raft state") from None
        return None
    except OSError as e:
        raise StorageError(f"{path}: cannot read the members file: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise StorageError(f"{path}: damaged members file ({describe_error(e)})") from None
    if joining is True:
        # Started with --join: no voters at all, by design.
        if voters != []:
            raise StorageError(f"{path}: damaged members file (a joining node records "
                               "no voters)")
        return []
    if (joining is not False or not isinstance(voters, list) or not voters
            or not all(type(v) is int and 0 < v < 1 << 63 for v in voters)):
        raise StorageError(f"{path}: damaged members file (voters must be a non-empty "
                           "list of node ids)")
    return sorted(voters)


def read_members_cluster_version(data_dir):
    """The cluster version a data dir was bootstrapped at: 1 when its members
    file names none (written by raftfast 0.1.0), or for a joining node (it
    learns the cluster's from the log or snapshot it is sent)."""
    path = os.path.join(data_dir, MEMBERS_FILE)
    try:
        with open(path, "rb") as f:
            version = json.loads(f.read().decode("utf-8")).get("cluster_version", 1)
    except (OSError, ValueError, AttributeError) as e:
        raise StorageError(f"{path}: damaged members file ({describe_error(e)})") from None
    if type(version) is not int or not 1 <= version <= 0xFFFF:
        raise StorageError(f"{path}: damaged members file (cluster_version {version!r})")
    return version


def write_members(data_dir, voters, join=False, cluster_version=1):
    """Record the initial voters atomically, or with join=True that the node
    starts outside the configuration (and records no voters).  A new
    cluster starts at the cluster version of the release that creates it."""
    doc = {"voters": sorted(voters)}
    if join:
        doc["join"] = True
    elif cluster_version > 1:
        doc["cluster_version"] = cluster_version
    write_atomically(os.path.join(data_dir, MEMBERS_FILE), json.dumps(doc).encode())
