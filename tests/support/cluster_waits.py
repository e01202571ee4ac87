"""Waiting on a running harness cluster, on top of wait.until: a node's
INFO reaching a state, and a command answered by whoever leads."""
from tests.support.wait import until

# Replies that say "not here, not now": the command took no effect, so it
# may be sent again (docs/reference.md, "Errors").
ASK_AGAIN = (b"-MOVED", b"-NOTLEADER", b"-TRYAGAIN", b"-CLUSTERDOWN")


def wait_info(node, cond, what="its INFO to reach the expected state", timeout=30):
    """`node`'s INFO raft (a dict) once cond(info) holds; a node that does
    not answer yet is asked again."""
    last = [None]

    def holds():
        last[0] = node.info()
        return last[0] if last[0] and cond(last[0]) else None

    return until(holds, lambda: f"node {node.id}: {what} (last INFO: {last[0]})", timeout)


def leader_command(cluster, *args, timeout=30, exclude=()):
    """Send a command to the leader the live nodes agree on (not one in
    `exclude`), again to the next one while the answer is a redirect or
    TRYAGAIN/CLUSTERDOWN; returns (leader id, first line of the reply)."""
    last = [None]

    def answered():
        leader = cluster.wait_leader(timeout=timeout, exclude=exclude)
        last[0] = cluster.nodes[leader].raw(*args)
        return None if last[0].startswith(ASK_AGAIN) else (leader, last[0])

    return until(answered, lambda: f"{args} to get an answer other than {last[0]!r}",
                 timeout, interval=0.1)
