"""One PySyncObj node with a replicated dict, served over a tiny RESP front,
so that raftfast's own load generator drives it exactly as it drives
raftfast (`python -m raftfast.bench compare --against pysyncobj`).

    python -m raftfast.bench.pysyncobj_node --id I --nodes N --base-port B
        [SyncObjConf settings: raftfast/bench/pysyncobj_tuning.py]

Node i serves clients on 127.0.0.1:<B + i> and talks Raft (PySyncObj's own
TCP transport) on 127.0.0.1:<B + 100 + i>, like `raftfast.cluster
--transport tcp`.  PySyncObj keeps its log in memory and never fsyncs, so
its figures compare with raftfast under `--fsync never`.

Commands: SET k v (`+OK` once PySyncObj has applied it; `-MOVED 0 host:port`
on a follower that knows the leader, `-CLUSTERDOWN No raft leader`
otherwise), GET k (the local copy), PING, and `INFO` with the raft_* fields
the benchmark reads (role, term, commit index).  Once listening it prints
`ready id=I listen=URL client=URL` as raftfast's nodes do; SIGTERM stops it.
"""
import asyncio
import collections
import signal
import sys

try:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
    from pysyncobj.batteries import ReplDict
except ImportError:
    sys.exit('error: PySyncObj is not installed: pip install -e ".[bench]"')

from raftfast.bench import pysyncobj_tuning  # noqa: E402  (after the PySyncObj check)
from raftfast.config import ArgumentParser  # noqa: E402
from raftfast.resp_client import RespReplyParser  # noqa: E402

HOST = "127.0.0.1"
LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER
ROLES = {0: "follower", 1: "candidate", 2: "leader"}
FAILURES = {FAIL_REASON.QUEUE_FULL: b"-TRYAGAIN queue full\r\n",
            FAIL_REASON.MISSING_LEADER: b"-CLUSTERDOWN No raft leader\r\n"}


def raft_port(base, i):
    return base + 100 + i


class Front(asyncio.Protocol):
    """One client connection; replies leave in the order the requests came."""

    def __init__(self, node):
        self.node = node
        self.parser = RespReplyParser()
        self.slots = collections.deque()  # [reply or None], oldest first
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed(data)
        try:
            while (req := self.parser.take()) is not RespReplyParser.INCOMPLETE:
                self.handle(req)
        except (ValueError, TypeError, AttributeError):
            self.transport.write(b"-ERR Protocol error\r\n")
            self.transport.close()
            return
        self.flush()

    def handle(self, req):
        slot = [None]
        self.slots.append(slot)
        cmd = req[0].upper() if isinstance(req, list) and req else b""
        node = self.node
        if cmd == b"SET" and len(req) == 3:
            if not node.obj._isLeader():
                slot[0] = node.redirect()
                return
            loop = node.loop

            def done(result, error, slot=slot):
                reply = b"+OK\r\n" if error == FAIL_REASON.SUCCESS else FAILURES.get(
                    error, b"-TIMEOUT outcome unknown\r\n")
                loop.call_soon_threadsafe(self.fill, slot, reply)

            node.data.set(bytes(req[1]), bytes(req[2]), callback=done)
        elif cmd == b"GET" and len(req) == 2:
            v = node.data.get(bytes(req[1]))
            slot[0] = b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)
        elif cmd == b"PING":
            slot[0] = b"+PONG\r\n"
        elif cmd == b"INFO":
            body = node.info().encode()
            slot[0] = b"$%d\r\n%s\r\n" % (len(body), body)
        else:
            slot[0] = b"-ERR unknown command\r\n"

    def fill(self, slot, reply):
        slot[0] = reply
        self.flush()

    def flush(self):
        out, slots = [], self.slots
        while slots and slots[0][0] is not None:
            out.append(slots.popleft()[0])
        if out and not self.transport.is_closing():
            self.transport.write(b"".join(out))


class Node:
    def __init__(self, ns, loop):
        self.id, self.base, self.loop = ns.id, ns.base_port, loop
        partners = [f"{HOST}:{raft_port(ns.base_port, j)}"
                    for j in range(1, ns.nodes + 1) if j != ns.id]
        self.data = ReplDict()
        conf = SyncObjConf(dynamicMembershipChange=False, **pysyncobj_tuning.conf_kwargs(ns))
        self.obj = SyncObj(f"{HOST}:{raft_port(ns.base_port, ns.id)}", partners,
                           consumers=[self.data], conf=conf)

    def redirect(self):
        leader = self.obj._getLeader()
        if leader is None:
            return b"-CLUSTERDOWN No raft leader\r\n"
        port = int(str(leader.address).rpartition(":")[2]) - 100
        return b"-MOVED 0 %s:%d\r\n" % (HOST.encode(), port)

    def info(self):
        s = self.obj.getStatus()
        leader = s["leader"]
        leader_id = int(str(leader.address).rpartition(":")[2]) - 100 - self.base if leader else 0
        return ("# Raft\r\n"
                f"raft_node_id:{self.id}\r\nraft_role:{ROLES.get(s['state'], 'follower')}\r\n"
                f"raft_current_term:{s['raft_term']}\r\nraft_leader_id:{leader_id}\r\n"
                f"raft_commit_index:{s['commit_idx']}\r\nraft_last_applied:{s['last_applied']}\r\n")


async def main(argv=None):
    p = ArgumentParser(prog="python -m raftfast.bench.pysyncobj_node",
                                description="One PySyncObj node behind a RESP front.")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--base-port", type=int, required=True)
    pysyncobj_tuning.add_arguments(p)
    ns = p.parse_args(argv)
    if not 1 <= ns.id <= ns.nodes:
        p.error("--id must be between 1 and --nodes")
    loop = asyncio.get_running_loop()
    node = Node(ns, loop)
    port = ns.base_port + ns.id
    server = await loop.create_server(lambda: Front(node), HOST, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready id={ns.id} listen=tcp://{HOST}:{raft_port(ns.base_port, ns.id)} "
          f"client=tcp://{HOST}:{port}", flush=True)
    await stop.wait()
    server.close()
    node.obj.destroy()


if __name__ == "__main__":
    try:
        import uvloop  # the event loop of raftfast's nodes and of the load generator
    except ImportError:
        uvloop = None
    (uvloop.run if uvloop else asyncio.run)(main())
