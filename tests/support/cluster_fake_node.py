"""A stand-in for `python -m raftfast.node` in the launcher's tests: it takes
the node's command line, prints the ready line, and answers INFO raft, SET
and RAFT.NODE over RESP the way a real node does, with node 1 as the
leader.  The leader's voters start as itself and its --peer ids (less the
ones that were started with --join); RAFT.NODE ADD makes a node a voter at
once, REMOVE drops it.  Each node writes its command line to argv.json in
its data dir, and the leader its voters to voters.json.

FAKE_FAIL_ID=<id>: that node prints an error and exits 1 before it is ready.
"""
import argparse
import asyncio
import json
import os
import signal
import sys

from raftfast.address import parse_address
from raftfast.resp_client import RespReplyParser


class Resp(asyncio.Protocol):
    def __init__(self, state):
        self.state = state
        self.parser = RespReplyParser()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed(data)
        while (req := self.parser.take()) is not RespReplyParser.INCOMPLETE:
            self.transport.write(self.state.answer(req))


class State:
    def __init__(self, node_id, voters, data_dir):
        self.id = node_id
        self.commit = 1
        self.voters = set(voters)
        self.data_dir = data_dir
        self.first_add = True

    def _changed(self):
        self.commit += 1
        with open(os.path.join(self.data_dir, "voters.json"), "w") as f:
            json.dump(sorted(self.voters), f)

    def answer(self, req):
        cmd = req[0].upper()
        if cmd == b"INFO":
            role = "leader" if self.id == 1 else "follower"
            body = (f"# Raft\r\nraft_node_id:{self.id}\r\nraft_role:{role}\r\n"
                    f"raft_current_term:2\r\nraft_leader_id:1\r\n"
                    f"raft_commit_index:{self.commit}\r\n"
                    f"raft_voters:{','.join(map(str, sorted(self.voters)))}\r\n").encode()
            return b"$%d\r\n%s\r\n" % (len(body), body)
        if cmd == b"SET":
            if self.id != 1:
                return b"-MOVED 0 127.0.0.1:%d\r\n" % (int(os.environ["FAKE_BASE"]) + 1)
            self.commit += 1
            return b"+OK\r\n"
        if cmd == b"RAFT.NODE":
            if self.id != 1:
                return b"-MOVED 0 127.0.0.1:%d\r\n" % (int(os.environ["FAKE_BASE"]) + 1)
            sub, nid = req[1].upper(), int(req[2])
            if sub == b"ADD":
                if os.environ.get("FAKE_ADD_TRYAGAIN") and self.first_add:
                    self.first_add = False  # a change in progress: the launcher retries
                    return b"-TRYAGAIN a membership change is in progress\r\n"
                if nid in self.voters:
                    return b"-ERR node %d is already a member\r\n" % nid
                self.voters.add(nid)
            else:
                if nid not in self.voters:
                    return b"-ERR node %d is not a member\r\n" % nid
                self.voters.discard(nid)
            self._changed()
            return b"+OK\r\n"
        return b"-ERR unknown command '%s'\r\n" % cmd.lower()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--client", required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--join", action="store_true")
    ns, rest = p.parse_known_args()
    os.makedirs(ns.data_dir, exist_ok=True)
    with open(os.path.join(ns.data_dir, "argv.json"), "w") as f:
        json.dump({"argv": sys.argv[1:], "pgid": os.getpgrp(), "pid": os.getpid()}, f)
    if os.environ.get("FAKE_FAIL_ID") == str(ns.id):
        print(f"error: node {ns.id} cannot start (fake failure)", file=sys.stderr)
        sys.exit(1)
    client = parse_address(ns.client)
    os.environ["FAKE_BASE"] = str(client.port - ns.id)
    loop = asyncio.get_running_loop()
    # The founders: node 1 and every --peer'd id at or below FAKE_FOUNDERS
    # (the launcher gives nodes it added later --peer too).
    founders = int(os.environ.get("FAKE_FOUNDERS", "3"))
    peers = [int(p.split("=", 1)[0]) for p in ns.peer]
    voters_file = os.path.join(ns.data_dir, "voters.json")
    if os.path.exists(voters_file):
        voters = json.load(open(voters_file))
    else:
        voters = [i for i in [ns.id, *peers] if i <= founders]
    state = State(ns.id, voters, ns.data_dir)
    server = await loop.create_server(lambda: Resp(state), client.host, client.port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"node {ns.id} starting", file=sys.stderr)
    print(f"ready id={ns.id} listen={ns.listen} client={ns.client}", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
