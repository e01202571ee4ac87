"""GroupCommit on its own, on a simulated loop: held messages leave only
once the writes before them are durable, one fsync covers every write made
before it started, writes made during an fsync wait for the next, and a
failed fsync is fatal with nothing released, and a sync wakes the Ready
loop only for writes made while it ran; with a thread, an idle loop syncs
inline, and one that wrote during a thread's sync or whose last sync was
slow hands its fsyncs to the thread."""
import threading

import pytest

from raftfast.runtime.group_commit import GroupCommit

from tests.support.fakeloop import FakeLoop


class Harness:
    def __init__(self, durable=True, fail=False, sync_in_thread=False, inline=True):
        self.loop = FakeLoop()
        self.syncs = 0
        self.fail = fail
        self.released = []
        self.fatal = []
        self.wakes = 0
        self.gc = GroupCommit(self.loop, self.sync, self.released.append, self.fatal.append,
                              self.wake, durable=durable, sync_in_thread=sync_in_thread,
                              inline=inline)
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
    # Released by the sync itself; nothing was written meanwhile, so no
    # Ready loop pass is asked for.
    assert h.released == [["ack 1"]] and h.wakes == 0


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
    assert h.wakes == 1  # write 2 needs a pass to start its fsync
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


class ThreadHarness(Harness):
    """A thread that exists, and a loop whose call_soon_threadsafe records
    what the thread reports."""

    def __init__(self, inline=True):
        super().__init__(sync_in_thread=True, inline=inline)
        self.reported = threading.Event()
        self.loop.call_soon_threadsafe = lambda cb, *args: (self.loop.call_soon(cb, *args),
                                                            self.reported.set())

    def thread_sync(self):
        """Wait for the thread's report, and run it on the loop."""
        assert self.reported.wait(10), "the fsync thread never reported"
        self.reported.clear()
        self.loop.run_ready()


@pytest.fixture
def threaded():
    """ThreadHarness(...) maker; every fsync thread it started is stopped after."""
    made = []

    def make(**kw):
        made.append(ThreadHarness(**kw))
        return made[-1]
    yield make
    for h in made:
        h.gc.stop()


def test_the_fsync_thread_reports_back_on_the_loop_and_exits_on_stop(threaded):
    h = threaded(inline=False)
    gc = h.gc
    gc.wrote()
    gc.hold(["a"])
    gc.settle()
    assert h.reported.wait(10), "the fsync thread never reported"
    assert h.released == []  # only the loop releases
    h.loop.run_ready()
    assert h.released == [["a"]] and h.syncs == 1
    threads = [t for t in threading.enumerate() if t.name == "fsync"]
    assert len(threads) == 1
    gc.stop()
    assert not threads[0].is_alive()
    assert gc.inline_syncs == 0 and gc.thread_wakeups == 1


def test_an_idle_loop_syncs_inline_and_releases_before_settle_returns(threaded):
    h = threaded()
    gc = h.gc
    gc.wrote()
    gc.hold(["ack"])
    gc.settle()
    assert h.syncs == 1 and h.released == [["ack"]] and not gc.syncing
    assert gc.inline_syncs == 1 and gc.thread_wakeups == 0 and h.wakes == 0
    gc.wrote()
    gc.hold(["ack 2"])
    gc.settle()
    assert h.released == [["ack"], ["ack 2"]] and gc.inline_syncs == 2
    assert not h.reported.is_set()


def test_a_write_during_a_thread_sync_keeps_the_next_at_the_thread(threaded):
    h = threaded()
    gc = h.gc
    gc.idle = False  # a loop that wrote during the last thread sync
    gc.wrote()
    gc.hold(["a"])
    gc.settle()
    assert gc.syncing and gc.inline_syncs == 0 and h.released == []
    gc.wrote()       # written while the thread syncs
    gc.hold(["b"])
    gc.settle()
    h.thread_sync()
    assert h.released == [["a"]] and not gc.idle and gc.thread_wakeups == 1
    assert h.wakes == 1  # "b" needs the next fsync: a pass is asked for
    gc.settle()      # that pass
    h.thread_sync()  # nothing written during this one: idle again
    assert h.released == [["a"], ["b"]] and gc.idle and gc.thread_wakeups == 2
    assert h.wakes == 1
    gc.wrote()
    gc.hold(["c"])
    gc.settle()      # idle: inline, released before settle returns
    assert h.released[-1] == ["c"] and gc.inline_syncs == 1 and gc.idle


def test_after_a_slow_inline_sync_the_next_goes_to_the_thread_until_one_is_fast(threaded):
    h = threaded()
    gc = h.gc
    now = [100.0]
    gc.clock = lambda: now[0]
    slow = [True]

    def sync():
        h.syncs += 1
        if slow[0]:
            now[0] += 1.0  # the disk stalled for a second

    gc._sync = sync
    gc.wrote()
    gc.hold(["a"])
    gc.settle()      # idle: inline, and slow
    assert h.released == [["a"]] and gc.inline_syncs == 1 and gc.last_sync_s == 1.0
    slow[0] = False
    gc.wrote()
    gc.hold(["b"])
    gc.settle()      # idle, but the last sync was slow: the thread takes it
    assert gc.syncing and h.released == [["a"]] and gc.inline_syncs == 1
    h.thread_sync()
    assert h.released == [["a"], ["b"]] and gc.last_sync_s == 0.0 and gc.idle
    gc.wrote()
    gc.hold(["c"])
    gc.settle()      # fast again: inline
    assert h.released[-1] == ["c"] and gc.inline_syncs == 2


def test_inline_off_always_uses_the_thread(threaded):
    h = threaded(inline=False)
    h.gc.wrote()
    h.gc.hold(["a"])
    h.gc.settle()
    assert h.reported.wait(10) and h.released == []
    h.loop.run_ready()
    assert h.released == [["a"]] and h.gc.inline_syncs == 0


def test_a_failed_inline_sync_is_fatal_and_releases_nothing(threaded):
    h = threaded()
    gc = h.gc
    h.fail = True
    gc.wrote()
    gc.hold(["a"])
    gc.settle()
    assert h.released == [] and len(h.fatal) == 1 and gc.synced == 0
