"""A lock service with fencing tokens, run by three processes.

    python examples/lock_service.py 1 & python examples/lock_service.py 2 & python examples/lock_service.py 3

Each process takes the lock (a lease of 2 s of cluster time) five times,
and while it holds it writes to a shared resource with its fencing token.
The resource (a replicated register here; a database or a file server in
real life) refuses a write whose token is older than one it has seen, so
a holder whose lease ran out while it was paused cannot overwrite the work
of the next holder.  Each process prints its writes, then `done`.
"""
import asyncio
import os
import sys

import raftfast

# Where the nodes keep their state and sockets (delete it to start afresh).
DIR = os.environ.get("RAFTFAST_EXAMPLE_DIR", "/tmp/raftfast-locks")
ROUNDS = 5


class Service(raftfast.ReplLock):
    """The lock (acquire, renew, release, from ReplLock), and the resource
    it guards."""

    def __init__(self):
        super().__init__()
        self.highest_token = 0
        self.writes = []
        self.finished = 0

    @raftfast.replicated
    def write(self, token, text):
        """The fenced resource: True if written, False if the token is stale."""
        if token < self.highest_token:
            return False
        self.highest_token = token
        self.writes.append((token, text))
        return True

    @raftfast.replicated
    def finish(self):
        self.finished += 1


async def main(me):
    urls = {i: f"unix://{DIR}/node{i}.sock" for i in (1, 2, 3)}
    service = Service()
    async with raftfast.Node(service, id=me, data_dir=f"{DIR}/data{me}", listen=urls.pop(me),
                             peers=urls) as node:
        for k in range(ROUNDS):
            while (token := await service.acquire(f"node {me}", 2000)) is None:
                await asyncio.sleep(0.05)  # someone else holds it
            ok = await service.write(token, f"node {me} round {k}")
            print(f"node {me}: token {token}, write {'accepted' if ok else 'refused'}",
                  flush=True)
            await service.release(f"node {me}")
        await service.finish()
        while await node.read(lambda s: s.finished, timeout=30) < 3:
            await asyncio.sleep(0.1)
        print("done", flush=True)
        await node.wait_stopped()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
