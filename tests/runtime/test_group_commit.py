"""GroupCommit on its own, on a simulated loop: held messages leave only
once the writes before them are durable, one fsync covers every write made
before it started, writes made during an fsync wait for the next, and a
failed fsync is fatal with nothing released."""
import threading

from raftfast.runtime.group_commit import GroupCommit

from tests.support.fakeloop import FakeLoop


class Harness:
    def __init__(self, durable=True, fail=False, sync_in_thread=False):
        self.loop = FakeLoop()
        self.syncs = 0
        self.fail = fail
        self.released = []
        self.fatal = []
        self.wakes = 0
        self.gc = GroupCommit(self.loop, self.sync, self.released.append, self.fatal.append,
                              self.wake, durable=durable, sync_in_thread=sync_in_thread)
        self.gc.start()

    def sync(self):
        self.syncs += 1
        if self.fail:
            raise OSError(5, "Input/output error")

    def wake(self):
        self.wakes += 1


def test_held_messages_leave_once_their_writes_are_durable():
    h = Harness()
    gc = h.gc
    gc.wrote()
    gc.hold(["ack 1"])
    gc.settle()
    assert h.released == [] and gc.syncing  # the fsync is under way, not done
    h.loop.run_ready()
    assert h.syncs == 1 and gc.fsyncs == 1 and gc.synced == 1
    assert h.released == [["ack 1"]] and h.wakes == 1


def test_writes_made_during_an_fsync_wait_for_the_next_one():
    h = Harness()
    gc = h.gc
    gc.wrote()
    gc.hold(["a"])
    gc.settle()          # fsync 1 starts, covering write 1
    gc.wrote()
    gc.hold(["b"])
    gc.settle()          # one at a time: write 2 waits
    h.loop.run_one()
    assert h.released == [["a"]] and gc.synced == 1 and not gc.syncing
    gc.settle()          # the Ready loop runs again (woken): fsync 2
    h.loop.run_ready()
    assert h.released == [["a"], ["b"]] and h.syncs == 2


def test_one_fsync_releases_every_batch_it_covers_at_once():
    h = Harness()
    gc = h.gc
    for name in ("a", "b", "c"):
        gc.wrote()
        gc.hold([name])
    gc.settle()
    h.loop.run_ready()
    assert h.syncs == 1 and h.released == [["a", "b", "c"]]


def test_messages_held_after_no_new_write_leave_without_another_fsync():
    h = Harness()
    gc = h.gc
    gc.wrote()
    gc.settle()
    h.loop.run_ready()
    gc.hold(["vote"])  # nothing written since: durable already
    gc.settle()
    assert h.released == [["vote"]] and h.syncs == 1


def test_without_fsync_everything_counts_as_durable_at_once():
    h = Harness(durable=False)
    gc = h.gc
    gc.wrote()
    gc.hold(["a"])
    gc.settle()
    assert h.released == [["a"]] and h.syncs == 0 and not gc.syncing


def test_a_failed_fsync_is_fatal_and_releases_nothing():
    h = Harness(fail=True)
    gc = h.gc
    gc.wrote()
    gc.hold(["a"])
    gc.settle()
    h.loop.run_ready()
    assert h.released == [] and len(h.fatal) == 1
    assert h.fatal[0].startswith("fsync failed: ") and "Input/output error" in h.fatal[0]
    assert gc.synced == 0


def test_the_fsync_thread_reports_back_on_the_loop_and_exits_on_stop():
    h = Harness(sync_in_thread=True)
    gc = h.gc
    reported = threading.Event()
    h.loop.call_soon_threadsafe = lambda cb, *args: (h.loop.call_soon(cb, *args),
                                                     reported.set())
    gc.wrote()
    gc.hold(["a"])
    gc.settle()
    assert reported.wait(10), "the fsync thread never reported"
    assert h.released == []  # only the loop releases
    h.loop.run_ready()
    assert h.released == [["a"]] and h.syncs == 1
    threads = [t for t in threading.enumerate() if t.name == "fsync"]
    assert len(threads) == 1
    gc.stop()
    assert not threads[0].is_alive()
