"""A program hosting a library node, for the multi-process tests.

    python -m tests.support.library_node --id 1 --data-dir D --listen URL
        --control unix:///path.sock [--peer ID=URL ...] [--join] [node flags]

Its state machine is user Python code (Registers, a Replicated of string
registers with set and append), and it takes requests from the test on a
control socket, one JSON object per line:

    {"op": "set"|"append", "key": k, "arg": v}   a replicated command
    {"op": "stamp"}                              a command keeping its cluster time
    {"op": "get", "key": k}                      a linearizable read (node.read)
    {"op": "dump"}                               every register, read linearizably
    {"op": "status"}                             Node.status()
    {"op": "add_member", "id": n, "url": u} / {"op": "remove_member", "id": n}

Each is answered with {"ok": result} or {"error": "NotLeader" | "OutcomeUnknown"
| "RaftError", "message": ...}.  Prints "ready id=ID" once serving.
"""
import argparse
import asyncio
import json
import os
import sys

import uvloop

import raftfast
from raftfast.address import parse_address
from raftfast.runtime.cluster_time import wall_ms


class Registers(raftfast.Replicated):
    def __init__(self):
        super().__init__()
        self.values = {}

    @raftfast.replicated
    def set(self, key, value):
        self.values[key] = value

    @raftfast.replicated
    def append(self, key, value):
        new = self.values.get(key, "") + value
        self.values[key] = new
        return len(new.encode())

    @raftfast.replicated
    def stamp(self):
        """Keep this command's cluster time, in log order."""
        self.values.setdefault("_times", []).append(self.raft_ctx.time)
        return self.raft_ctx.time


async def handle(node, regs, request):
    op = request["op"]
    timeout = request.get("timeout", 3.0)
    if op == "set":
        return await regs.set(request["key"], request["arg"])
    if op == "append":
        return await regs.append(request["key"], request["arg"])
    if op == "stamp":
        return await regs.stamp()
    if op == "get":
        return await node.read(lambda sm: sm.values.get(request["key"]), timeout)
    if op == "dump":
        return await node.read(lambda sm: dict(sm.values), timeout)
    if op == "status":
        return node.status()
    if op == "add_member":
        return await node.add_member(request["id"], request["url"])
    if op == "remove_member":
        return await node.remove_member(request["id"])
    raise ValueError(f"unknown op {op!r}")


async def serve(args, options):
    regs = Registers()
    if args.clock_skew_ms:
        options["wall_clock"] = lambda: wall_ms() + args.clock_skew_ms
    node = raftfast.Node(regs, id=args.id, data_dir=args.data_dir, listen=args.listen,
                         peers=dict(args.peer or []), join=args.join, **options)
    await node.start()

    async def on_client(reader, writer):
        while line := await reader.readline():
            request = json.loads(line)
            try:
                reply = {"ok": await handle(node, regs, request)}
            except raftfast.RaftError as e:
                reply = {"error": type(e).__name__, "message": str(e)}
            writer.write(json.dumps(reply).encode() + b"\n")
        writer.close()

    path = parse_address(args.control).path
    server = await asyncio.start_unix_server(on_client, path)
    print(f"ready id={args.id}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    done = asyncio.ensure_future(node.wait_stopped())
    await asyncio.wait([done, asyncio.ensure_future(stop.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    server.close()
    await node.stop()
    return 1 if node.stop_reason else 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--peer", action="append",
                   type=lambda s: (int(s.split("=", 1)[0]), s.split("=", 1)[1]))
    p.add_argument("--join", action="store_true")
    p.add_argument("--clock-skew-ms", type=int, default=0,
                   help="this node's wall clock runs this far ahead (negative: behind)")
    args, rest = p.parse_known_args()
    # The remaining flags are node options: --snapshot-entries 50 -> snapshot_entries=50.
    options = {}
    for flag, value in zip(rest[::2], rest[1::2]):
        v = int(value) if value.lstrip("-").isdigit() else value
        options[flag.lstrip("-").replace("-", "_")] = v
    os.umask(0o077)
    sys.exit(uvloop.run(serve(args, options)))


if __name__ == "__main__":
    main()
