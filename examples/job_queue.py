"""A job queue shared by three processes: each one enqueues jobs and takes
jobs through its own node; every job is taken by exactly one of them.

    python examples/job_queue.py 1 & python examples/job_queue.py 2 & python examples/job_queue.py 3

Each process prints the jobs it did, then `done`, and serves until Ctrl-C.
"""
import asyncio
import collections
import os
import sys

import raftfast

# Where the nodes keep their state and sockets (delete it to start afresh).
DIR = os.environ.get("RAFTFAST_EXAMPLE_DIR", "/tmp/raftfast-jobs")
JOBS_EACH = 5


class JobQueue(raftfast.Replicated):
    def __init__(self):
        super().__init__()
        self.waiting = collections.deque()
        self.taken = {}      # job -> the worker that took it
        self.finished = set()

    @raftfast.replicated
    def put(self, job):
        self.waiting.append(job)

    @raftfast.replicated
    def take(self, worker):
        """The next job, now this worker's, or None when none waits."""
        if not self.waiting:
            return None
        job = self.waiting.popleft()
        self.taken[job] = worker
        return job

    @raftfast.replicated
    def finish(self, job):
        self.finished.add(job)
        return len(self.finished)


async def main(me):
    urls = {i: f"unix://{DIR}/node{i}.sock" for i in (1, 2, 3)}
    queue = JobQueue()
    async with raftfast.Node(queue, id=me, data_dir=f"{DIR}/data{me}", listen=urls.pop(me),
                             peers=urls) as node:
        for k in range(JOBS_EACH):
            await queue.put(f"job {me}.{k}")
        mine = []
        while await node.read(lambda q: len(q.finished), timeout=30) < 3 * JOBS_EACH:
            job = await queue.take(me)
            if job is None:
                await asyncio.sleep(0.05)  # others' jobs may still be on their way
                continue
            mine.append(job)          # ... the work itself would go here ...
            await queue.finish(job)
        print(f"node {me} did: {', '.join(mine) or 'nothing'}", flush=True)
        print("done", flush=True)
        await node.wait_stopped()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
