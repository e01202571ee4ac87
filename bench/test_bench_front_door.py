"""The leader's per-client work for one batch, without sockets or Raft:
`clients` connections each deliver one SET (as `redis-benchmark -P 1`
clients do), the batcher proposes the batch, the applied batch's replies
go back to every connection's slot and each connection writes its reply.

This is the part of a leader's CPU per write that grows with the number of
clients rather than the number of batches: at `-P 1 -c 50` one write is one
client's read, parse, slot, reply and write.

    python -m pytest bench/test_bench_front_door.py --benchmark-only
"""
import asyncio

import pytest

from raftfast._kv import KVStore
from raftfast.config import Config
from raftfast.server.connection import ClientProtocol
from raftfast.server.server import RespServer
from tests.support.client_transport import FakeClientTransport


class _Driver:
    """Takes the batch, and answers it as the runtime would once the entries
    are applied: one [replies, offsets, lo, hi] piece for the block."""

    is_leader = True

    def __init__(self):
        self.store = KVStore()
        self.last = 0

    def propose(self, block, count, callback):
        replies, offsets = self.store.apply_replies(block)
        self.last += count
        self.answer = (callback, [[replies, offsets, 0, count]])
        return self.last

    def process_now(self):
        pass


@pytest.mark.parametrize("clients", [1, 50])
def test_front_door_batch(benchmark, clients):
    loop = asyncio.new_event_loop()
    try:
        cfg = Config(node_id=1, data_dir="x", listen="tcp://127.0.0.1:1",
                     client="tcp://127.0.0.1:2")
        driver = _Driver()
        server = RespServer(loop, cfg, driver, dict)
        conns = [ClientProtocol(server) for _ in range(clients)]
        for c in conns:
            c.connection_made(FakeClientTransport())
        requests = [b"*3\r\n$3\r\nSET\r\n$7\r\nkey:%03d\r\n$64\r\n%s\r\n" % (i, b"v" * 64)
                    for i in range(clients)]

        def one_batch():
            for c, request in zip(conns, requests):
                c.data_received(request)
            server.batcher.flush()
            callback, result = driver.answer
            callback(result)

        benchmark(one_batch)
        assert all(len(c.transport.out) == len(conns[0].transport.out) > 0 for c in conns)
    finally:
        loop.close()
