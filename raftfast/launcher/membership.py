"""Growing and shrinking a running local cluster, one change at a time.

`add` starts node <next id> with --join, adds it with RAFT.NODE ADD (the
leader promotes it to voter once it has caught up) and reports it once it
votes; `remove` removes a node with RAFT.NODE REMOVE and then stops its
process.  Every change is recorded in the layout on disk first, so a
launcher restarted on the same data dir starts the added nodes again and
not the removed ones.  Ids are never reused (a removed node's data dir
stays where it was).
"""
import asyncio
import time

from raftfast import resp_client
from raftfast.address import parse_address
from raftfast.config import ConfigError
from raftfast.launcher.layout import ensure_certificates, log_path, node_spec
from raftfast.launcher.status import format_table, poll_all

READY_WAIT = 30.0    # for an added node to print its ready line
CHANGE_WAIT = 30.0   # for a membership change to commit, and for an added node to vote
RETRY_PAUSE = 0.2


class ChangeFailed(Exception):
    """A membership change was refused or its outcome is not known; the
    message says which, for the operator."""


class Membership:
    """Membership changes of the cluster the launcher runs.  It is handed
    the launcher's side as callbacks: `nodes()` (the running Node objects),
    `start_node(spec)` (start, track and watch one; returns its Node),
    `stop_node(node)` (stop one on purpose and stop tracking it), `say`
    (print for the operator) and `stop` (an asyncio.Event: the launcher is
    stopping, so waits end early)."""

    def __init__(self, layout, data_dir, tunables, nodes, start_node, stop_node, say, stop):
        self.layout = layout
        self.data_dir = data_dir
        self.tunables = tunables
        self.nodes = nodes
        self.start_node = start_node
        self.stop_node = stop_node
        self.say = say
        self.stop = stop
        self.changing = asyncio.Lock()  # one membership change at a time

    async def answer(self, op, req):
        """A control request's answer: {"ok": text} or {"error": text}."""
        async with self.changing:
            try:
                if op == "add":
                    return {"ok": await self.add()}
                if op == "remove" and type(req.get("id")) is int:
                    return {"ok": await self.remove(req["id"])}
                return {"error": f"unknown request {op!r}"}
            except ChangeFailed as e:
                return {"error": str(e)}

    async def add(self):
        """Start the next node with --join, add it, wait until it votes;
        returns its row of the table."""
        layout = self.layout
        nid = layout.next_id()
        try:
            layout.check_ports(nid)
        except ConfigError as e:
            raise ChangeFailed(f"cannot add node {nid}: {e}") from None
        spec = node_spec(layout, self.data_dir, nid, self.tunables)
        # The id is spent from now on, whatever happens next.
        layout.added.append(nid)
        layout.save(self.data_dir)
        if layout.tls:
            ensure_certificates(self.data_dir, layout)  # its certificate, signed by the CA
        node = await self.start_node(spec)
        self.say(f"node {nid} started (pid {node.proc.pid}); adding it")
        try:
            await asyncio.wait_for(asyncio.shield(node.ready), READY_WAIT)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        if not node.ready.done():
            await self._drop_new(node)
            raise ChangeFailed(f"node {nid} did not start; its last lines:\n"
                               f"{node.last_lines()}")
        try:
            await self._change("add", nid, spec.listen)
        except ChangeFailed as e:
            if "outcome unknown" not in str(e):
                await self._drop_new(node)
            raise
        infos = await self._until_voter(nid)
        if infos is None:
            raise ChangeFailed(f"node {nid} was added as a learner but does not vote after "
                               f"{CHANGE_WAIT:g} s (it is left running; see "
                               f"{log_path(self.data_dir, nid)})")
        row = format_table([node], infos).splitlines()
        self.say(f"node {nid} added:\n" + "\n".join(row))
        return "\n".join(row)

    async def _drop_new(self, node):
        """An added node that never became a member: stop it, never start it again."""
        await self.stop_node(node)
        self.layout.removed.add(node.id)
        self.layout.save(self.data_dir)

    async def remove(self, nid):
        """Remove node nid, then stop its process; returns the rows of the rest."""
        live = self.layout.live_ids()
        if nid not in live:
            raise ChangeFailed(f"node {nid} is not one of this cluster's nodes (they are "
                               f"{', '.join(map(str, live))})")
        if len(live) == 1:
            raise ChangeFailed(f"node {nid} is the only node left")
        await self._change("remove", nid)
        self.layout.removed.add(nid)
        self.layout.save(self.data_dir)
        node = next((n for n in self.nodes() if n.id == nid), None)
        if node is not None:
            await self.stop_node(node)
        self.say(f"node {nid} removed and stopped")
        nodes = self.nodes()
        return format_table(nodes, await poll_all(nodes))

    async def _change(self, op, nid, url=None):
        """RAFT.NODE ADD/REMOVE at the leader, following MOVED and retrying
        while there is no leader, a change is in progress or the outcome of
        an attempt is unknown.  A retry told the change is already done
        (the earlier attempt committed) counts as done."""
        args = ["RAFT.NODE", op.upper(), str(nid)] + ([url] if url else [])
        done_already = "already a member" if op == "add" else "is not a member"
        deadline = time.monotonic() + CHANGE_WAIT
        target, unknown, last = None, False, "no node answered"
        while time.monotonic() < deadline and not self.stop.is_set():
            if target is None:
                nodes = self.nodes()
                leader = resp_client.leader_of(await poll_all(nodes))
                target = parse_address(next(
                    (n.spec.client for n in nodes if n.id == leader), nodes[0].spec.client))
            try:
                reply = await resp_client.call(target, *args, timeout=CHANGE_WAIT)
            except (OSError, asyncio.TimeoutError, ValueError) as e:
                unknown, last, target = True, f"no answer from {target}: {e or 'timed out'}", None
                await asyncio.sleep(RETRY_PAUSE)
                continue
            if not isinstance(reply, resp_client.RespError):
                return
            last = str(reply)
            kind = reply.kind
            if kind == "MOVED":
                target = parse_address("tcp://" + reply.split()[-1])
                continue
            if kind == "ERR":
                if unknown and done_already in reply:
                    return
                raise ChangeFailed(f"RAFT.NODE {op.upper()} {nid}: {reply}")
            if kind == "TIMEOUT":
                unknown = True
            # CLUSTERDOWN, TRYAGAIN, TIMEOUT, NOTLEADER: ask whoever leads next.
            target = None
            await asyncio.sleep(RETRY_PAUSE)
        raise ChangeFailed(f"RAFT.NODE {op.upper()} {nid}: gave up after {CHANGE_WAIT:g} s "
                           f"({last})" + ("; its outcome unknown" if unknown else ""))

    async def _until_voter(self, nid):
        """INFO of the nodes once the leader lists nid among its voters, or None."""
        deadline = time.monotonic() + CHANGE_WAIT
        while time.monotonic() < deadline and not self.stop.is_set():
            infos = await poll_all(self.nodes())
            leader = resp_client.leader_of(infos)
            if leader is not None and str(nid) in infos[leader].get("raft_voters", "").split(","):
                return infos
            await asyncio.sleep(0.1)
        return None
