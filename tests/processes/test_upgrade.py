"""A rolling upgrade from raftfast 0.1.0 under load, the roll back of a
half-done one, and the second roll that gives the cluster a secret
(docs/operations.md, "Rolling upgrade").

The 0.1.0 nodes run the release tagged v0.1.0, built beside this tree: the
release's files (the tag, or the commit it names where a clone came
without tags) are extracted and their extensions built once into a cache
directory (RAFTFAST_RELEASE_CACHE, default ~/.cache/raftfast-releases),
which takes a couple of minutes the first time.  That is why these tests
are behind the `upgrade` marker: `python -m pytest -m upgrade`.
RAFTFAST_OLD_RELEASE names an already built tree of 0.1.0 instead.
"""
import os
import shutil
import subprocess
import sys

import pytest
import redis

from tests.support.harness import Cluster, NodeProc
from tests.support.rolling import Writer, check_every_acked_write, replace_node, wait_caught_up
from tests.support.wait import until

pytestmark = [pytest.mark.upgrade, pytest.mark.multiprocess]

OLD_TAG = "v0.1.0"
# The commit the tag names: a clone made without tags still has it.
OLD_COMMIT = "0f717538f6049a2b5b58db297dbfb3eecbd0d854"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSION_ERROR = b"needs every node on raftfast 0.2.0"


def _old_release_commit():
    """The commit of 0.1.0 in this clone, or a skip: the tag where it came
    with the clone (and must name OLD_COMMIT), else OLD_COMMIT itself."""
    def resolve(ref):
        found = subprocess.run(["git", "-C", REPO, "rev-parse", "-q", "--verify", ref],
                               capture_output=True, text=True)
        return found.stdout.strip() if found.returncode == 0 else None

    tagged = resolve(f"refs/tags/{OLD_TAG}^{{commit}}")
    if tagged is not None:
        assert tagged == OLD_COMMIT, f"{OLD_TAG} names {tagged}, not the 0.1.0 release {OLD_COMMIT}"
        return tagged
    if resolve(f"{OLD_COMMIT}^{{commit}}") is None:
        pytest.skip(f"neither {OLD_TAG} nor its commit {OLD_COMMIT[:12]} is in this clone")
    return OLD_COMMIT


def _build_old_release():
    """A tree of OLD_TAG with its extensions built in place, or a skip."""
    given = os.environ.get("RAFTFAST_OLD_RELEASE")
    if given:
        return given
    cache = os.environ.get("RAFTFAST_RELEASE_CACHE",
                           os.path.expanduser("~/.cache/raftfast-releases"))
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    tree = os.path.join(cache, f"{OLD_TAG}-{py}")
    done = os.path.join(tree, ".built")
    if os.path.exists(done):
        return tree
    release = _old_release_commit()
    shutil.rmtree(tree, ignore_errors=True)
    os.makedirs(tree)
    archive = subprocess.run(["git", "-C", REPO, "archive", release], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"],
                   cwd=tree, check=True, capture_output=True)
    open(done, "w").close()
    return tree


@pytest.fixture(scope="module")
def old_release():
    return _build_old_release()


class ReleaseNode(NodeProc):
    """A node run from another release's tree (None: this tree).  It starts
    in that tree, with only that tree on its path, so nothing of this tree
    is imported."""

    def __init__(self, cluster, node_id, tree, extra_args=()):
        super().__init__(cluster, node_id, extra_args)
        self.tree = tree

    def argv(self):
        line = super().argv()
        if self.tree is None:
            return line
        return ["env", f"--chdir={self.tree}", f"PYTHONPATH={self.tree}", *line]


def _cluster_version(node):
    info = node.info()
    return int(info.get("raft_cluster_version", 1))   # 0.1.0 has no such field


