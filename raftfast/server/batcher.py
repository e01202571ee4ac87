"""Coalescing the commands of one loop iteration into proposals and read
batches.

Writes gathered from every connection go into one entry block proposed to
the log; reads (GET, MGET, EXISTS, STRLEN, TTL, PTTL, DBSIZE, SCAN) go into
a block of their own, served from the state machine once the runtime
confirms they may be (ReadIndex), never through the log, at the cluster
time the runtime gave the read (so expiry is judged at that time).  Each run of commands remembers its connection's
reply slot, filled once the runtime answers.

The batcher also keeps the window of writes in flight: the bytes proposed
and not yet answered.  Past it, a connection that delivers more is not read
again until answers bring the window back under its size.
"""
import logging
import struct
from time import perf_counter

from raftfast.core import NotLeader, ProposalDropped, TransferInProgress
from raftfast.core.messages import ENTRY_HEADER_SIZE
from raftfast.runtime.latency import COMMIT_BUCKETS, LatencyHistogram
from raftfast.runtime.waiters import NotLeaderNow, RequestFailed
from raftfast.server.replies import encoded_error, take_replies

__all__ = ["Batcher", "entry_offsets"]

log = logging.getLogger("raftfast.client")
# Write replies longer than this (a value returned by GETDEL or SET ... GET)
# are checked against the output limit; the rest are numbers and +OK.
LARGE_WRITE_REPLY = 4096


