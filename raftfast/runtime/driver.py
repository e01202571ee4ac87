"""Drives one sans-IO Raft core on the node's event loop.

The loop, per input (a peer message, a tick, a proposal):

    core.step(...)  ->  ready()  ->  write entries/hard state (page cache)
                                 ->  send messages
                                 ->  hold persist_messages until durable
                                 ->  apply committed entries, answer clients
                                 ->  advance()

Durability is a group commit: at most one fsync runs at a time, in a
worker thread with the GIL released; when it ends, everything written
before it started is durable, and the messages held for those writes go
out (a node's acknowledgement of its own writes is stepped back into its
core, which is how a leader counts itself toward a commit).  While the
fsync runs, the loop keeps stepping, sending and writing: the next fsync
covers all of that at once.  A failed write or fsync is fatal: the node
stops rather than retry (the page cache may have dropped the data).
"""
import _thread
import collections
import concurrent.futures
import heapq
import logging
import threading
import random
import time

from raftfast._codec import encode_message
from raftfast._kv import SnapshotBusy
from raftfast.address import AddressError
from raftfast.core import LEADER, CoreConfig, Raft
from raftfast.core.messages import (MSG_APPEND, MSG_SNAPSHOT, MSG_SNAPSHOT_ACK, MSG_SNAPSHOT_CHUNK,
                                    Message)
from raftfast.runtime.snapshot import SnapshotError, SnapshotWriter
from raftfast.runtime.snapshot_transfer import Receiver, Sender
from raftfast.runtime.storage import StorageError

log = logging.getLogger("raftfast.driver")


class Waiter:
    """Clients waiting for the entries [first, last] proposed in `term`."""

    __slots__ = ("first", "last", "term", "callback", "deadline", "results")

    def __init__(self, first, last, term, callback, deadline):
        self.first = first
        self.last = last
        self.term = term
        self.callback = callback  # callback(results list) or callback(error str)
        self.deadline = deadline
        self.results = []


class ReadWaiter:
    """A batch of reads waiting to be confirmed (ReadIndex), then for the
    state machine to apply through `index`.  `floor`: the last write its
    connections proposed, which the reads must see."""

    __slots__ = ("floor", "callback", "deadline", "index")

    def __init__(self, floor, callback, deadline):
        self.floor = floor
        self.callback = callback  # callback(None) to serve, or callback(error)
        self.deadline = deadline
        self.index = 0

    def __lt__(self, other):  # heap order among equal indexes: any
        return self.deadline < other.deadline


class TransferWaiter:
    __slots__ = ("target", "callback", "deadline")

    def __init__(self, target, callback, deadline):
        self.target = target
        self.callback = callback  # callback(None) once target leads, or callback(error)
        self.deadline = deadline


# A read that lost its leader is answered with a redirect by the caller.
NOT_LEADER = "not leader"


class OutcomeUnknown(Exception):
    """The proposal's fate is not known (leadership lost, or no quorum in time)."""


