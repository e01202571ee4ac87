"""Group commit: one fsync covers every write made before it started.

Writes are numbered by the caller (wrote()); messages that may leave only
once those writes are durable (acknowledgements, votes) are held with the
number of the newest write (hold()).  At most one fsync runs at a time, in
a worker thread with the GIL released; when it ends, every write up to the
number it started at is durable, and the messages held for them go to
release(msgs).  While it runs the loop goes on stepping and writing, and
the next fsync covers all of that at once.  A failed fsync is fatal: the
page cache may have dropped the data, so it is never retried.

When the loop has nothing else to do, the fsync runs on the loop itself
instead: handing it to the thread and its result back costs two thread
wake-ups, an eventfd write and an extra loop iteration per batch, which at
one waiting client is a third of a node's work for that write, and an idle
loop loses nothing by waiting.  The loop counts as idle while the last
thread sync saw no new write made during it.  A loop blocked in an inline
sync makes no writes, and what arrives meanwhile waits in the sockets for
the next batch, which is what a thread would have let it gather sooner:
alternating the two at 50 clients one write each measured the same
throughput, so an inline sync keeps the loop idle.  A loop whose last
fsync was slow (over inline_max_s) hands the next to the thread: a disk
that stalls must not stop the loop's heartbeats and answers for as long
as it stalls.

A sync that ends asks for a Ready loop pass (wake()) only when writes were
made while it ran: they need the next one.  Its held messages go out from
_sync_done itself, so the pass would have nothing else to do.

Under --fsync never (durable=False) a write counts as durable at once: it
survives a killed process, as the page cache does, and no thread runs.
"""
import _thread
import collections
import threading
import time

from raftfast.runtime.latency import FSYNC_BUCKETS, LatencyHistogram

__all__ = ["GroupCommit"]


class GroupCommit:
    """sync(): blocking, makes every write so far durable (raises OSError).
    release(msgs): messages whose writes are now durable, in order.
    fatal(why): an fsync failed; the node must stop.
    wake(): run the Ready loop soon (writes made during an fsync need the
    next one).

    sync_in_thread=False runs every sync() from the loop (call_soon):
    for tests on a simulated loop, where the thread's timing would make
    them nondeterministic.  Nothing else differs.  With the thread, a
    sync still runs on the loop, at once, while the loop is idle (see
    the module's docstring); inline=False never does that.  clock():
    monotonic seconds, to time each sync against inline_max_s."""

    def __init__(self, loop, sync, release, fatal, wake, durable=True, sync_in_thread=True,
                 inline=True, inline_max_s=0.02, clock=time.monotonic):
        self.loop = loop
        self._sync = sync
        self._release = release
        self._fatal = fatal
        self._wake = wake
        self.durable = durable
        self.sync_in_thread = sync_in_thread
        self.inline = inline
        self.inline_max_s = inline_max_s
        self.clock = clock
        self.last_sync_s = 0.0    # how long the last fsync took, either way
        self.idle = True          # no write came during the last fsync
        self.written = 0   # the number of the newest write
        self.synced = 0    # the newest write known durable
        self.held = collections.deque()  # (write number, messages), in order
        self.syncing = False
        self.stopped = False
        self.fsyncs = 0
        self.thread_wakeups = 0  # fsync results handed to the loop from the thread
        self.inline_syncs = 0    # fsyncs run on the loop, though a thread exists
        # How long each fsync took.  Written by whichever side ran it (one
        # sync at a time), read by the metrics endpoint.
        self.sync_times = LatencyHistogram(FSYNC_BUCKETS)
        # The fsync thread: woken through a raw lock, reporting back with
        # call_soon_threadsafe.  No executor: its futures machinery costs
        # a dozen interpreted calls per fsync, and this runs once per batch.
        self._wakeup = _thread.allocate_lock()
        self._wakeup.acquire()
        self._sync_upto = 0
        self._thread = None

    def start(self):
        if self.durable and self.sync_in_thread:
            self._thread = threading.Thread(target=self._sync_worker, name="fsync", daemon=True)
            self._thread.start()

    def halt(self):
        """Stop reacting (the node is stopping): no sync starts, none is
        reported.  A sync already running finishes in its thread."""
        self.stopped = True

    def stop(self):
        """halt(), and wait for the fsync thread to exit."""
        self.stopped = True
        if self._thread is not None:
            try:
                self._wakeup.release()  # wake it, if idle, to see `stopped` and exit
            except RuntimeError:
                pass  # already released: it is about to run, and exits after
            self._thread.join(timeout=30)
            self._thread = None

    def wrote(self):
        """The caller wrote entries or hard state (to the page cache)."""
        self.written += 1

    def hold(self, msgs):
        """msgs may leave once every write made so far is durable."""
        self.held.append((self.written, msgs))

    def settle(self):
        """After a Ready loop pass: release what is durable already, and
        start an fsync for the rest if none is running."""
        if not self.durable:
            self.synced = self.written  # --fsync never: as durable as it gets
        if self.held and self.held[0][0] <= self.synced:
            self._release_durable()  # do not make it wait for the next fsync
        if self.written > self.synced and not self.syncing and not self.stopped:
            self._start_sync()

    def _release_durable(self):
        held, synced = self.held, self.synced
        msgs = held.popleft()[1]
        if held and held[0][0] <= synced:
            msgs = list(msgs)
            while held and held[0][0] <= synced:
                msgs.extend(held.popleft()[1])
        self._release(msgs)

    def _start_sync(self):
        self.syncing = True
        self._sync_upto = self.written
        if self._thread is None:
            self.loop.call_soon(self._sync_on_loop, self._sync_upto)
        elif self.inline and self.idle and self.last_sync_s <= self.inline_max_s:
            self.inline_syncs += 1
            self._sync_on_loop(self._sync_upto)
        else:
            self._wakeup.release()

    def _timed_sync(self):
        """sync(), timed into last_sync_s: None, or the OSError it raised."""
        start = self.clock()
        try:
            self._sync()
        except OSError as e:
            return e
        finally:
            took = self.last_sync_s = self.clock() - start
            self.sync_times.observe(took)
        return None

    def _sync_on_loop(self, upto):
        if self.stopped:
            self.syncing = False
            return
        self._sync_done(upto, self._timed_sync())

    def _sync_worker(self):
        """The fsync thread: one sync per wake-up; the GIL is released
        inside the log store while the disk works."""
        while True:
            self._wakeup.acquire()
            if self.stopped:
                return
            upto = self._sync_upto
            error = self._timed_sync()  # last_sync_s is read on the loop after the report
            self.thread_wakeups += 1  # only this thread writes it
            try:
                self.loop.call_soon_threadsafe(self._sync_done, upto, error)
            except RuntimeError:
                return  # the loop is closed: the node is stopping
            if self.stopped:
                return

    def _sync_done(self, upto, error):
        self.syncing = False
        if self.stopped:
            return
        self.idle = self.written == upto  # nothing new was written meanwhile
        if error is not None:
            self._fatal(f"fsync failed: {error}")
            return
        self.fsyncs += 1
        self.synced = upto
        if self.held and self.held[0][0] <= upto:
            self._release_durable()
        if self.written > upto:
            self._wake()  # the writes made meanwhile need the next fsync
