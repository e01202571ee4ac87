"""What the running nodes say about themselves, and how the launcher shows
it: INFO raft of every live node, the table printed once the cluster
serves, and the status line a terminal sees while it does."""
import asyncio

from raftfast import resp_client


async def poll_all(nodes):
    """{id: INFO raft dict} of the live nodes among `nodes` that answer."""
    live = [n for n in nodes if n.alive]
    infos = await asyncio.gather(*(resp_client.info(n.spec.client) for n in live))
    return {n.id: i for n, i in zip(live, infos) if i is not None}


async def leader_infos(nodes):
    """poll_all(nodes) once some node leads, else None."""
    infos = await poll_all(nodes)
    return infos if resp_client.leader_of(infos) is not None else None


def format_table(nodes, infos):
    """One row per node; a metrics column when the nodes serve metrics."""
    metrics = any(n.spec.metrics for n in nodes)
    rows = [("id", "pid", "role", "term", "client") + (("metrics",) if metrics else ())]
    for n in nodes:
        info = infos.get(n.id) or {}
        alive = n.proc.returncode is None
        rows.append((str(n.id), str(n.proc.pid),
                     info.get("raft_role", "?") if alive else f"exited({n.proc.returncode})",
                     info.get("raft_current_term", "?"), n.spec.client)
                    + ((n.spec.metrics or "-",) if metrics else ()))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


class StatusLine:
    """leader, term, commit index and ops/s from commit index deltas."""

    def __init__(self):
        self.prev = None  # (time, commit index)

    def render(self, leader, info, now):
        if leader is None or info is None:
            self.prev = None
            return "no leader"
        try:
            commit = int(info.get("raft_commit_index"))
        except (TypeError, ValueError):
            commit = 0
        rate = ""
        if self.prev is not None and now > self.prev[0] and commit >= self.prev[1]:
            rate = f"  {(commit - self.prev[1]) / (now - self.prev[0]):,.0f} ops/s"
        self.prev = (now, commit)
        return (f"leader {leader}  term {info.get('raft_current_term', '?')}  "
                f"commit {commit}{rate}")
