"""`python -m raftfast.cluster roll --data-dir DIR`: restart every node of a
running launcher in turn, without a moment the cluster cannot write for
longer than an election.

Followers first, one at a time; the leader last, after handing its
leadership (RAFT.TRANSFER_LEADER) to the follower that has applied the
most, so no election timeout is waited out.  Each restart is a clean stop
(SIGTERM) and a start of the same command line, so a node picks up what
changed on disk meanwhile (a new release, a rotated secret or certificate);
the next node waits until the restarted one has applied everything the
leader had committed when it went down.  Rolls one node at a time: a
majority is never down.
"""
import asyncio
import time

from raftfast import resp_client
from raftfast.address import parse_address
from raftfast.launcher.status import poll_all

__all__ = ["Roller", "RollFailed"]

STEP_WAIT = 60.0     # for one node to stop, start, and catch up; for a transfer
POLL = 0.05


class RollFailed(Exception):
    """A step of the roll did not complete; the message says which, for the operator."""


class Roller:
    """A roll of the launcher's nodes.  Handed the launcher's side as
    callbacks: `nodes()` (the running Node objects), `restart(node)` (stop
    it on purpose, start the same spec again; returns the new Node once it
    printed its ready line, or raises RollFailed), `say` (print for the
    operator) and `stop` (an asyncio.Event: the launcher is stopping)."""

    def __init__(self, nodes, restart, say, stop):
        self.nodes = nodes
        self.restart = restart
        self.say = say
        self.stop = stop

    async def roll(self, progress=lambda text: None):
        """Every node restarted; the last line.  Each step, as it ends, is
        said here and sent to progress(text) (the asking command's terminal)."""

        def report(text):
            self.say(text)
            progress(text)

        infos = await poll_all(self.nodes())
        first_leader = resp_client.leader_of(infos)
        if first_leader is None:
            raise RollFailed("no leader: a roll needs a cluster that can write")
        order = sorted((n.id for n in self.nodes()), key=lambda i: i == first_leader)
        for k, nid in enumerate(order):
            try:
                await self._roll_one(nid, report)
            except RollFailed as e:
                # The first line stays the one that says what happened; the
                # node's last lines, when given, follow it.
                first, _, rest = str(e).partition("\n")
                done = ", ".join(map(str, order[:k])) or "none"
                left = ", ".join(map(str, order[k + 1:])) or "none"
                raise RollFailed(f"{first}; the roll stopped there (restarted before it: "
                                 f"{done}; not restarted: {left})"
                                 + (f"\n{rest}" if rest else "")) from None
        self.say(f"rolled {len(order)} nodes")
        return f"rolled {len(order)} nodes"

    async def _roll_one(self, nid, report):
        """Restart node nid (handing over first if it leads) and wait until
        it applied what the leader had committed when it went down."""
        if self.stop.is_set():
            raise RollFailed("the launcher is stopping")
        started = time.monotonic()
        leader, commit = await self._leader_and_commit()
        if leader == nid:
            leader = await self._hand_over(nid)
            report(f"node {nid} handed its leadership to node {leader}")
            _, commit = await self._leader_and_commit()
        node = self._node(nid)
        old_pid = node.proc.pid
        new = await self.restart(node)
        await self._caught_up(nid, commit)
        report(f"node {nid} restarted (pid {old_pid} -> {new.proc.pid}), caught up to "
               f"index {commit} in {time.monotonic() - started:.1f} s")

    def _node(self, nid):
        for n in self.nodes():
            if n.id == nid:
                return n
        raise RollFailed(f"node {nid} is no longer one of this launcher's nodes")

    async def _leader_and_commit(self):
        """(leader id, its commit index), waiting while there is no leader."""
        deadline = time.monotonic() + STEP_WAIT
        while time.monotonic() < deadline and not self.stop.is_set():
            infos = await poll_all(self.nodes())
            leader = resp_client.leader_of(infos)
            if leader is not None:
                return leader, int(infos[leader]["raft_commit_index"])
            await asyncio.sleep(POLL)
        raise RollFailed(f"no leader for {STEP_WAIT:g} s")

    async def _hand_over(self, nid):
        """Transfer leadership from nid to the voter that applied the most;
        the new leader's id."""
        infos = await poll_all(self.nodes())
        voters = set(infos[nid].get("raft_voters", "").split(","))
        candidates = [(int(inf["raft_last_applied"]), i) for i, inf in infos.items()
                      if i != nid and inf and str(i) in voters]
        if not candidates:
            raise RollFailed(f"node {nid} leads and no other voter answers: not restarting it")
        _, target = max(candidates)
        url = parse_address(self._node(nid).spec.client)
        try:
            reply = await resp_client.call(url, "RAFT.TRANSFER_LEADER", str(target),
                                           timeout=STEP_WAIT)
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            raise RollFailed(f"RAFT.TRANSFER_LEADER {target} at node {nid}: {e}") from None
        if isinstance(reply, resp_client.RespError):
            raise RollFailed(f"RAFT.TRANSFER_LEADER {target} at node {nid}: {reply}")
        return target

    async def _caught_up(self, nid, commit):
        deadline = time.monotonic() + STEP_WAIT
        applied = None
        while time.monotonic() < deadline and not self.stop.is_set():
            infos = await poll_all([self._node(nid)])
            inf = infos.get(nid)
            if inf:
                applied = int(inf["raft_last_applied"])
                if applied >= commit:
                    return
            await asyncio.sleep(POLL)
        raise RollFailed(f"node {nid} restarted but has applied {applied} of the {commit} "
                         f"entries committed before it stopped after {STEP_WAIT:g} s")
