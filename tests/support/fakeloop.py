"""A deterministic event loop on simulated time, for the runtime's tests.

FakeLoop offers what the runtime schedules with (call_soon, call_later,
call_soon_threadsafe, run_in_executor, time) and runs the callbacks one at
a time, in order: ready callbacks first, then the earliest timer, moving
the clock to it.  Nothing runs in another thread (run_in_executor runs the
function on the loop, as a later callback), so a test sees the same
interleaving every time and never sleeps: it advances the clock instead.

    loop = FakeLoop()
    driver = RaftDriver(loop, loop.time, ...)
    loop.run_until(lambda: driver.is_leader, within=5.0)
    loop.advance(0.5)      # run everything due in the next half second
    loop.stall(2.0)        # time passes with nothing running (a paused process)
"""
import collections
import heapq

__all__ = ["FakeLoop", "FakeHandle", "FakeFuture"]


class FakeHandle:
    __slots__ = ("callback", "args", "when", "_cancelled")

    def __init__(self, callback, args, when=None):
        self.callback = callback
        self.args = args
        self.when = when
        self._cancelled = False

    def cancel(self):
        self._cancelled = True

    def cancelled(self):
        return self._cancelled


class FakeFuture:
    """The part of a future the runtime uses: done callbacks (run by the
    loop, as asyncio does), result() and exception()."""

    def __init__(self, loop):
        self._loop = loop
        self._done = False
        self._result = None
        self._exception = None
        self._callbacks = []

    def _run(self, fn):
        try:
            self._result = fn()
        except Exception as e:
            self._exception = e
        self._done = True
        for cb in self._callbacks:
            self._loop.call_soon(cb, self)
        self._callbacks = []

    def done(self):
        return self._done

    def add_done_callback(self, cb):
        if self._done:
            self._loop.call_soon(cb, self)
        else:
            self._callbacks.append(cb)

    def result(self):
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self):
        return self._exception


class FakeLoop:
    def __init__(self, start=1000.0):
        self.now = start
        self._ready = collections.deque()
        self._timers = []  # heap of (when, sequence, handle)
        self._sequence = 0
        self.callbacks_run = 0

    def time(self):
        return self.now

    # ---- what the runtime calls

    def call_soon(self, callback, *args):
        handle = FakeHandle(callback, args)
        self._ready.append(handle)
        return handle

    call_soon_threadsafe = call_soon  # nothing here runs in another thread

    def call_later(self, delay, callback, *args):
        return self.call_at(self.now + max(0.0, delay), callback, *args)

    def call_at(self, when, callback, *args):
        handle = FakeHandle(callback, args, when)
        self._sequence += 1
        heapq.heappush(self._timers, (when, self._sequence, handle))
        return handle

    def run_in_executor(self, executor, fn, *args):
        future = FakeFuture(self)
        self.call_soon(future._run, (lambda: fn(*args)) if args else fn)
        return future

    # ---- what the test calls

    def next_event_time(self):
        """When the next callback would run: now if one is ready, else the
        earliest live timer's time, else None."""
        if self._ready:
            return self.now
        while self._timers and self._timers[0][2].cancelled():
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def run_one(self, until=None):
        """Run the next callback (moving the clock to its timer, if it is
        one, but never past `until`); False when there was none to run."""
        when = self.next_event_time()
        if when is None or (until is not None and when > until):
            return False
        if self._ready:
            handle = self._ready.popleft()
        else:
            handle = heapq.heappop(self._timers)[2]
            self.now = max(self.now, handle.when)
        if not handle.cancelled():
            self.callbacks_run += 1
            handle.callback(*handle.args)
        return True

    def run_ready(self, limit=100_000):
        """Run the callbacks that are ready now (and those they make ready),
        without moving the clock."""
        for _ in range(limit):
            if not self._ready:
                return
            self.run_one(until=self.now)
        raise AssertionError(f"still busy after {limit} callbacks at t={self.now}")

    def advance(self, seconds):
        """Run everything due within the next `seconds`, in time order, and
        leave the clock at the end of that span."""
        end = self.now + seconds
        while self.run_one(until=end):
            pass
        self.now = end

    def stall(self, seconds):
        """Time passes with nothing running: timers that fall due meanwhile
        run late, all at once, when the loop goes on."""
        self.now += seconds

    def run_until(self, pred, within, what=None):
        """Run callbacks until pred() holds, or fail once `within` simulated
        seconds passed.  Returns the time pred() first held."""
        end = self.now + within
        while not pred():
            if not self.run_one(until=end):
                raise AssertionError(f"not within {within:g} s (simulated): "
                                     f"{what or getattr(pred, '__name__', 'the condition')}")
        return self.now