class RaftDriver:
    def __init__(self, loop, cfg, storage, kv, transport, conf, on_fatal, tick_ms):
        """conf: (voters, learners, urls), the configuration the core starts
        from (Storage.configuration())."""
        self.loop = loop
        self.cfg = cfg
        self.storage = storage
        self.kv = kv
        self.transport = transport
        self.on_fatal = on_fatal
        self.tick_s = tick_ms / 1000.0
        election_ticks = max(2, cfg.election_timeout_ms // tick_ms)
        heartbeat_ticks = max(1, cfg.heartbeat_interval_ms // tick_ms)
        if heartbeat_ticks >= election_ticks:
            heartbeat_ticks = election_ticks - 1
        voters, learners, urls = conf
        core_cfg = CoreConfig(
            cfg.node_id, voters, learners, urls=urls, election_ticks=election_ticks,
            heartbeat_ticks=heartbeat_ticks, max_msg_bytes=cfg.max_batch_bytes,
            max_inflight=cfg.max_inflight, max_inflight_bytes=cfg.max_inflight_bytes,
            read_mode=cfg.read_mode, seed=random.SystemRandom().randrange(1 << 62))
        self.core = Raft(core_cfg, storage.entry_log, storage.hard_state, storage.snap_index,
                         storage.snap_term)
        self.fsync = cfg.fsync == "always"
        # Client proposals waiting to be applied, in index order.
        self.waiters = collections.deque()
        self.request_timeout = max(5.0, 4 * cfg.election_timeout_ms / 1000.0)
        # Reads: token -> waiter until confirmed (in arrival order, which is
        # deadline order), then a heap by the index they wait to see applied.
        self.read_waiters = collections.OrderedDict()
        self.reads_to_apply = []
        self._read_tokens = 0
        self.transfers = []
        self.transfer_timeout = 2 * cfg.election_timeout_ms / 1000.0
        # Group commit state: writes are numbered; `synced` is the newest
        # write known durable.  held: (write number, messages) in order.
        self.written = 0
        self.synced = 0
        self.held = collections.deque()
        self.syncing = False
        self._scheduled = False
        self._tick_handle = None
        self._ticks_due_from = time.monotonic()  # ticks are counted from here
        self._stopped = False
        self._was_leader = False
        # The fsync thread: woken through a raw lock, reporting back with
        # call_soon_threadsafe.  No executor: its futures machinery costs
        # a dozen interpreted calls per fsync, and this runs once per batch.
        self._sync_wakeup = _thread.allocate_lock()
        self._sync_wakeup.acquire()
        self._sync_upto = 0
        self._sync_thread = None
        # Counters for INFO stats and the benchmarks.
        self.applied_entries = 0
        self.fsyncs = 0
        self.appends_sent = 0
        self.entries_sent = 0
        self.append_frames_encoded = 0
        self.entries_written = 0
        self.reads_served = 0
        self.read_batches = 0
        # Membership: what the peer addresses were last derived from.
        self._conf_seen = -1
        self._leader_seen = -1
        self._snap_init()

    # ------------------------------------------------------------ running

    def start(self):
        if self.fsync:
            self._sync_thread = threading.Thread(target=self._sync_worker, name="fsync",
                                                 daemon=True)
            self._sync_thread.start()
        self._ticks_due_from = time.monotonic()
        self._tick_handle = self.loop.call_later(self.tick_s, self._on_tick)
        self._refresh_peer_addresses()  # membership: dial the starting configuration
        self.schedule()

    def stop(self):
        self._stopped = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._fail_waiters("TIMEOUT outcome unknown")
        self._fail_reads(NOT_LEADER)
        self._end_transfers("TIMEOUT transfer did not complete")
        self._snap_stop()
        if self._sync_thread is not None:
            try:
                self._sync_wakeup.release()  # wake it, if idle, to see _stopped and exit
            except RuntimeError:
                pass  # already released: it is about to run, and exits after
            self._sync_thread.join(timeout=30)
            self._sync_thread = None

    def schedule(self):
        """Run the Ready loop once, soon; many inputs in one loop iteration
        share one pass (and so one write and one send per peer)."""
        if not self._scheduled and not self._stopped:
            self._scheduled = True
            self.loop.call_soon(self._process)

    def _on_tick(self):
        if self._stopped:
            return
        self._tick_handle = self.loop.call_later(self.tick_s, self._on_tick)
        self._catch_up_ticks()
        self._snap_tick()
        self._expire_waiters()
        self._expire_reads()
        self.schedule()

    def _catch_up_ticks(self):
        """Tick the core once per tick period that has passed on the
        monotonic clock: after a stall (a stopped process, a long pause)
        the core learns at once how much time went by, rather than one tick
        per callback.  A lease read relies on this: a leader that was
        stopped must see its lease as expired before it answers."""
        now = time.monotonic()
        due = int((now - self._ticks_due_from) / self.tick_s)
        if due <= 0:
            return
        self._ticks_due_from += due * self.tick_s
        # Bounded: beyond a few election timeouts, more ticks change nothing.
        for _ in range(min(due, 1000)):
            self.core.tick()

    def on_peer_state(self, peer, writable, lost):
        """The transport's flow-control callback."""
        if self._stopped:
            return
        if lost:
            self.core.report_unreachable(peer)  # what was in that socket may be gone
        self.core.set_flow_paused(peer, not writable)
        self._snap_peer_state(peer, writable, lost)
        self.schedule()

    def step(self, msg):
        """A message from a peer (the transport's callback)."""
        if self._stopped:
            return
        if msg.type >= MSG_SNAPSHOT:
            self._snap_message(msg)  # runtime-level: never stepped into the core as is
            return
        try:
            self.core.step(msg)
        except Exception as e:
            self._internal_error(e)
            return
        self.schedule()

    # --------------------------------------------------------- proposals

    @property
    def is_leader(self):
        return self.core.role == LEADER

    def propose(self, block, count, callback):
        """Propose an entry block (built with term 0) on behalf of clients.
        callback(results) gets one result per entry once they are applied,
        or callback(error_text) if their fate becomes unknown.  Raises
        NotLeader when this node cannot take proposals."""
        first, last = self.core.propose(block)
        if last - first + 1 != count:
            raise AssertionError(f"proposed {count} entries, log took {last - first + 1}")
        self.waiters.append(Waiter(first, last, self.core.term, callback,
                                   time.monotonic() + self.request_timeout))
        self.schedule()
        return last

    def read(self, floor, callback):
        """Linearizable reads (ReadIndex, or a lease read): callback(None)
        once they may be served from the state machine as it stands, which
        will have applied every write committed before they arrived and
        the log through `floor`; callback(NOT_LEADER) if leadership is lost
        first, callback("TIMEOUT ...") if not confirmed in time.  Raises
        NotLeader when this node cannot serve them."""
        if self.cfg.read_mode == "lease":
            self._catch_up_ticks()  # time passed while we were not running counts
        self._read_tokens += 1
        token = self._read_tokens
        self.core.read_index(token)
        self.read_waiters[token] = ReadWaiter(min(floor, self.core.log.last_index), callback,
                                              time.monotonic() + self.request_timeout)
        self.read_batches += 1
        self.schedule()

    def transfer_leadership(self, target, callback):
        """RAFT.TRANSFER_LEADER: callback(None) once `target` leads,
        callback(error) when the transfer is abandoned or times out.
        Raises NotLeader or ValueError (not a voter)."""
        core = self.core
        core.transfer_leadership(target)
        if target == core.id:
            callback(None)
            return
        self.transfers.append(TransferWaiter(target, callback,
                                             time.monotonic() + self.transfer_timeout))
        self.schedule()

    def _serve_reads(self, read_states):
        applied = self.core.log.applied
        for token, index in read_states:
            w = self.read_waiters.pop(token, None)
            if w is None:
                continue  # timed out meanwhile
            w.index = max(index, w.floor)
            if w.index <= applied:
                self.reads_served += 1
                w.callback(None)
            else:
                heapq.heappush(self.reads_to_apply, (w.index, w))

    def _serve_applied_reads(self):
        heap, applied = self.reads_to_apply, self.core.log.applied
        while heap and heap[0][0] <= applied:
            self.reads_served += 1
            heapq.heappop(heap)[1].callback(None)

    def _fail_reads(self, error):
        waiters = list(self.read_waiters.values()) + [w for _, w in self.reads_to_apply]
        self.read_waiters.clear()
        self.reads_to_apply = []
        for w in waiters:
            w.callback(error)

    def _expire_reads(self):
        now = time.monotonic()
        rw = self.read_waiters
        while rw:
            token, w = next(iter(rw.items()))
            if w.deadline >= now:
                break
            del rw[token]
            w.callback("TIMEOUT outcome unknown")
        if self.transfers:
            self._check_transfers()

    def _check_transfers(self):
        """Answer the transfers whose fate is known: the target leads (OK),
        or the leader took writes again / someone else leads / time is up."""
        core, now, still = self.core, time.monotonic(), []
        for t in self.transfers:
            if core.role != LEADER and core.leader_id == t.target:
                t.callback(None)
            elif ((core.role == LEADER and core.lead_transferee != t.target)
                  or (core.role != LEADER and core.leader_id not in (0, t.target))
                  or t.deadline < now):
                t.callback("TIMEOUT transfer did not complete")
            else:
                still.append(t)
        self.transfers = still

    def _end_transfers(self, error):
        transfers, self.transfers = self.transfers, []
        for t in transfers:
            t.callback(error)

    def _fail_waiters(self, error):
        waiters, self.waiters = self.waiters, collections.deque()
        for w in waiters:
            w.callback(error)

    def _expire_waiters(self):
        if self.waiters and self.waiters[0].deadline < time.monotonic():
            now = time.monotonic()
            while self.waiters and self.waiters[0].deadline < now:
                self.waiters.popleft().callback("TIMEOUT outcome unknown")

    # -------------------------------------------------------- ready loop

    def _process(self):
        self._scheduled = False
        if self._stopped:
            return
        core = self.core
        try:
            while core.has_ready():
                rd = core.ready()
                if rd.snapshot is not None or self._install is not None:
                    self._snap_ready(rd)  # before anything else of this Ready
                if core.conf_version != self._conf_seen or core.leader_id != self._leader_seen:
                    self._refresh_peer_addresses()  # membership: before sending to new members
                if rd.entries or rd.hard_state is not None:
                    for first, block, count in rd.entries:
                        self.storage.append(first, block, count)
                        self.entries_written += count
                    if rd.hard_state is not None:
                        self.storage.save_hard_state(rd.hard_state)
                    self.written += 1
                if rd.messages:
                    self._send(rd.messages)
                if rd.persist_messages:
                    self.held.append((self.written, rd.persist_messages))
                if rd.committed is not None:
                    self._apply(*rd.committed)
                core.advance(rd)
                if rd.read_states:
                    self._serve_reads(rd.read_states)
                if self.reads_to_apply:
                    self._serve_applied_reads()
        except OSError as e:
            self._fatal(f"storage write failed: {e}")
            return
        except Exception as e:
            # Half a Ready was carried out; going on could apply it twice.
            self._internal_error(e)
            return
        if self._was_leader and core.role != LEADER:
            # Deposed: whatever is pending may or may not commit under the
            # next leader.  Say so rather than guess.
            self._fail_waiters("TIMEOUT outcome unknown")
            self._fail_reads(NOT_LEADER)
        self._was_leader = core.role == LEADER
        self._snap_after_process()
        if self.transfers:
            self._check_transfers()
        if not self.fsync:
            self.synced = self.written  # --fsync never: as durable as it gets
        if self.held and self.held[0][0] <= self.synced:
            self._release()  # already durable: do not make it wait for the next fsync
        if self.written > self.synced and not self.syncing and not self._stopped:
            self._start_sync()

    def _send(self, msgs):
        transport = self.transport
        frames = {}  # one encoding per distinct AppendEntries (encode once, send to many)
        for m in msgs:
            if m.type == MSG_APPEND and m.entries is not None:
                self.appends_sent += 1
                self.entries_sent += m.count
                key = (id(m.entries), m.term, m.index, m.log_term, m.commit)
                frame = frames.get(key)
                if frame is None:
                    frame = frames[key] = encode_message(m)
                    self.append_frames_encoded += 1
                ok = transport.send_frame(m.to, frame)
            elif m.type == MSG_SNAPSHOT:
                self._snap_send(m)  # streamed by a Sender, never encoded as is
                continue
            else:
                if m.type == MSG_APPEND:
                    self.appends_sent += 1
                ok = transport.send(m)
            if not ok:
                self.core.report_unreachable(m.to)

    def _start_sync(self):
        self.syncing = True
        self._sync_upto = self.written
        self._sync_wakeup.release()

    def _sync_worker(self):
        """The fsync thread: one sync per wake-up; the GIL is released
        inside the log store while the disk works."""
        while True:
            self._sync_wakeup.acquire()
            if self._stopped:
                return
            upto, error = self._sync_upto, None
            try:
                self.storage.sync()
            except OSError as e:
                error = e
            try:
                self.loop.call_soon_threadsafe(self._sync_done, upto, error)
            except RuntimeError:
                return  # the loop is closed: the node is stopping
            if self._stopped:
                return

    def _sync_done(self, upto, error):
        self.syncing = False
        if self._stopped:
            return
        if error is not None:
            self._fatal(f"fsync failed: {error}")
            return
        self.fsyncs += 1
        self.synced = upto
        self._release()
        self.schedule()

    def _release(self):
        """Send (or step into our own core) every message whose writes are
        now durable."""
        held, core, me = self.held, self.core, self.core.id
        out = []
        try:
            while held and held[0][0] <= self.synced:
                for m in held.popleft()[1]:
                    if m.to == me:
                        core.step(m)
                    else:
                        out.append(m)
        except Exception as e:
            self._internal_error(e)
            return
        if out:
            self._send(out)
        if core.has_ready():
            self.schedule()

    def _apply(self, first, block, count):
        if not self.waiters:
            self.kv.apply(block, False)  # a follower, or nobody waiting: no replies
            self.applied_entries += count
            return
        # Replies are encoded in C into one buffer; a waiter gets pieces
        # [replies, offsets, lo, hi] naming its entries' replies in it.
        replies, offsets = self.kv.apply_replies(block)
        self.applied_entries += count
        last = first + count - 1
        waiters, term_of = self.waiters, self.core.log.term
        while waiters and waiters[0].first <= last:
            w = waiters[0]
            if w.last < first:
                # Its entries were applied without it being matched; it
                # cannot happen, but a client must never wait forever.
                waiters.popleft()
                w.callback("TIMEOUT outcome unknown")
                continue
            if term_of(w.first) != w.term or term_of(min(w.last, last)) != w.term:
                # Another leader's entry took this index: ours never committed.
                waiters.popleft()
                w.callback("TIMEOUT outcome unknown")
                continue
            lo = max(w.first, first) - first
            hi = min(w.last, last) - first + 1
            w.results.append([replies, offsets, lo, hi])
            if w.last > last:
                break  # the rest arrives with the next committed block
            waiters.popleft()
            w.callback(w.results)

    # -------------------------------------------------------- membership

    def change_membership(self, op, node_id, url, callback):
        """RAFT.NODE ADD/REMOVE: propose the change ("add": as a learner
        dialed at `url`; "remove"); callback(None) once its entry is applied,
        callback(error_text) if its fate becomes unknown (leadership lost,
        no quorum in time).  Raises what core.propose_conf_change raises:
        NotLeader, TransferInProgress, ConfChangeBusy, ConfChangeInvalid."""
        index = self.core.propose_conf_change(op, node_id, url)

        def applied(result):
            # The state machine gives a configuration entry an empty reply:
            # being applied is the whole answer.
            callback(result if isinstance(result, str) else None)

        # A client write's waiter: the same answers on apply, on a lost
        # leadership and on timeout.
        self.waiters.append(Waiter(index, index, self.core.term, applied,
                                   time.monotonic() + self.request_timeout))
        self.schedule()
        return index

    def _refresh_peer_addresses(self):
        """The configuration or the leader changed: dial every member at the
        address the configuration names for it, unless --peer names one
        (--peer always wins), and forget the addresses of ids
        that are neither members, --peer'd, nor the leader.  The leader is
        kept even outside the configuration: a leader removing itself leads
        until that change commits, and its followers must still answer it."""
        core, transport, flags = self.core, self.transport, self.cfg.peers
        self._conf_seen = core.conf_version
        self._leader_seen = core.leader_id
        members = core.voters | core.learners
        urls = core.urls
        for nid in members:
            url = urls.get(nid)
            if nid == core.id or nid in flags or not url:
                continue
            try:
                transport.set_address(nid, url)
            except AddressError as e:
                # A configuration from the log is data: a bad address in it
                # must not stop the node; that member just cannot be dialed.
                log.warning("member %d: cannot dial it: %s", nid, e)
        for nid in transport.dialed_ids():
            if nid not in members and nid not in flags and nid != core.leader_id:
                transport.set_address(nid, None)

    # ---------------------------------------------------------- snapshots
    #
    # Everything about snapshots lives in this section; elsewhere one-line
    # hooks call in (step, on_peer_state, _on_tick, _process, _send, stop).
    #   taking:     every --snapshot-entries applied entries, a SnapshotWriter
    #               stepped from the loop, sync() in a thread, then the log
    #               compacted behind it (storage in a thread, then the core);
    #   sending:    the core's MSG_SNAPSHOT starts a Sender to that follower;
    #   installing: a Receiver collects the leader's chunks; the complete
    #               file is fsynced in a thread, loaded in steps from the
    #               loop, stepped into the core as MSG_SNAPSHOT, and if the
    #               next Ready says rd.snapshot, made the node's snapshot.
    # A failure to take or compact is logged and retried later; only a
    # failed install (the core already moved on) stops the node.

    SNAP_STEP_KEYS = 8192        # keys per write/merge step: ~1 ms each
    SNAP_FLUSH_BYTES = 1 << 20   # fdatasync the file being written this often (in a thread)
    SNAP_RETRY_S = 5.0           # after a failed snapshot or compaction

    def _snap_init(self):
        timeout_s = self.cfg.election_timeout_ms / 1000.0
        self.snap_resend_after = max(1.0, timeout_s)
        self.snap_give_up_after = max(10.0, 10 * timeout_s)
        self.senders = {}               # peer -> Sender
        self.receiver = Receiver(self.core.id, self.storage.incoming_snapshot_path,
                                 stall_after=2 * self.snap_give_up_after)
        self._received = None           # ReceivedSnapshot being synced or loaded
        self._install = None            # ... stepped into the core, awaiting its Ready
        self._snap_offer_waiting = False
        self._snap_writer = None
        self._snap_started = 0.0        # monotonic time the writer began
        self._snap_jobs = 0             # worker-thread jobs running (sync, compaction)
        # Their one thread (they run one after the other anyway); stop()
        # waits for it, so no job touches storage after the node closed it.
        self._snap_pool = concurrent.futures.ThreadPoolExecutor(1, "snapshot")
        self._snap_retry_at = 0.0
        self._snap_base = self.core.snapshot_index  # applied index of the newest snapshot
        self._v1_warned = set()
        # node.py's hook: called with the new KVStore once one is installed.
        self.on_kv_replaced = None
        self.snapshots_taken = 0
        self.snapshot_failures = 0
        self.compactions = 0
        self.snapshots_sent = 0
        self.snapshot_sends_failed = 0
        self.snapshot_bytes_sent = 0
        self.snapshots_installed = 0

    def snapshot_stats(self):
        """Counters for INFO stats."""
        return {
            "raftfast_snapshots_taken": self.snapshots_taken,
            "raftfast_snapshot_failures": self.snapshot_failures,
            "raftfast_compactions": self.compactions,
            "raftfast_snapshots_sent": self.snapshots_sent,
            "raftfast_snapshot_sends_failed": self.snapshot_sends_failed,
            "raftfast_snapshot_bytes_sent": self.snapshot_bytes_sent,
            "raftfast_snapshot_bytes_received": self.receiver.bytes_received,
            "raftfast_snapshots_installed": self.snapshots_installed,
        }

    def _snap_in_thread(self, fn, then, *args):
        """Run fn() in a worker thread, then then(error, result, *args) on
        the loop.  Nothing else touches what fn uses meanwhile."""
        self._snap_jobs += 1

        def done(fut):
            self._snap_jobs -= 1
            if self._stopped:
                return
            error = fut.exception()
            try:
                then(error, None if error is not None else fut.result(), *args)
            except Exception as e:
                self._internal_error(e)
                return
            if self._snap_jobs == 0 and self._snap_offer_waiting:
                self._snap_offer_waiting = False
                self._snap_offer()

        self.loop.run_in_executor(self._snap_pool, fn).add_done_callback(done)

    # ---- taking snapshots and compacting

    def _snap_after_process(self):
        core = self.core
        if self.senders:
            for peer, s in list(self.senders.items()):
                if core.role != LEADER or s.term != core.term:
                    s.close()  # the leader of the day decides what a follower needs
                    del self.senders[peer]
        if (self.cfg.snapshot_entries
                and core.log.applied - self._snap_base >= self.cfg.snapshot_entries):
            self._snap_maybe_take()

    def _snap_maybe_take(self):
        if (self._snap_writer is not None or self._snap_jobs or self._received is not None
                or self._install is not None or time.monotonic() < self._snap_retry_at):
            return
        core = self.core
        index = core.log.applied
        if index <= core.snapshot_index:
            return
        try:
            writer = SnapshotWriter(self.kv, self.storage.snapshot_path(index), index,
                                    core.log.term(index), meta=core.config_at(index))
        except SnapshotBusy:
            # The last snapshot's overlay is still merging back; help it along.
            self.kv.merge_step(self.SNAP_STEP_KEYS)
            return
        except (SnapshotError, OSError, ValueError) as e:
            self._snap_failed(e)
            return
        self._snap_writer = writer
        self._snap_started = time.monotonic()
        self.loop.call_soon(self._snap_write_step, writer)

    def _snap_write_step(self, writer):
        if self._snap_writer is not writer or self._stopped:
            return
        try:
            if not writer.write_step(self.SNAP_STEP_KEYS):
                if writer.unflushed >= self.SNAP_FLUSH_BYTES:
                    # Pace the file to the disk a few megabytes at a time,
                    # so the log's fsyncs never queue behind all of it.
                    self._snap_in_thread(writer.flush_to_disk, self._snap_flushed, writer)
                else:
                    self.loop.call_soon(self._snap_write_step, writer)  # yield to the loop
                return
        except SnapshotError as e:
            self._snap_writer = None
            self._snap_failed(e)
            return
        # Every key is in the file; fsync off the loop while the overlay
        # merges back on it (sync touches only the file).
        self._snap_in_thread(writer.sync, self._snap_synced, writer)
        self.loop.call_soon(self._snap_merge_step, writer)

    def _snap_flushed(self, error, _, writer):
        if self._snap_writer is not writer:
            return
        if error is not None:
            self._snap_writer = None
            writer.abort()
            self._snap_failed(error)
            return
        self._snap_write_step(writer)

    def _snap_merge_step(self, writer):
        if not self._stopped and writer.kv is self.kv and not writer.merge_step(
                self.SNAP_STEP_KEYS):
            self.loop.call_soon(self._snap_merge_step, writer)

    def _snap_synced(self, error, _, writer):
        self._snap_writer = None
        if error is not None:
            writer.abort()
            self._snap_failed(error)
            return
        core = self.core
        self.snapshots_taken += 1
        self._snap_base = max(self._snap_base, writer.index)
        if writer.index > core.snapshot_index:
            core.snapshot_taken(writer.index, writer.term)
        log.info("snapshot at index %d (term %d, %d keys, %d bytes) taken in %.0f ms",
                 writer.index, writer.term, writer.count, writer.bytes,
                 1000 * (time.monotonic() - self._snap_started))
        self._snap_compact()

    def _snap_compact(self):
        core = self.core
        upto = core.compactable(self.cfg.snapshot_trailing)
        if upto <= core.log.snap_index:
            return
        snap = core.snapshot_index
        self._snap_in_thread(lambda: self.storage.compact(snap, trailing=snap - upto),
                             self._snap_compacted, upto)

    def _snap_compacted(self, error, result, upto):
        if error is not None:
            self._snap_failed(error, "compaction")
            return
        self.core.compact(upto)
        self.compactions += 1
        segments, snapshots = result
        log.info("log compacted through index %d (%d segment(s), %d old snapshot(s) "
                 "deleted)", upto, len(segments), len(snapshots))

    def _snap_failed(self, error, what="snapshot"):
        self.snapshot_failures += 1
        self._snap_retry_at = time.monotonic() + self.SNAP_RETRY_S
        log.warning("%s failed: %s; retrying in %g s", what, error, self.SNAP_RETRY_S)

    # ---- sending a snapshot to a follower

    def _snap_send(self, m):
        """The core wants follower m.to to get the snapshot at m.index."""
        peer = m.to
        s = self.senders.get(peer)
        if s is not None:
            if s.term == m.term and s.index == m.index:
                return  # already on its way
            s.close()
            del self.senders[peer]
        if self.transport.peer_version(peer) == 1 and peer not in self._v1_warned:
            self._v1_warned.add(peer)
            log.warning("node %d speaks protocol v1 only and cannot receive a snapshot; "
                        "it stays behind until it is upgraded", peer)
        transport = self.transport

        def send(chunk):
            ok = transport.send(chunk)
            if ok:
                self.snapshot_bytes_sent += len(chunk.entries or b"")
            return ok

        try:
            s = Sender(self.core.id, peer, m.term, m.index, m.log_term,
                       self.storage.snapshot_path(m.index), send,
                       lambda: transport.can_send(peer), time.monotonic(),
                       resend_after=self.snap_resend_after,
                       give_up_after=self.snap_give_up_after)
        except (SnapshotError, OSError) as e:
            log.error("cannot send node %d the snapshot at %d: %s", peer, m.index, e)
            # Reported later, not now: the core would ask again at once.
            self.loop.call_later(self.snap_resend_after, self._snap_report, peer, m.term, False)
            return
        log.info("sending node %d the snapshot at index %d (%d bytes)", peer, m.index, s.size)
        self.senders[peer] = s
        s.pump()

    def _snap_report(self, peer, term, ok):
        if not self._stopped and self.core.term == term:
            self.core.report_snapshot(peer, ok)
            self.schedule()

    def _snap_sender_check(self, s):
        if s.result is None:
            return
        if self.senders.get(s.peer) is s:
            del self.senders[s.peer]
        if s.result:
            self.snapshots_sent += 1
            log.info("node %d has the snapshot at index %d", s.peer, s.index)
        else:
            self.snapshot_sends_failed += 1
            log.warning("sending node %d the snapshot at %d failed: %s", s.peer, s.index, s.why)
        self._snap_report(s.peer, s.term, s.result)

    def _snap_peer_state(self, peer, writable, lost):
        if writable and self.receiver.cur is not None:
            ack = self.receiver.ack_again(peer)
            if ack is not None:
                self.transport.send(ack)
        s = self.senders.get(peer)
        if s is None:
            return
        if lost:
            s.on_peer_lost()
        if writable:
            s.pump()

    def _snap_tick(self):
        if self.senders:
            now = time.monotonic()
            for s in list(self.senders.values()):
                s.tick(now)
                self._snap_sender_check(s)
        if self.receiver.cur is not None:
            self.receiver.tick(time.monotonic())

    # ---- receiving and installing the leader's snapshot

    def _snap_message(self, m):
        if m.type == MSG_SNAPSHOT_ACK:
            s = self.senders.get(m.frm)
            if s is not None:
                s.on_ack(m, time.monotonic())
                self._snap_sender_check(s)
        elif m.type == MSG_SNAPSHOT_CHUNK:
            core = self.core
            ack, done = self.receiver.on_chunk(m, core.term, core.log.committed,
                                               time.monotonic())
            if ack is not None:
                self.transport.send(ack)
            if done is not None:
                self._snap_received(done)
        else:
            # MSG_SNAPSHOT is the runtime's word to its own core, never a
            # peer's: stepping one would restore a snapshot nobody sent.
            log.debug("dropped a %r from the wire", m)

    def _snap_received(self, done):
        old = self._received
        if old is not None and not old.syncing:
            old.discard()  # superseded by a newer one (if syncing: once its thread is done)
        self._received = done
        log.info("snapshot at index %d (%d bytes) received from node %d; loading it",
                 done.index, done.size, done.leader)
        if self.fsync:
            done.syncing = True
            self._snap_in_thread(done.sync, self._snap_file_synced, done)
        else:
            done.sync(fsync=False)  # --fsync never: closing it is all
            self._snap_file_synced(None, None, done)

    def _snap_file_synced(self, error, _, done):
        done.syncing = False
        if self._received is not done:
            done.discard()
            return
        if error is not None:
            log.error("snapshot from node %d: fsync of %s failed: %s", done.leader, done.path,
                      error)
            self._snap_drop_received()
            return
        self.loop.call_soon(self._snap_load_step, done)

    def _snap_load_step(self, done):
        if self._received is not done or self._stopped:
            return
        try:
            if not done.load_step(1):
                self.loop.call_soon(self._snap_load_step, done)  # yield to the loop
                return
        except SnapshotError as e:
            log.error("snapshot from node %d is unusable: %s", done.leader, e)
            self._snap_drop_received()
            return
        self._snap_offer()

    def _snap_drop_received(self):
        done, self._received = self._received, None
        if done is not None:
            done.discard()
        self.receiver.forget_done()

    def _snap_offer(self):
        """Step the loaded snapshot into the core; the next Ready says
        whether it took it (rd.snapshot)."""
        done = self._received
        if done is None or self._stopped:
            return
        if self._snap_jobs:
            # A snapshot sync or compaction of our own is touching storage;
            # install after it.
            self._snap_offer_waiting = True
            return
        if self._snap_writer is not None:
            self._snap_writer.abort()  # of a state about to be replaced
            self._snap_writer = None
        self._received = None
        self._install = done
        core = self.core
        try:
            core.step(Message(MSG_SNAPSHOT, frm=done.leader, to=core.id, term=done.term,
                              index=done.index, log_term=done.snap_term,
                              entries=done.meta.meta))
        except Exception as e:
            self._internal_error(e)
            return
        if core.has_ready():
            self.schedule()
        else:
            self._snap_ready(None)  # ignored (stale), and no Ready will say so

    def _snap_ready(self, rd):
        """The first Ready after the snapshot was stepped in: install it if
        the core restored from it, else drop the file."""
        done, self._install = self._install, None
        taken = rd.snapshot if rd is not None else None
        self.receiver.forget_done()
        if taken is None:
            if done is not None:
                log.info("snapshot at index %d not needed any more; dropped", done.index)
                done.discard()
            return
        if done is None or taken != (done.index, done.snap_term):
            raise AssertionError(f"the core restored a snapshot at {taken}, but the runtime "
                                 f"offered {done and (done.index, done.snap_term)}")
        try:
            self.storage.install_snapshot(done.path, done.index, done.snap_term)
        except (OSError, StorageError) as e:
            # The core moved on already: going on would diverge from disk.
            # _process stops the node on an OSError.
            done.discard()
            raise OSError(f"installing the snapshot at {done.index} failed: {e}") from e
        self.kv = done.store
        if self.on_kv_replaced is not None:
            self.on_kv_replaced(done.store)
        self._snap_base = done.index
        self.snapshots_installed += 1
        log.info("installed the snapshot at index %d (term %d, %d keys) from node %d",
                 done.index, done.snap_term, len(done.store), done.leader)

    def _snap_stop(self):
        for s in self.senders.values():
            s.close()
        self.senders.clear()
        self.receiver.abort()
        for done in (self._received, self._install):
            if done is not None and not done.syncing:
                done.discard()  # (one being synced is left to recovery, which deletes it)
        self._received = self._install = None
        writer, self._snap_writer = self._snap_writer, None
        self._snap_pool.shutdown(wait=True)  # a running sync, flush or compaction ends first
        if writer is not None:
            writer.abort()  # its temporary file goes (harmless once it was synced)

    def _internal_error(self, e):
        log.critical("internal error, stopping this node", exc_info=e)
        self._fatal(f"internal error: {e!r}")

    def _fatal(self, why):
        if not self._stopped:
            log.critical("%s; stopping (a failed write is never retried)", why)
            self._stopped = True
            self.on_fatal(why)

