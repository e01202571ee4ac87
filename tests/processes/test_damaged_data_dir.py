"""A node started on a damaged data dir, as an operator would meet it.

Each test writes acknowledged data through a real node (a one-node cluster:
a SET is acknowledged only once it is committed, fsynced and applied),
stops it, damages the data dir the way a disk or an operator might, and
starts the node again.  Design principle 5 says what must happen:

* a torn last record (a write cut short by a crash) is repaired with a
  warning, and the node starts with every acknowledged entry;
* any other damage is a refusal to start: exit code 1, one clear line
  naming the damaged file and what is wrong with it (never a traceback),
  and the data dir left exactly as it was -- repairing by deleting could
  withdraw an acknowledged entry or make the node forget a vote.

The nodes run with small WAL segments (RAFTFAST_WAL_SEGMENT_BYTES) so that a
few dozen writes spread over several segments.
"""
import hashlib
import os
import shutil
import subprocess
import tempfile

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from raftfast.launcher.supervisor import NodeCommand, parse_ready, stop_processes
from tests.support.harness import free_ports
from tests.support.wait import until
from tests.reference import logrecord_py as ref

pytestmark = pytest.mark.multiprocess


SEGMENT = 16 << 10
ENV = {"RAFTFAST_WAL_SEGMENT_BYTES": str(SEGMENT)}  # on top of the test's own environment
VALUE_SIZE = 1000
KEYS = 60  # about 60 KiB of records: five segments of 16 KiB


