"""The key-value state machine: raftfast._kv.KVStore.apply of a committed
block of SET entries (16-byte keys, 64-byte values), and encode_commands,
which builds such a block from a batch of parsed client commands.

leader: apply(block, want_results=True), one reply per entry (the clients
wait for them); follower: want_results=False.  The same 1024 keys are
overwritten every round, so the dict stays at 1024 keys.
entries/s = entries / mean; MB/s = block bytes / mean.
"""
import pytest

from benchutil import VALUE_SIZE, report
from raftfast._kv import OP_SET, KVStore, encode_commands
from raftfast._resp import OK

ENTRIES = [1024]


def set_commands(n):
    value = b"v" * VALUE_SIZE
    return [(OP_SET, [b"key:%012d" % i, value]) for i in range(n)]


@pytest.mark.parametrize("role,want_results,n", [
    pytest.param(role, want, n, id=f"{role}-{n}")
    for n in ENTRIES for role, want in (("leader", True), ("follower", False))])
def test_kv_apply(benchmark, role, want_results, n):
    block = encode_commands(set_commands(n))
    kv = KVStore()
    results = kv.apply(block, want_results)
    assert len(kv) == n and (results == [OK] * n if want_results else results is None)
    benchmark.group = f"kv apply {n} SET entries"
    benchmark(kv.apply, block, want_results)
    report(benchmark, items=n, nbytes=len(block), role=role, value_bytes=VALUE_SIZE)


@pytest.mark.parametrize("n", ENTRIES)
def test_kv_encode_commands(benchmark, n):
    commands = set_commands(n)
    block = encode_commands(commands)
    benchmark.group = f"kv encode_commands {n} SET"
    benchmark(encode_commands, commands)
    report(benchmark, items=n, nbytes=len(block), value_bytes=VALUE_SIZE)
