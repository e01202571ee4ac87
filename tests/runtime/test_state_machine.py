"""The state machine seam: KVStateMachine offers everything the
StateMachine interface names, one compiled call per block, and its
snapshot hooks round-trip the state."""
import inspect

from raftfast._kv import OP_GET, OP_SET, encode_commands
from raftfast.runtime.kv_state_machine import KVStateMachine
from raftfast.runtime.state_machine import StateMachine


def _block(*cmds):
    return encode_commands(list(cmds))


def test_the_kv_store_offers_every_method_of_the_interface():
    wanted = {name for name, _ in inspect.getmembers(StateMachine, inspect.isfunction)
              if not name.startswith("_") or name == "__len__"}
    assert wanted == {"apply", "apply_replies", "read", "snapshot_writer", "snapshot_loader",
                      "restore", "__len__"}
    for name in wanted:
        assert callable(getattr(KVStateMachine(), name)), name


def test_apply_with_and_without_replies_and_reads_that_change_nothing():
    sm = KVStateMachine()
    sm.apply(_block((OP_SET, [b"a", b"1"])))
    replies, offsets = sm.apply_replies(_block((OP_SET, [b"b", b"2"]), (OP_GET, [b"a"])))
    assert bytes(replies) == b"+OK\r\n$1\r\n1\r\n" and list(offsets) == [0, 5, 12]
    replies, offsets = sm.read(_block((OP_GET, [b"b"]), (OP_GET, [b"zz"])))
    assert bytes(replies) == b"$1\r\n2\r\n$-1\r\n" and len(sm) == 2


def test_a_snapshot_written_and_loaded_restores_the_state(tmp_path):
    sm = KVStateMachine()
    sm.apply(_block(*[(OP_SET, [b"k%d" % i, b"v%d" % i]) for i in range(50)]))
    path = str(tmp_path / "s.snap")
    writer = sm.snapshot_writer(path, 50, 3, b"meta")
    assert sm.snapshot_writer(str(tmp_path / "t.snap"), 50, 3, b"") is None  # one at a time
    sm.apply(_block((OP_SET, [b"late", b"x"])))  # after the point in time
    while not writer.write_step(7):
        pass
    writer.sync()
    while not writer.merge_step(7):
        pass
    assert (writer.index, writer.term, writer.count) == (50, 3, 50)
    loader = sm.snapshot_loader(path)
    while not loader.step(1):
        pass
    assert (loader.meta.index, loader.meta.term, loader.meta.meta) == (50, 3, b"meta")
    other = KVStateMachine()
    other.restore(loader.store)
    assert len(other) == 50
    replies, _ = other.read(_block((OP_GET, [b"k7"]), (OP_GET, [b"late"])))
    assert bytes(replies) == b"$2\r\nv7\r\n$-1\r\n"


def test_a_busy_store_helps_the_last_snapshot_settle_and_starts_the_next_later(tmp_path):
    sm = KVStateMachine()
    sm.apply(_block(*[(OP_SET, [b"k%d" % i, b"v"]) for i in range(20_000)]))
    writer = sm.snapshot_writer(str(tmp_path / "a.snap"), 1, 1, b"")
    sm.apply(_block(*[(OP_SET, [b"k%d" % i, b"w"]) for i in range(20_000)]))  # overlay
    while not writer.write_step(1 << 20):
        pass
    writer.sync()
    attempts = 0
    while (w := sm.snapshot_writer(str(tmp_path / "b.snap"), 2, 1, b"")) is None:
        attempts += 1  # each refusal merged a step of the overlay back
        assert attempts < 100
    assert attempts >= 1
    w.abort()
