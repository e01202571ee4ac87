"""A replicated counter: run it three times, with ids 1, 2 and 3.

    python examples/counter.py 1 & python examples/counter.py 2 & python examples/counter.py 3

Each process adds 1 ten times through its own node, then prints the total
every node agrees on (30 once all three are done).  Ctrl-C stops a node.
"""
import asyncio
import os
import sys

import raftfast

# Where the nodes keep their state and sockets (delete it to start afresh).
DIR = os.environ.get("RAFTFAST_EXAMPLE_DIR", "/tmp/raftfast-counter")


async def main(me):
    urls = {i: f"unix://{DIR}/node{i}.sock" for i in (1, 2, 3)}
    counter = raftfast.ReplCounter()
    async with raftfast.Node(counter, id=me, data_dir=f"{DIR}/data{me}", listen=urls.pop(me),
                             peers=urls) as node:
        for _ in range(10):
            await counter.add(1)
        while (total := await node.read(lambda c: c.value, timeout=30)) < 30:
            await asyncio.sleep(0.1)
        print(f"node {me}: the counter is {total}", flush=True)
        await node.wait_stopped()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
