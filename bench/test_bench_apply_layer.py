"""What the Python apply layer costs, against the C store: one committed
block of 1024 commands applied by

  kv          the C key-value store (raftfast._kv.KVStore), SET k v
  python-sm   a StateMachine in Python whose apply() stores each command
              (the seam's cost: cutting the block, one apply() call, the
              results lined up with the entries)
  repl-dict   raftfast.ReplDict.set(k, v) (the seam, plus unpickling each
              call and running the method)

all as a leader applies them (with results for the waiters).  16-byte
keys, 64-byte values; the same keys every round.  entries/s = 1024 / mean.
"""
import pickle

import pytest

from benchutil import VALUE_SIZE, report
from raftfast._entrylog import encode_entries
from raftfast._kv import OP_SET, KVStore, encode_commands
from raftfast.core.messages import ENTRY_NORMAL
from raftfast.library.state_machine import PythonSeam

import raftfast

N = 1024


class Store(raftfast.StateMachine):
    def __init__(self):
        self.data = {}

    def apply(self, commands, ctx):
        data = self.data
        for c in commands:
            data[c[:16]] = c[16:]
        return [None] * len(commands)


class _Log:
    applied = 0  # the seam reads the first index from the log


def python_block(commands):
    return encode_entries([(1, ENTRY_NORMAL, c) for c in commands])


@pytest.mark.parametrize("layer", ["kv", "python-sm", "repl-dict"])
def test_apply_layer(benchmark, layer):
    value = b"v" * VALUE_SIZE
    keys = [b"key:%012d" % i for i in range(N)]
    if layer == "kv":
        block = encode_commands([(OP_SET, [k, value]) for k in keys])
        kv = KVStore()
        run = lambda: kv.apply_replies(block)  # noqa: E731
    else:
        if layer == "python-sm":
            sm, commands = Store(), [k + value for k in keys]
        else:
            sm = raftfast.ReplDict()
            commands = [pickle.dumps(("set", (k, value)), pickle.HIGHEST_PROTOCOL)
                        for k in keys]
        seam = PythonSeam(sm)
        seam.log = _Log()
        block = python_block(commands)
        run = lambda: seam.apply_replies(block)  # noqa: E731
    run()
    benchmark.group = f"apply {N} writes: C store vs the Python layer"
    benchmark(run)
    report(benchmark, items=N, nbytes=len(block), layer=layer, value_bytes=VALUE_SIZE)