def test_a_rolling_upgrade_under_load_and_the_roll_back_of_a_half_done_one(tmp_path, old_release):
    extra = ("--snapshot-entries", "300", "--snapshot-trailing", "50")
    cluster = Cluster(str(tmp_path), n=3, heartbeat_ms=50, election_ms=500)
    for i in cluster.ids:
        cluster.nodes[i] = ReleaseNode(cluster, i, old_release, extra)
    cluster.start()
    writer = Writer(cluster)
    try:
        cluster.wait_leader()
        writer.start()
        until(lambda: len(writer.acked) > 300, "300 writes on 0.1.0", 60)

        # One node on this release: it follows, and the cluster stays at
        # version 1, so a leader of this release refuses what 0.1.0 cannot apply.
        first = next(i for i in cluster.ids if i != cluster.wait_leader())
        replace_node(cluster, first, lambda old: ReleaseNode(cluster, first, None, old.extra))
        assert _cluster_version(cluster.nodes[first]) == 1
        lid = cluster.wait_leader()
        assert cluster.nodes[lid].raw("RAFT.TRANSFER_LEADER", str(first)) == b"+OK"
        new_leader = cluster.nodes[first]
        assert new_leader.client().append("a", "x") == 1     # 0.1.0's commands still work
        with pytest.raises(redis.ResponseError, match="needs every node on raftfast 0.2.0"):
            new_leader.client().set("e", "1", ex=100)
        count = len(writer.acked)
        until(lambda: len(writer.acked) > count + 300, "300 writes with a 0.2 leader", 60)

        # Roll back: the same data dir under 0.1.0 again, snapshots and all.
        replace_node(cluster, first, lambda old: ReleaseNode(cluster, first, old_release, old.extra))
        count = len(writer.acked)
        until(lambda: len(writer.acked) > count + 100, "writes after the roll back", 60)

        # The whole upgrade, one node at a time, the leader last.
        order = sorted(cluster.ids, key=lambda i: i == cluster.wait_leader())
        for i in order:
            replace_node(cluster, i, lambda old: ReleaseNode(cluster, old.id, None, old.extra))
            count = len(writer.acked)
            until(lambda: len(writer.acked) > count + 100, f"writes after node {i}", 60)
        until(lambda: all(_cluster_version(n) == 2 for n in cluster.nodes.values()),
              "the cluster version to reach 2 on every node", 30)
        lid = cluster.wait_leader()
        c = cluster.nodes[lid].client()
        assert c.set("e", "1", ex=100) is True and 0 < c.ttl("e") <= 100
        assert c.get("a") == b"x"
        lines = "".join(n.log_tail(400) for n in cluster.nodes.values())
        assert "cluster version 1 -> 2" in lines

        # Past the raise there is no way back: 0.1.0 refuses the data dir
        # (it cannot read what is in it now) instead of misreading it, and
        # the node comes back on this release as it was.
        follower = next(i for i in cluster.ids if i != cluster.wait_leader())
        assert cluster.nodes[follower].kill(15) == 0
        old = ReleaseNode(cluster, follower, old_release, extra).start(wait_ready=False)
        assert old.proc.wait(timeout=60) == 1
        old.proc.stdout.close()
        cluster.nodes[follower] = ReleaseNode(cluster, follower, None, extra).start()
        wait_caught_up(cluster, follower)

        # The second roll: 0.1.0 had no cluster secret; the upgraded cluster
        # gets one, first letting in peers without it, then requiring it.
        secret = tmp_path / "cluster.secret"
        secret.write_bytes(b"a-secret-the-first-release-never-had")
        secret.chmod(0o600)
        for flags in (["--cluster-secret-file", str(secret), "--cluster-secret-optional"],
                      ["--cluster-secret-file", str(secret)]):
            lid = cluster.wait_leader()
            for i in sorted(cluster.ids, key=lambda i: i == lid):
                replace_node(cluster, i, lambda old: ReleaseNode(cluster, old.id, None,
                                                                 [*extra, *flags]))
            count = len(writer.acked)
            until(lambda: len(writer.acked) > count + 100, f"writes after the roll to {flags}", 60)
        writer.stop()
        assert len(writer.acked) > 1000
        check_every_acked_write(cluster, writer)
    finally:
        writer.stop()
        cluster.stop()
