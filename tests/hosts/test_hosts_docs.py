"""docs/operations.md, "The same on one machine, with network namespaces",
run as written: its shell blocks, in one bash, with names, the net and
paths of this run's own (so runs side by side do not meet), checked from
here over its uplink between the steps.  Skipped where the machine does
not allow network namespaces, as tests/hosts/test_hosts.py is."""
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile

import pytest

from raftfast.client import Client
from raftfast.launcher import certs
from raftfast.resp_client import info_sync, leader_of
from tests.support import REPO
from tests.support.netns import NETNS_DIR, free_net, ip, unavailable_reason
from tests.support.wait import until

pytestmark = pytest.mark.multiprocess

SECTION = "### The same on one machine, with network namespaces"
MARK = "__block_done__"


def doc_blocks():
    """The section's ```sh blocks: network, nodes, cut and heal, teardown."""
    with open(os.path.join(REPO, "docs", "operations.md")) as f:
        text = f.read()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 4, f"expected 4 shell blocks in {SECTION!r}, found {len(blocks)}"
    return blocks


class Shell:
    """One bash, fed the blocks one at a time (its background jobs, the
    nodes, are its own: the docs' teardown stops them with `jobs -p`)."""

    def __init__(self, env):
        self.proc = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.output = []

    def run(self, script):
        self.proc.stdin.write(f"{script}\necho {MARK} $?\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("bash ended mid-block:\n" + "".join(self.output))
            if line.startswith(MARK):
                return int(line.split()[1])
            self.output.append(line)

    def close(self):
        """Stop whatever it still runs in the background, then bash itself."""
        if self.proc.poll() is None:
            self.proc.stdin.write("kill $(jobs -p) 2>/dev/null; wait; exit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        self.proc.stdout.close()


class Names:
    """The docs' names and addresses, made this run's own."""

    def __init__(self, root):
        self.tag = secrets.token_hex(3)
        self.net = free_net()
        self.root = root

    def ns(self, name):            # rf-sw, rf-1 ...
        return f"rf{self.tag}-{name}"

    @property
    def uplink(self):
        return self.ns("uplink")

    def addr(self, i):
        return f"10.77.{self.net}.{i}"

    def apply(self, block):
        python = shlex.quote(sys.executable)
        return (block.replace("rf-", f"rf{self.tag}-")
                .replace("10.77.0.", f"10.77.{self.net}.")
                .replace("/tmp/rf3", f"{self.root}/rf3")
                .replace("pki/", f"{self.root}/pki/")
                .replace("python -m raftfast", f"{python} -m raftfast"))

    def leftovers(self):
        left = [n for n in map(self.ns, ("sw", "1", "2", "3"))
                if os.path.exists(os.path.join(NETNS_DIR, n))]
        if f" {self.uplink}@" in ip("-o", "link", "show"):
            left.append(self.uplink)
        return left

    def remove_leftovers(self):
        if f" {self.uplink}@" in ip("-o", "link", "show"):
            ip("link", "del", self.uplink)
        for n in self.leftovers():
            ip("netns", "del", n)


@pytest.fixture
def run_docs():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"three hosts need network namespaces: {reason}")
    root = tempfile.mkdtemp(prefix="rf")
    names = Names(root)
    shell = Shell(dict(os.environ, PYTHONPATH=REPO))
    yield names, shell
    shell.close()
    names.remove_leftovers()
    shutil.rmtree(root, ignore_errors=True)


def test_the_namespace_walkthrough_in_operations_md_runs_as_written(run_docs):
    names, shell = run_docs
    net_block, nodes_block, cut_block, teardown_block = map(names.apply, doc_blocks())
    pki = os.path.join(names.root, "pki")
    os.mkdir(pki, 0o700)
    ca = certs.make_ca(pki)
    for i in (1, 2, 3):
        certs.issue(pki, f"node{i}", ca, hosts=(names.addr(i),))
    with open(os.path.join(pki, "cluster.secret"), "w") as f:
        f.write(secrets.token_hex(32) + "\n")

    rc = shell.run(net_block)
    if rc != 0 and not os.path.exists(os.path.join(NETNS_DIR, names.ns("sw"))):
        pytest.skip("the machine refused the namespaces: " + "".join(shell.output[-5:]))
    assert rc == 0, "".join(shell.output)
    assert shell.run(nodes_block) == 0, "".join(shell.output)

    urls = [f"{names.addr(i)}:7001" for i in (1, 2, 3)]

    def agreed(ids):
        infos = {i: info_sync(urls[i - 1], "raft", timeout=2) for i in ids}
        lid = leader_of(infos)
        return lid if lid and all(inf and inf["raft_leader_id"] == str(lid)
                                  for inf in infos.values()) else None

    until(lambda: agreed((1, 2, 3)), "the three nodes to agree on a leader", 30, 0.1)
    with Client(urls, socket_timeout=2, socket_connect_timeout=2, timeout=30) as client:
        assert client.set("before", 1)
        cut, heal = cut_block.strip().splitlines()
        assert shell.run(cut) == 0, "".join(shell.output)
        until(lambda: agreed((2, 3)), "hosts 2 and 3 to agree on a leader", 30, 0.1)
        assert client.set("during", 2)
        assert shell.run(heal) == 0, "".join(shell.output)
        until(lambda: agreed((1, 2, 3)), "host 1 back with the others", 30, 0.1)
        until(lambda: (info_sync(urls[0], "keyspace", timeout=2) or {}).get("db0", "")
              .startswith("keys=2,"), "host 1 to catch up", 30, 0.1)
    assert shell.run(teardown_block) == 0, "".join(shell.output)
    assert names.leftovers() == []
