"""What the soak's operator does to the running harness cluster: a
rolling restart, and replacing a voter by a fresh node.

The cluster keeps five addresses for the whole run: a fresh node takes
the client and peer ports of the node it replaces (a machine replaced at
the same address), so clients given the five addresses at the start can
always reach the cluster, and the restarted nodes' --peer flags name only
current members.
"""
import os
import shutil
import signal
import time

from tests.support.cluster_waits import leader_command, wait_info
from tests.support.harness import NodeProc
from tests.support.node_info import member_ids

CATCH_UP_TIMEOUT = 120


class Operator:
    """Rolls and replacements on `cluster`; what each did and how long it took."""

    def __init__(self, cluster, node_args):
        self.cluster = cluster
        self.node_args = list(node_args)   # every node's flags but its own addresses
        self.retired = []        # NodeProcs replaced (stopped), for their logs and exit codes
        self.events = []         # one dict per action, for the report
        self.exit_codes = []     # (node id, exit code) of every SIGTERM the operator sent
        self.busy = set()        # ids stopped on purpose right now

    def voters(self):
        return set(self.cluster.ids)

    def _sigterm(self, node):
        self.busy.add(node.id)
        code = node.kill(signal.SIGTERM)
        self.exit_codes.append((node.id, code))
        return code

    def _caught_up(self, node):
        """Until `node` applied what the leader had committed when asked."""
        leader = self.cluster.wait_leader(timeout=CATCH_UP_TIMEOUT)
        commit = int(self.cluster.nodes[leader].info()["raft_commit_index"])
        self.cluster.wait_applied(commit, ids=[node.id], timeout=CATCH_UP_TIMEOUT)

    def roll(self, at):
        """Restart every node in turn, the leader last: leadership is
        handed to another voter first, then SIGTERM, a start with the same
        flags, and a wait until it applied what the leader had committed."""
        started = time.monotonic()
        leader = self.cluster.wait_leader(timeout=CATCH_UP_TIMEOUT)
        order = [i for i in self.cluster.ids if i != leader] + [leader]
        steps = []
        for i in order:
            node = self.cluster.nodes[i]
            step = {"node": i}
            t0 = time.monotonic()
            current = self.cluster.wait_leader(timeout=CATCH_UP_TIMEOUT)
            if current == i:
                to = next(j for j in self.cluster.ids if j != i)
                _, reply = leader_command(self.cluster, "RAFT.TRANSFER_LEADER", to,
                                          timeout=CATCH_UP_TIMEOUT)
                step["transfer"] = f"{i}->{to}: {reply.decode(errors='replace')}"
                self.cluster.wait_leader(timeout=CATCH_UP_TIMEOUT, exclude=(i,))
            step["exit"] = self._sigterm(node)
            node.start()
            self.busy.discard(i)
            self._caught_up(node)
            step["seconds"] = round(time.monotonic() - t0, 2)
            steps.append(step)
        self.events.append({"at": round(at, 1), "action": "roll", "steps": steps,
                            "seconds": round(time.monotonic() - started, 2)})

    def replace_oldest(self, at):
        """Remove the voter that has been a member longest (the leader as
        well as any other), stop it, and add a fresh node with --join on
        its addresses; wait until all five are voters again."""
        started = time.monotonic()
        c = self.cluster
        old = min(c.ids)
        _, reply = leader_command(c, "RAFT.NODE", "REMOVE", old, timeout=CATCH_UP_TIMEOUT)
        if reply != b"+OK":
            raise AssertionError(f"RAFT.NODE REMOVE {old}: {reply!r}")
        rest = set(c.ids) - {old}
        for i in rest:
            wait_info(c.nodes[i], lambda inf: member_ids(inf["raft_voters"]) == rest,
                      f"voters {sorted(rest)}", timeout=CATCH_UP_TIMEOUT)
        retired = c.nodes.pop(old)
        exit_code = self._sigterm(retired)
        self.busy.discard(old)
        self.retired.append(retired)
        shutil.rmtree(os.path.join(c.root, f"node{old}"), ignore_errors=True)
        c.ids.remove(old)

        new = max(c.ids + [n.id for n in self.retired]) + 1
        c.ids.append(new)
        c.client_ports[new] = c.client_ports[old]
        c.peer_ports[new] = c.peer_ports[old]
        node = c.nodes[new] = NodeProc(c, new, self.node_args + ["--join"])
        node.start()
        _, reply = leader_command(c, "RAFT.NODE", "ADD", new, c.peer_url(new), exclude=(new,),
                                  timeout=CATCH_UP_TIMEOUT)
        if reply != b"+OK":
            raise AssertionError(f"RAFT.NODE ADD {new}: {reply!r}")
        voters = set(c.ids)
        for i in voters:
            wait_info(c.nodes[i], lambda inf: member_ids(inf["raft_voters"]) == voters,
                      f"voters {sorted(voters)}", timeout=CATCH_UP_TIMEOUT)
        self._caught_up(node)
        self.events.append({"at": round(at, 1), "action": "replace", "removed": old,
                            "removed_exit": exit_code, "added": new,
                            "seconds": round(time.monotonic() - started, 2)})