class Batcher:
    """Coalesces the commands of one loop iteration, from every connection,
    into one entry block (the compiled parser writes each command straight
    into `buf`), proposed at most max_entries entries / max_bytes bytes at a
    time.  `runs` remembers which connection's slot gets which replies."""

    def __init__(self, loop, server, driver, max_entries, max_bytes, linger_us,
                 window_bytes=8 << 20):
        self.loop = loop
        self.server = server
        self.driver = driver
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.linger = linger_us / 1e6
        self.buf = bytearray()
        self.count = 0
        self.runs = []  # (conn, slot, number of entries)
        # Reads of this iteration: the same block format, never proposed.
        self.read_buf = bytearray()
        self.read_count = 0
        self.read_runs = []
        self._handle = None
        self.proposals = 0
        self.entries_proposed = 0
        self.window_bytes = window_bytes
        self.unanswered_bytes = 0  # proposed and not yet answered
        self.throttled = []        # connections not read until the window has room
        self.throttles = 0
        # From a batch's proposal to its entries applied (committed on a
        # majority, each after its fsync), once per batch that commits.
        self.commit_times = LatencyHistogram(COMMIT_BUCKETS)

    def over_window(self):
        """Are the writes in flight, and those gathered, past the window?"""
        return self.unanswered_bytes + len(self.buf) > self.window_bytes

    def throttle(self, conn):
        """Stop reading conn until the window has room again."""
        conn.throttled = True
        conn.transport.pause_reading()
        self.throttled.append(conn)
        self.throttles += 1

    def _answered(self, nbytes):
        self.unanswered_bytes -= nbytes
        self._resume_if_room()

    def _resume_if_room(self):
        if self.throttled and not self.over_window():
            conns, self.throttled = self.throttled, []
            for conn in conns:
                conn.unthrottle()

    def room(self):
        """(entries, bytes) that still fit, and whether the next command
        must be taken whatever its size (only into an empty batch: a
        command larger than the byte limit then goes alone)."""
        return (self.max_entries - self.count, max(0, self.max_bytes - len(self.buf)),
                self.count == 0)

    def added(self, conn, n):
        self.count += n
        self.runs.append((conn, conn.pending(), n))
        if self.count >= self.max_entries or len(self.buf) >= self.max_bytes:
            self.flush()
        else:
            self._arm()

    def added_reads(self, conn, n):
        self.read_count += n
        conn.reads_in_flight += n
        self.read_runs.append((conn, conn.pending(), n))
        if self.read_count >= self.max_entries or len(self.read_buf) >= self.max_bytes:
            self.flush()
        else:
            self._arm()

    def _arm(self):
        if self._handle is None:
            if self.linger > 0:
                self._handle = self.loop.call_later(self.linger, self._flush_gathered)
            else:
                self._handle = self.loop.call_soon(self._flush_gathered)

    def _flush_gathered(self):
        """The iteration's commands are all in: propose them and run the
        runtime's pass at once (it has nothing more to wait for)."""
        self._handle = None
        self.flush()
        self.driver.process_now()

    def flush(self):
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        # Writes first: reads of the same connections must see them.
        if self.count:
            self._flush_writes()
        if self.read_count:
            self._flush_reads()

    def _flush_reads(self):
        block, runs = self.read_buf, self.read_runs
        self.read_buf, self.read_runs, self.read_count = bytearray(), [], 0
        server = self.server
        at = [0]   # the read's cluster time, once driver.read returns it

        def served(result):
            if result is None:
                # Confirmed: answer from the state machine as it stands, at
                # the read's time, leaving out any connection whose replies
                # would pass its output limit (closed before they are built).
                live_block, live_runs = self._within_output_limit(block, runs)
                if live_runs:
                    now = at[0] or self.driver.cluster_time()
                    try:
                        replies, offsets = server.driver.state_machine.read(live_block, now)
                    except MemoryError:
                        self._serve_each(live_block, live_runs, now)
                    else:
                        parts = [[replies, offsets, 0, len(offsets) - 1]]
                        for conn, slot, n in live_runs:
                            slot.value, slot.raw = take_replies(parts, n), True
            else:
                err = server.failure_reply(result)
                for conn, slot, n in runs:
                    slot.value, slot.raw = encoded_error(str(err), n), True
            for conn, slot, n in runs:
                conn.reads_served(n)

        floor = 0
        for conn, slot, n in runs:
            if conn.last_write > floor:
                floor = conn.last_write
        try:
            at[0] = self.driver.read(floor, served)
        except NotLeader:
            served(NotLeaderNow())

    def _within_output_limit(self, block, runs):
        """(block, runs) without the reads of connections whose replies
        would take them past --client-output-buffer-limit, those
        connections closed.  The replies are sized from the store before
        any is built, and only when a bound from the block's commands and the
        longest value and key stored says they might pass it."""
        limit = self.server.cfg.client_output_buffer_limit
        sm = self.server.driver.state_machine
        unsent = max(conn.unsent_bytes() for conn, slot, n in runs)
        if unsent + sm.reply_bound(block) <= limit:
            return block, runs
        sizes = sm.reply_sizes(block)
        owed = {}
        at = 0
        for conn, slot, n in runs:
            owed[conn] = owed.get(conn, 0) + sizes[at + n] - sizes[at]
            at += n
        over = {conn for conn, size in owed.items() if conn.unsent_bytes() + size > limit}
        if not over:
            return block, runs
        for conn in over:
            log.warning("closing client %d: replies of %d bytes would pass "
                        "--client-output-buffer-limit %d", conn.id,
                        conn.unsent_bytes() + owed[conn], limit)
            conn.close_now()
        kept, live_runs = [], []
        for (conn, slot, n), piece in zip(runs, _pieces(block, runs)):
            if conn in over:
                slot.value, slot.raw = b"", True  # its connection is gone
            else:
                kept.append(piece)
                live_runs.append((conn, slot, n))
        return b"".join(kept), live_runs

    def _within_output_limit_written(self, conn, value):
        """The replies of applied writes (a GETDEL's or SET ... GET's value):
        the connection is closed if they would take it past
        --client-output-buffer-limit (the writes have taken effect)."""
        limit = self.server.cfg.client_output_buffer_limit
        if conn.unsent_bytes() + len(value) <= limit:
            return value
        log.warning("closing client %d: replies of %d bytes to applied writes would pass "
                    "--client-output-buffer-limit %d", conn.id,
                    conn.unsent_bytes() + len(value), limit)
        conn.close_now()
        return b""

    def _serve_each(self, block, runs, now):
        """The replies of the whole batch did not fit in memory: build each
        connection's alone, so that only a connection whose own replies do
        not fit is closed (reads change nothing; the node goes on)."""
        mine = {}
        for (conn, slot, n), piece in zip(runs, _pieces(block, runs)):
            mine.setdefault(conn, []).append((slot, n, piece))
        read = self.server.driver.state_machine.read
        for conn, items in mine.items():
            try:
                replies, offsets = read(b"".join(piece for slot, n, piece in items), now)
            except MemoryError:
                log.error("closing client %d: out of memory building its replies", conn.id)
                for slot, n, piece in items:
                    slot.value, slot.raw = b"", True
                conn.close_now()
                continue
            parts = [[replies, offsets, 0, len(offsets) - 1]]
            for slot, n, piece in items:
                slot.value, slot.raw = take_replies(parts, n), True

    def _flush_writes(self):
        block, runs, count = self.buf, self.runs, self.count
        self.buf, self.runs, self.count = bytearray(), [], 0
        nbytes = len(block)
        proposed_at = perf_counter()

        def refused(text):
            for conn, slot, n in runs:
                slot.value, slot.raw = encoded_error(text, n), True
            for conn, slot, n in runs:
                conn.flush()

        def done(result):
            if isinstance(result, RequestFailed):
                refused(str(self.server.failure_reply(result)))
            else:
                self.commit_times.observe(perf_counter() - proposed_at)
                for conn, slot, n in runs:
                    value = take_replies(result, n)
                    if len(value) > LARGE_WRITE_REPLY:
                        value = self._within_output_limit_written(conn, value)
                    slot.value, slot.raw = value, True
                for conn, slot, n in runs:
                    conn.flush()
            self._answered(nbytes)

        try:
            last = self.driver.propose(block, count, done)
            self.unanswered_bytes += nbytes
            self.proposals += 1
            self.entries_proposed += count
            for conn, slot, n in runs:
                conn.last_write = last
        except NotLeader:
            # Leadership moved between the check and the flush: nothing was
            # proposed, so the redirect is the honest answer.
            refused(str(self.server.redirect_error()))
        except TransferInProgress:
            refused("TRYAGAIN leadership transfer in progress")
        except ProposalDropped:
            refused("TRYAGAIN too many uncommitted commands; the leader may have lost its quorum")
        else:
            return
        # The gathered bytes that paused a connection are gone with the
        # refusal: no answer is coming to resume it.
        self._resume_if_room()

    def cancel(self):
        """The server is closing, every connection with it."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.throttled = []
        self.buf, self.runs, self.count = bytearray(), [], 0
        self.read_buf, self.read_runs, self.read_count = bytearray(), [], 0


def entry_offsets(block):
    """Where each entry of a block begins, and then where the last ends (an
    entry's header starts with its data length; the parser's blocks are
    well formed).  Outside the hot path: for limits and refusals."""
    offsets, off, end = [0], 0, len(block)
    while off < end:
        off += ENTRY_HEADER_SIZE + struct.unpack_from("<I", block, off)[0]
        offsets.append(off)
    return offsets


def _pieces(block, runs):
    """The bytes of each run's entries in block, in order (the runs cover
    the block, each its n entries)."""
    offsets, out, i = entry_offsets(block), [], 0
    for conn, slot, n in runs:
        out.append(block[offsets[i]:offsets[i + n]])
        i += n
    return out