class OneNode:
    """`python -m raftfast.node` as a cluster of one, on data dir `data`;
    `env` is added to its environment."""

    def __init__(self, data, env=ENV, prefix=()):
        self.data = data
        self.env = env
        self.prefix = list(prefix)  # e.g. nsenter, to run inside a mount namespace
        self.listen, self.client = free_ports(2)

    def command(self):
        return NodeCommand.node(
            ["--id", "1", "--data-dir", self.data,
             "--listen", f"tcp://127.0.0.1:{self.listen}",
             "--client", f"tcp://127.0.0.1:{self.client}",
             "--heartbeat-interval", "20", "--election-timeout", "200"],
            env=self.env, prefix=self.prefix)

    def run_refused(self):
        """Start it expecting a refusal: the finished process (a CompletedProcess)."""
        proc = self.command().start(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start(self):
        self.proc = self.command().start(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline()
        ready = parse_ready(line)
        if ready is None or ready.id != 1:
            rc = self.proc.wait(timeout=30)
            err = self.proc.stderr.read().decode()
            self._close_pipes()
            raise AssertionError(f"node did not start (exit {rc}): {line!r}\n{err}")
        self.redis = redis.Redis(host="127.0.0.1", port=self.client, socket_timeout=10)
        until(lambda: self.redis.info("raft")["raft_role"] == "leader",
              "a node alone to elect itself")
        return self

    def write_until_it_stops(self, items, never):
        """SET every (key, value) of `items` without ever resending one, until
        the node stops on its own; the keys it acknowledged, its exit code
        and its stderr.  Fails with `never` if every write succeeded."""
        client = redis.Redis(host="127.0.0.1", port=self.client, socket_timeout=10,
                             retry=Retry(NoBackoff(), 0))
        acknowledged = []
        try:
            for key, val in items:
                try:
                    assert client.set(key, val) is True
                except (redis.ConnectionError, redis.ResponseError) as e:
                    # The node stopping: the write in flight has an unknown outcome.
                    assert isinstance(e, redis.ConnectionError) or "TIMEOUT" in str(e), e
                    break
                acknowledged.append(key)
            else:
                pytest.fail(never)
            rc = self.proc.wait(timeout=30)
            err = self.proc.stderr.read().decode()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            client.close()
            self.redis.close()
            self._close_pipes()
        return acknowledged, rc, err

    def stop(self):
        """SIGTERM (SIGKILL after 30 s); returns (exit code, stderr)."""
        self.redis.close()
        rc, = stop_processes([self.proc], timeout=30)
        err = self.proc.stderr.read().decode()
        self._close_pipes()
        return rc, err

    def _close_pipes(self):
        self.proc.stdout.close()
        self.proc.stderr.close()


def value(i):
    return (b"value-%d-" % i).ljust(VALUE_SIZE, b"#")


@pytest.fixture
def data_dir():
    root = tempfile.mkdtemp(prefix="rfdmg")
    yield os.path.join(root, "data")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def written(data_dir):
    """A data dir holding KEYS acknowledged SETs, its node stopped cleanly."""
    node = OneNode(data_dir).start()
    try:
        for i in range(KEYS):
            assert node.redis.set(f"k{i}", value(i)) is True
    finally:
        rc, err = node.stop()
    assert rc == 0, err
    assert len(segments(data_dir)) >= 4, "the test needs a log of several segments"
    return data_dir


def wal(data_dir):
    return os.path.join(data_dir, "wal")


def segments(data_dir):
    """Paths of the WAL segments, oldest first."""
    return sorted(os.path.join(wal(data_dir), n) for n in os.listdir(wal(data_dir))
                  if n.endswith(".wal"))


def records(path):
    """[(offset, kind, fields)] of one segment, by the reference decoder."""
    with open(path, "rb") as f:
        buf = f.read()
    out, off, end = [], 0, ref.records_end(buf)
    while off < end:
        kind, fields, nxt = ref.decode(buf, off)
        out.append((off, kind, fields))
        off = nxt
    return out


def flip_bit(path, offset, bit=0):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def fingerprint(data_dir):
    """Every file of the data dir but LOCK (which a start rewrites with its
    pid, refused or not), with a digest of its bytes."""
    out = {}
    for dirpath, _, names in os.walk(data_dir):
        for n in names:
            p = os.path.join(dirpath, n)
            if os.path.relpath(p, data_dir) == "LOCK":
                continue
            with open(p, "rb") as f:
                out[os.path.relpath(p, data_dir)] = hashlib.sha256(f.read()).hexdigest()
    return out


def assert_refused(data_dir, *words):
    """Start a node on the damaged dir: exit 1, one line on stderr holding
    every one of `words`, no traceback, and the dir untouched."""
    before = fingerprint(data_dir)
    out = OneNode(data_dir).run_refused()
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert fingerprint(data_dir) == before, "a refused start changed the data dir"
    return lines[0]


def assert_all_acknowledged_data(node):
    got = node.redis.mget([f"k{i}" for i in range(KEYS)])
    assert got == [value(i) for i in range(KEYS)]


# ---- the one repair: a torn last record ------------------------------------

def test_torn_last_record_is_repaired_and_every_acknowledged_entry_kept(written):
    """The last write of a crashed node, cut short: its bytes reached the disk
    but not all of them, so its CRC cannot match and nothing intact follows.
    It was never acknowledged (that waits for the fsync), so zeroing it loses
    nothing; refusing to start would turn every crash into an outage."""
    last = segments(written)[-1]
    recs = records(last)
    end = recs[-1][0] + len(ref.encode(*_raw(recs[-1])))
    last_index = max(f[0] + f[2] - 1 for _, kind, f in _all_records(written) if kind == "entries")
    # An entries record for the next index (a SET of "torn"), half written.
    block = b"".join([(5).to_bytes(4, "little"), (1).to_bytes(8, "little"), b"\0", b"hello"])
    torn = ref.encode_entries(last_index + 1, block, 1)
    with open(last, "r+b") as f:
        f.seek(end)
        f.write(torn[:len(torn) // 2 + 3])
    node = OneNode(written).start()
    try:
        assert_all_acknowledged_data(node)
        assert node.redis.set("after", "repair") is True  # and it takes new writes
    finally:
        rc, err = node.stop()
    assert rc == 0
    warnings = [ln for ln in err.splitlines() if "torn last record" in ln]
    assert len(warnings) == 1 and os.path.basename(last) in warnings[0], err
    assert "WARNING" in warnings[0]
    # Repaired for good: the next start finds nothing to repair.
    node = OneNode(written).start()
    try:
        assert_all_acknowledged_data(node)
        assert node.redis.get("after") == b"repair"
    finally:
        rc, err = node.stop()
    assert rc == 0 and "torn" not in err


def _raw(rec):
    """(rtype, first_index, count, payload) to re-encode a decoded record."""
    _, kind, fields = rec
    if kind == "entries":
        first, block, count = fields
        return ref.ENTRIES, first, count, block
    return ref.HARD_STATE, 0, 0, ref._HS.pack(*fields)


def _all_records(data_dir):
    return [r for seg in segments(data_dir) for r in records(seg)]


# ---- refusals: the log --------------------------------------------------------

def test_flipped_bit_in_an_older_segment_is_refused(written):
    """One bit of an acknowledged entry, in a segment that is not the last:
    no crash tears a segment the log has already moved past, so it is
    damage, and neither dropping nor keeping the record is safe."""
    seg = segments(written)[1]
    off, kind, _ = next(r for r in records(seg) if r[1] == "entries")
    flip_bit(seg, off + ref.HEADER_SIZE + 20, bit=3)
    assert_refused(written, seg, f"byte offset {off}", "checksum mismatch")


def test_flipped_bit_in_the_last_segment_before_intact_records_is_refused(written):
    """Damage in the last segment is a torn tail only if nothing intact comes
    after it; here acknowledged records follow, which zeroing would withdraw."""
    seg = segments(written)[-1]
    entries = [r for r in records(seg) if r[1] == "entries"]
    assert len(entries) >= 2
    off = entries[0][0]
    flip_bit(seg, off + ref.HEADER_SIZE + 7)
    assert_refused(written, seg, f"byte offset {off}", "an intact record follows")


def test_damaged_term_and_vote_record_is_refused(written):
    """Term and vote live in hard-state records in the log (every segment
    starts with one).  Losing one could let the node vote twice in a term."""
    seg = segments(written)[2]
    off, kind, _ = records(seg)[0]
    assert kind == "hard_state"
    flip_bit(seg, off + ref.HEADER_SIZE + 1)  # inside the term
    assert_refused(written, seg, "byte offset 0", "checksum mismatch")


def test_older_segment_cut_short_is_refused(written):
    """A segment that is not the last, truncated in the middle of a record:
    the log went on past it, so the cut is damage, not a crash."""
    seg = segments(written)[1]
    recs = records(seg)
    off = recs[-1][0]
    os.truncate(seg, off + 10)
    assert_refused(written, seg, f"byte offset {off}", "incomplete record")


def test_missing_middle_segment_is_refused(written):
    segs = segments(written)
    os.unlink(segs[2])
    assert_refused(written, segs[2], "missing")


def test_missing_first_segment_is_refused(written):
    """With no snapshot, the log must start at index 1, so in segment 1.  A log
    that starts later has lost its head: without this check the node would
    start with a gap it cannot fill, or (if the lost segment held entries
    only) an empty-looking log and a term it keeps."""
    segs = segments(written)
    os.unlink(segs[0])
    assert_refused(written, segs[0], "missing")


def test_missing_only_segment_after_state_was_written_is_refused(data_dir):
    """All of the WAL gone, meta and members still there: a node that would
    start afresh from this dir would have forgotten its term and vote."""
    node = OneNode(data_dir).start()
    try:
        assert node.redis.set("k", "v") is True
    finally:
        assert node.stop()[0] == 0
    for seg in segments(data_dir):
        os.unlink(seg)
    assert_refused(data_dir, os.path.join(data_dir, "wal"), "the log is missing")


# ---- refusals: meta and members -------------------------------------------

# What each damage writes over the file (None: keep the first half).
IDENTITY_DAMAGE = {
    "meta": {"truncated": None, "not json": b"\x00\xffgarbage",
             "wrong shape": b'{"format": 1, "cluster_id": "raftfast"}', "empty": b""},
    "members": {"truncated": None, "not json": b"\x00\xffgarbage",
                "no voters": b'{"voters": []}', "bad id": b'{"voters": [0]}',
                "joining with voters": b'{"voters": [1], "join": true}',
                "join not true or false": b'{"voters": [], "join": 1}'},
}


@pytest.mark.parametrize("name,damage", [(n, d) for n, ds in IDENTITY_DAMAGE.items() for d in ds])
def test_a_damaged_identity_file_is_refused(written, name, damage):
    """meta says whose dir this is, members what a majority is: neither is
    guessed."""
    path = os.path.join(written, name)
    with open(path, "rb") as f:
        raw = f.read()
    new = IDENTITY_DAMAGE[name][damage]
    with open(path, "wb") as f:
        f.write(raw[:len(raw) // 2] if new is None else new)
    assert_refused(written, path, name)


def test_missing_meta_is_refused(written):
    """A log without the file that says whose it is: guessing could hand
    node 1's votes to node 2."""
    os.unlink(os.path.join(written, "meta"))
    assert_refused(written, os.path.join(written, "meta"), "no meta file")


def test_missing_members_is_refused(written):
    """The initial members come from the data dir, never from flags once it
    holds Raft state: without them the node could count votes wrongly."""
    path = os.path.join(written, "members")
    os.unlink(path)
    assert_refused(written, path, "missing")


# ---- the lock ------------------------------------------------------------------

def test_second_node_on_the_same_dir_is_refused_by_the_lock(written):
    first = OneNode(written).start()
    try:
        second = OneNode(written)
        out = second.run_refused()
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert out.returncode == 1
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        assert written in lines[0] and "locked by another running node" in lines[0]
        assert_all_acknowledged_data(first)  # the first one is unharmed
    finally:
        rc, err = first.stop()
    assert rc == 0, err


# ---- a full disk -----------------------------------------------------------------

class SmallDisk:
    """A tmpfs of `size` bytes at `path`, mounted in a mount namespace of its
    own (and a user namespace, so that no root is needed where unprivileged
    user namespaces are allowed).  A holder process keeps the namespace
    alive; commands run inside it through `nsenter`.  The mount vanishes
    with the holder, so a failed test cannot leave it behind."""

    def __init__(self, path, size):
        self.path = path
        if not (shutil.which("unshare") and shutil.which("nsenter")):
            pytest.skip("util-linux unshare/nsenter not installed")
        self.holder = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
             f'mount -t tmpfs -o size={size} tmpfs "$0" && echo mounted && exec cat', path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if self.holder.stdout.readline() != b"mounted\n":
            why = self.holder.stderr.read().decode().strip()
            self.close()
            pytest.skip(f"cannot mount a small tmpfs in a namespace here: {why}")

    def prefix(self):
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-U", "--preserve-credentials"]

    def run(self, *cmd):
        subprocess.run(self.prefix() + list(cmd), check=True, timeout=60)

    def close(self):
        self.holder.stdin.close()
        self.holder.wait(timeout=30)
        self.holder.stdout.close()
        self.holder.stderr.close()


@pytest.fixture
def small_disk():
    root = tempfile.mkdtemp(prefix="rfdisk")
    disk = SmallDisk(root, 4 << 20)
    yield disk
    disk.close()
    shutil.rmtree(root, ignore_errors=True)


def test_full_disk_stops_the_node_and_loses_no_acknowledged_write(small_disk):
    """Fill a 4 MiB disk.  Writes into a preallocated segment need no new
    room, so what runs out first is the background preparation of the next
    segment: that is a warning, and the roll takes a plain segment instead.
    Appending to it then fails with ENOSPC, and that stops the node: exit 1,
    the reason on stderr, no retry (the page cache may already have dropped
    what the failed write held).  With room made, the node restarts with
    every write it acknowledged."""
    data = os.path.join(small_disk.path, "data")
    ballast = os.path.join(small_disk.path, "ballast")
    small_disk.run("sh", "-c", f"head -c {1 << 20} /dev/zero > {ballast}")
    env = {**ENV, "RAFTFAST_WAL_SEGMENT_BYTES": str(256 << 10)}
    node = OneNode(data, env=env, prefix=small_disk.prefix()).start()
    big = b"x" * 4096
    acknowledged, rc, err = node.write_until_it_stops(
        ((f"k{i}", big) for i in range(2000)),  # 8 MiB: twice the disk
        "the disk never filled up")
    assert rc == 1, err
    assert len(acknowledged) > 100  # the disk did take writes before it filled
    assert "Traceback" not in err, err
    warned = [ln for ln in err.splitlines() if "log segment failed" in ln]
    assert warned and "No space left on device" in warned[0], err
    stops = [ln for ln in err.splitlines() if "CRITICAL" in ln]
    assert len(stops) == 1, err
    assert "storage write failed" in stops[0] and "No space left on device" in stops[0]
    assert "never retried" in stops[0]

    small_disk.run("rm", ballast)
    node = OneNode(data, env=env, prefix=small_disk.prefix()).start()
    try:
        got = node.redis.mget(acknowledged)
        assert got == [big] * len(acknowledged)
    finally:
        rc, err = node.stop()
    assert rc == 0, err


# ---- a failed fsync ------------------------------------------------------------------

FAILING_FDATASYNC = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* fdatasync, but from call number RF_FDATASYNC_OK + 1 on it fails with EIO,
   as a disk does when it cannot write back, and says so on stderr. */
static int calls;

int fdatasync(int fd) {
    static int (*real)(int);
    const char *ok = getenv("RF_FDATASYNC_OK");
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (ok && __atomic_add_fetch(&calls, 1, __ATOMIC_SEQ_CST) > atoi(ok)) {
        static const char msg[] = "shim: fdatasync fails with EIO\n";
        (void)!write(2, msg, strlen(msg));
        errno = EIO;
        return -1;
    }
    return real(fd);
}
"""


@pytest.fixture
def failing_fdatasync(tmp_path):
    """A shared object to LD_PRELOAD that makes fdatasync fail after a while."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the failing-fdatasync shim")
    src = tmp_path / "shim.c"
    src.write_text(FAILING_FDATASYNC)
    so = tmp_path / "shim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(so), str(src), "-ldl"], check=True)
    return str(so)


def test_failed_fsync_stops_the_node_and_is_never_retried(data_dir, failing_fdatasync):
    """The disk reports EIO on an fdatasync of the log.  The kernel may have
    dropped the dirty pages by then, so a retry that succeeded would claim
    durability for data that is gone: the node stops (exit 1) and says why,
    and the failing call is made exactly once.  The writes it acknowledged
    before were on disk, and a restart finds them all."""
    env = {**ENV, "LD_PRELOAD": failing_fdatasync, "RF_FDATASYNC_OK": "40"}
    node = OneNode(data_dir, env=env).start()
    # One fdatasync per SET: a hundred go well past the 40 that succeed.
    acknowledged, rc, err = node.write_until_it_stops(
        ((i, value(i)) for i in range(100)), "fdatasync never failed: is the shim loaded?")
    assert rc == 1, err
    assert "Traceback" not in err, err
    assert err.count("shim: fdatasync fails with EIO") == 1, err  # never retried
    stops = [ln for ln in err.splitlines() if "CRITICAL" in ln]
    assert len(stops) == 1 and "fsync failed" in stops[0], err
    assert "Input/output error" in stops[0] and "never retried" in stops[0]
    assert acknowledged, "nothing was acknowledged before the failure"

    node = OneNode(data_dir).start()  # the disk is well again
    try:
        got = node.redis.mget(acknowledged)
        assert got == [value(i) for i in acknowledged]
    finally:
        rc, err = node.stop()
    assert rc == 0, err


# ---- a data dir that holds a snapshot ----------------------------------------

def test_a_node_restarts_from_a_snapshot_plus_the_log_after_it(data_dir):
    """Snapshot the state machine offline at the commit index, compact the
    log behind it, restart: every key is back, from the snapshot and the
    entries after it, and INFO says where the log now begins.  (Written
    offline, so the test does not depend on when the node snapshots.)"""
    from raftfast.runtime.snapshot import write_snapshot
    from raftfast.runtime.storage import Storage

    node = OneNode(data_dir).start()
    try:
        for i in range(400):  # about 40 KiB of records: several 16 KiB segments
            assert node.redis.set(f"k{i}", "x" * 64) is True
    finally:
        assert node.stop()[0] == 0
    with Storage.open(data_dir, 1, "raftfast", segment_bytes=SEGMENT) as st:
        # Every entry was acknowledged, so committed: the hard state's commit
        # field is only rewritten with a term or vote, so do not rely on it.
        index = st.entry_log.last_index
        term = st.entry_log.term(index)
        # Replay the committed entries into a state machine, as the node would.
        from raftfast._kv import KVStore
        kv = KVStore()
        block, count = st.entry_log.slice(1, index + 1, 1 << 40)
        kv.apply(block, False)
        # A snapshot's meta is the configuration in effect at its index.
        from raftfast.core.messages import encode_config
        write_snapshot(kv, st.snapshot_path(index), index, term, encode_config([1]))
        dropped, _ = st.compact(index)
        assert dropped, "the log had whole segments behind the snapshot to drop"
    node = OneNode(data_dir).start()
    try:
        assert node.redis.get("k0") == b"x" * 64 and node.redis.get("k399") == b"x" * 64
        info = node.redis.info("raft")
        assert int(info["raft_snapshot_index"]) == index
        assert int(info["raft_first_log_index"]) == index + 1
        assert node.redis.set("after", "1") is True and node.redis.get("after") == b"1"
    finally:
        assert node.stop()[0] == 0


def test_a_snapshot_whose_configuration_is_unreadable_is_refused(written):
    """A snapshot's meta is the configuration in effect at its index: the
    node would not know who votes, so it does not guess."""
    from raftfast._kv import KVStore
    from raftfast.runtime.snapshot import write_snapshot
    from raftfast.runtime.storage import Storage
    with Storage.open(written, 1, "raftfast", segment_bytes=SEGMENT) as st:
        index = st.entry_log.last_index
        path = st.snapshot_path(index)
        write_snapshot(KVStore(), path, index, st.entry_log.term(index), b"\x07not a config")
    assert_refused(written, path, "configuration")
