"""Drives one sans-IO Raft core on the node's event loop.

The loop, per input (a peer message, a tick, a proposal):

    core.step(...)  ->  ready()  ->  send messages
                                 ->  write entries/hard state (page cache)
                                 ->  hold persist_messages until durable
                                 ->  apply committed entries, answer clients
                                 ->  advance()

The driver owns that loop and the ticks, and wires the parts it hands its
callbacks to: GroupCommit (durability: one fsync per batch, off the loop
while the loop has other work; held messages leave once durable), the
waiters (clients waiting for a write, a read or a transfer, answered with
typed outcomes), the SnapshotManager, PeerAddresses, the cluster clock
(cluster_time: the leader stamps T on each batch and on what it sends), the
VersionWatch, Forwarding (a follower's proposals and reads, carried out by
the leader) and the Story (the operator's log).  It reads time only from
the clocks it is given and schedules only on the loop it is given, so it
runs as well on a simulated loop and clock as on uvloop.

A failed write or fsync is fatal: the node stops rather than retry (the
page cache may have dropped the data).
"""
import logging
import random

from raftfast._codec import encode_message
from raftfast.core import LEADER, CoreConfig
from raftfast.core.raft import Raft
from raftfast.core.messages import (MSG_APPEND, MSG_FORWARD, MSG_HEARTBEAT, MSG_HEARTBEAT_RESP,
                                    MSG_PREVOTE_RESP, MSG_SNAPSHOT, MSG_VOTE_RESP)
from raftfast.runtime.cluster_time import ClusterClock, recovered_time, time_entry, wall_ms
from raftfast.runtime.cluster_version import VersionWatch
from raftfast.runtime.forwarding import Forwarding
from raftfast.runtime.group_commit import GroupCommit
from raftfast.runtime.members import PeerAddresses
from raftfast.runtime.snapshots import SnapshotManager
from raftfast.runtime.story import Story
from raftfast.runtime.waiters import (NotLeaderNow, OutcomeUnknown, ReadWaiters, RequestFailed,
                                      TransferFailed, TransferWaiters, WriteWaiters)

log = logging.getLogger("raftfast.driver")


class RaftDriver:
    def __init__(self, loop, clock, cfg, storage, state_machine, transport, conf, on_fatal,
                 tick_ms, seed=None, sync_in_thread=True, wall_clock=wall_ms):
        """loop: call_soon, call_later, call_soon_threadsafe, run_in_executor
        (an asyncio loop, or a simulated one).  clock(): monotonic seconds.
        state_machine: a StateMachine.  conf: (voters, learners, urls, cluster
        version) the core starts from (Storage.configuration()).
        on_fatal(why): the node must stop.  seed: the core's random seed
        (None: a fresh one).  sync_in_thread=False: fsync from the loop
        (GroupCommit; tests).  wall_clock(): ms, the leader's cluster time."""
        self.loop = loop
        self.clock = clock
        self.cfg = cfg
        self.storage = storage
        self.state_machine = state_machine
        self.transport = transport
        self.on_fatal = on_fatal
        self.tick_s = tick_ms / 1000.0
        election_ticks = max(2, cfg.election_timeout_ms // tick_ms)
        heartbeat_ticks = max(1, cfg.heartbeat_interval_ms // tick_ms)
        if heartbeat_ticks >= election_ticks:
            heartbeat_ticks = election_ticks - 1
        if seed is None:
            seed = random.SystemRandom().randrange(1 << 62)
        voters, learners, urls, cluster_version = conf
        core_cfg = CoreConfig(
            cfg.node_id, voters, learners, urls=urls, cluster_version=cluster_version,
            election_ticks=election_ticks, heartbeat_ticks=heartbeat_ticks,
            max_msg_bytes=cfg.max_batch_bytes, max_inflight=cfg.max_inflight,
            max_inflight_bytes=cfg.max_inflight_bytes,
            max_uncommitted_bytes=cfg.max_uncommitted_bytes, read_mode=cfg.read_mode, seed=seed)
        self.core = Raft(core_cfg, storage.entry_log, storage.hard_state, storage.snap_index,
                         storage.snap_term)
        self.election_timeout_s = election_timeout_s = cfg.election_timeout_ms / 1000.0
        # --maxmemory: this node's (used, limit), which its heartbeat answers
        # carry to the leader, and the voters' reports, peer -> (used, limit,
        # when): the server's MemoryGuard fills the first, reads the second.
        self.memory_report = (0, 0)
        self.voter_memory = {}
        # Called on every tick: the layers above ride on it, not timers of their own.
        self.on_tick = None
        self.request_timeout = max(5.0, 4 * election_timeout_s)
        self.transfer_timeout = 2 * election_timeout_s
        self.writes = WriteWaiters()
        self.reads = ReadWaiters()
        self.transfers = TransferWaiters()
        # An fsync slower than a quarter of a heartbeat interval is not run
        # on the loop again until one is fast: a stalling disk must not hold
        # back heartbeats (GroupCommit).
        self.group_commit = GroupCommit(loop, storage.sync, self._release, self._fatal,
                                        self.schedule, durable=cfg.fsync == "always",
                                        sync_in_thread=sync_in_thread,
                                        inline_max_s=cfg.heartbeat_interval_ms / 4000.0,
                                        clock=clock)
        self.peer_addresses = PeerAddresses(transport, cfg.peers)
        self.cluster_clock = ClusterClock(wall_clock, recovered_time(storage.entry_log,
                                                                      state_machine))
        self.versions = VersionWatch(self.core, transport, self.cluster_clock)
        self.story = Story(self.core, cfg)
        self.forwarding = Forwarding(self.core, transport.send, self._propose_unwatched,
                                     self._read_for_peer, self.writes, self.reads,
                                     self._applied_index, self.cluster_clock)
        self.snapshots = SnapshotManager(
            loop, clock, self.core, storage, state_machine, transport, self.schedule,
            self._internal_error, durable=cfg.fsync == "always",
            snapshot_entries=cfg.snapshot_entries, snapshot_trailing=cfg.snapshot_trailing,
            snapshot_log_bytes=cfg.snapshot_log_bytes, election_timeout_s=election_timeout_s)
        self._scheduled = None  # the loop's handle of the pass to come, if any
        self._tick_handle = None
        self._ticks_due_from = clock()  # ticks are counted from here
        self._stopped = False
        self._was_leader = False
        # Counters for INFO stats and the benchmarks.
        self.applied_entries = 0
        self.appends_sent = 0
        self.entries_sent = 0
        self.append_frames_encoded = 0
        self.entries_written = 0
        self.read_batches = 0
        self.ready_passes = 0  # _process calls that ran

    # ------------------------------------------------------------ running

    def start(self):
        self.story.started()
        self.group_commit.start()
        self._ticks_due_from = self.clock()
        self._tick_handle = self.loop.call_later(self.tick_s, self._on_tick)
        self.peer_addresses.refresh(self.core)  # dial the starting configuration
        self.schedule()

    def stop(self):
        self._stopped = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self.writes.fail_all(OutcomeUnknown())
        self.reads.fail_all(NotLeaderNow())
        self.forwarding.fail_all()
        self.transfers.fail_all(TransferFailed())
        self.snapshots.stop()
        self.group_commit.stop()

    def schedule(self):
        """Run the Ready loop once, soon; many inputs in one loop iteration
        share one pass (and so one write and one send per peer)."""
        if self._scheduled is None and not self._stopped:
            self._scheduled = self.loop.call_soon(self._process)

    def process_now(self):
        """Run the pass that is due now rather than in the loop's next
        iteration: for a caller that has gathered every input of this
        iteration already (the batcher's flush at the end of one), so that
        a client's write goes to the log and the followers one iteration,
        and one wake-up of the loop, sooner."""
        if self._scheduled is not None:
            self._process_instead_of_scheduled()

    def _process_instead_of_scheduled(self):
        """The pass, now; the one scheduled, if any, is not needed."""
        if self._scheduled is not None:
            self._scheduled.cancel()
        self._process()

    def _on_tick(self):
        if self._stopped:
            return
        self._tick_handle = self.loop.call_later(self.tick_s, self._on_tick)
        now = self.clock()
        self._catch_up_ticks(now)
        self.snapshots.tick(now)
        self.versions.tick()
        if self.on_tick is not None:
            self.on_tick()
        self.writes.expire(now)
        self.reads.expire(now)
        self.forwarding.expire(now)
        if self.transfers.pending:
            self.transfers.check(self.core, now)
        self.schedule()

    def _catch_up_ticks(self, now):
        """Tick the core once per tick period that has passed on the clock:
        after a stall (a stopped process, a long pause) the core learns at
        once how much time went by, rather than one tick per callback.  A
        lease read relies on this: a leader that was stopped must see its
        lease as expired before it answers."""
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
        self.snapshots.on_peer_state(peer, writable, lost)
        self.schedule()

    def step_read(self, msgs):
        """The messages of one read from a peer, in arrival order (the
        transport's callback).  A follower's input is its leader's, one
        connection: nothing more is coming this iteration, so its write and
        acknowledgement go at once.  A leader waits for the iteration's
        other reads (the other followers' acknowledgements) to handle them
        in one pass."""
        if self._stopped:
            return
        core = self.core
        clock = self.cluster_clock
        try:
            for msg in msgs:
                t = msg.type
                if t == MSG_APPEND or t == MSG_HEARTBEAT or t == MSG_VOTE_RESP \
                        or t == MSG_PREVOTE_RESP:
                    if msg.hint > clock.seen:
                        clock.seen = msg.hint  # the cluster time its sender knows
                elif t == MSG_HEARTBEAT_RESP and msg.hint:
                    self.voter_memory[msg.frm] = (msg.hint, msg.log_term, self.clock())
                if t >= MSG_SNAPSHOT:
                    # Runtime-level: never stepped into the core as is.
                    if t >= MSG_FORWARD:
                        self.forwarding.on_message(msg)
                    else:
                        self.snapshots.on_message(msg)
                else:
                    core.step(msg)
        except Exception as e:
            self._internal_error(e)
            return
        if core.role == LEADER:
            self.schedule()
        else:
            self._process_instead_of_scheduled()

    # ---------------------------------------------------------- requests

    @property
    def is_leader(self):
        return self.core.role == LEADER

    def propose(self, block, count, callback):
        """Propose an entry block (built with term 0) on behalf of clients.
        callback(pieces) once they are applied (WriteWaiters says what the
        pieces are), or callback(OutcomeUnknown) if their fate becomes
        unknown.  Raises NotLeader (and the core's other refusals) when
        this node cannot take proposals; returns the last entry's index."""
        first, last = self._propose_stamped(block)
        if last - first + 1 != count:
            raise AssertionError(f"proposed {count} entries, log took {last - first + 1}")
        self.writes.add(first, last, self.core.term, callback,
                        self.clock() + self.request_timeout)
        self.schedule()
        return last

    def _propose_stamped(self, block):
        """core.propose(block) with an ENTRY_TIME entry at its head when the
        cluster time moved: in the same block, one log record and message
        (a proposal of its own cost 12 % of SET/s); block's (first, last)."""
        t = self.cluster_clock.stamp_due()
        if not t:
            return self.core.propose(block)
        first, last = self.core.propose(time_entry(t) + block)
        return first + 1, last

    def _propose_unwatched(self, block, count):
        """A proposal a follower forwarded: (first, last); the follower
        waits for its own apply, nobody here does."""
        first, last = self._propose_stamped(block)
        if last - first + 1 != count:
            raise AssertionError(f"proposed {count} entries, log took {last - first + 1}")
        self.schedule()
        return first, last

    def _read_for_peer(self, callback):
        return self.read(0, callback)

    def _applied_index(self):
        return self.core.log.applied

    def forward(self, block, count, callback):
        """propose() on a follower: the leader proposes `block`, and
        callback gets the pieces once this node applied the entries (or
        NotLeaderNow: refused, nothing proposed; or OutcomeUnknown).
        Raises core.NotLeader when no leader is known."""
        self.forwarding.forward_propose(block, count, callback,
                                        self.clock() + self.request_timeout)

    def forward_read(self, callback):
        """read() on a follower: callback(T) once this node may serve a
        linearizable read at cluster time T from its state machine, or
        NotLeaderNow / OutcomeUnknown.  Raises core.NotLeader."""
        self.forwarding.forward_read(callback, self.clock() + self.request_timeout)

    def cluster_time(self):
        """The leader's cluster time now (ms): what a proposal or read runs at."""
        return self.cluster_clock.advance()

    def read(self, floor, callback):
        """Linearizable reads (ReadIndex, or a lease read), at the cluster
        time returned (ms): callback(None) once they may be served from the
        state machine as it stands, which will have applied every write
        committed before they arrived and the log through `floor`;
        callback(NotLeaderNow) if leadership is lost first, OutcomeUnknown
        if not confirmed in time.  Raises NotLeader if it cannot serve them."""
        if self.cfg.read_mode == "lease":
            self._catch_up_ticks(self.clock())  # time passed while we were not running counts
        token = self.reads.new_token()
        self.core.read_index(token)
        self.reads.add(token, min(floor, self.core.log.last_index), callback,
                       self.clock() + self.request_timeout)
        self.read_batches += 1
        self.schedule()
        # The read's cluster time: later entries run at or after it, and the
        # heartbeats that confirm it carry it to a majority.
        return self.cluster_clock.advance()

    def transfer_leadership(self, target, callback):
        """RAFT.TRANSFER_LEADER: callback(None) once `target` leads,
        callback(TransferFailed) when the transfer is abandoned or times
        out.  Raises NotLeader or ValueError (not a voter)."""
        core = self.core
        core.transfer_leadership(target)
        if target == core.id:
            callback(None)
            return
        self.transfers.add(target, callback, self.clock() + self.transfer_timeout)
        self.schedule()

    def change_membership(self, op, node_id, url, callback):
        """RAFT.NODE ADD/REMOVE: propose the change ("add": as a learner
        dialed at `url`; "remove"); callback(None) once its entry is applied,
        callback(OutcomeUnknown) if its fate becomes unknown (leadership
        lost, no quorum in time).  Raises what core.propose_conf_change
        raises: NotLeader, TransferInProgress, ConfChangeBusy,
        ConfChangeInvalid."""
        index = self.core.propose_conf_change(op, node_id, url)

        def applied(result):
            # The state machine gives a configuration entry an empty reply:
            # being applied is the whole answer.
            callback(result if isinstance(result, RequestFailed) else None)

        # A client write's waiter: the same answers on apply, on a lost
        # leadership and on timeout.
        self.writes.add(index, index, self.core.term, applied,
                        self.clock() + self.request_timeout)
        self.schedule()
        return index

    # -------------------------------------------------------- ready loop

    def _process(self):
        self._scheduled = None
        if self._stopped:
            return
        self.ready_passes += 1
        core, group, reads = self.core, self.group_commit, self.reads
        snapshots, addresses = self.snapshots, self.peer_addresses
        try:
            while core.has_ready():
                rd = core.ready()
                if rd.snapshot is not None or snapshots.installing is not None:
                    snapshots.on_ready(rd)  # before anything else of this Ready
                if addresses.stale(core):
                    addresses.refresh(core)  # before sending to new members
                if rd.messages:
                    # Nothing in them waits on this node's own write (what
                    # does is in persist_messages): a leader's appends go
                    # before it copies the same entries to its log, so the
                    # followers' writes start that much sooner.
                    self._send(rd.messages)
                if rd.entries or rd.hard_state is not None:
                    for first, block, count in rd.entries:
                        self.storage.append(first, block, count)
                        self.entries_written += count
                    if rd.hard_state is not None:
                        self.storage.save_hard_state(rd.hard_state)
                    group.wrote()
                if rd.persist_messages:
                    group.hold(rd.persist_messages)
                if rd.committed is not None:
                    self._apply(*rd.committed)
                core.advance(rd)
                if rd.read_states:
                    reads.confirmed(rd.read_states, core.log.applied)
                if reads.to_apply:
                    reads.serve_applied(core.log.applied)
        except OSError as e:
            self._fatal(f"storage write failed: {e}")
            return
        except Exception as e:
            # Half a Ready was carried out; going on could apply it twice.
            self._internal_error(e)
            return
        if self._was_leader != (core.role == LEADER):
            if self._was_leader:
                # Deposed: whatever is pending may or may not commit under
                # the next leader.  Say so rather than guess.
                self.writes.fail_all(OutcomeUnknown())
                reads.fail_all(NotLeaderNow())
            self.cluster_clock.new_term()
        self._was_leader = core.role == LEADER
        if core.events:
            self.story.tell()  # rare transitions (elections, ...): nothing on the hot path
        snapshots.after_process()
        if self.transfers.pending:
            self.transfers.check(core, self.clock())
        group.settle()

    def _send(self, msgs):
        transport = self.transport
        frames = {}  # one encoding per distinct AppendEntries (encode once, send to many)
        clock = self.cluster_clock
        # What this node tells its peers of cluster time: a leader its T
        # now, anyone the highest T it has seen (on vote answers).
        t = clock.advance() if self.core.role == LEADER else clock.seen
        for m in msgs:
            mt = m.type
            if mt == MSG_APPEND or mt == MSG_HEARTBEAT or mt == MSG_VOTE_RESP \
                    or mt == MSG_PREVOTE_RESP:
                m.hint = t
            if mt == MSG_APPEND and m.entries is not None:
                self.appends_sent += 1
                self.entries_sent += m.count
                key = (id(m.entries), m.term, m.index, m.log_term, m.commit)
                frame = frames.get(key)
                if frame is None:
                    frame = frames[key] = encode_message(m)
                    self.append_frames_encoded += 1
                ok = transport.send_frame(m.to, frame)
            elif m.type == MSG_SNAPSHOT:
                self.snapshots.send(m)  # streamed by a Sender, never encoded as is
                continue
            else:
                if m.type == MSG_HEARTBEAT_RESP:
                    # The leader learns this node's memory from its answers
                    # (fields a heartbeat answer leaves unused; 0: no report).
                    m.hint, m.log_term = self.memory_report
                if m.type == MSG_APPEND:
                    self.appends_sent += 1
                ok = transport.send(m)
            if not ok:
                self.core.report_unreachable(m.to)

    def _release(self, msgs):
        """GroupCommit's callback: send (or step into our own core) the
        messages whose writes are now durable."""
        core = self.core
        me = core.id
        out = []
        try:
            for m in msgs:
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
        writes = self.writes
        if not writes.queue:
            self.state_machine.apply(block)  # a follower, or nobody waiting: no replies
            self.applied_entries += count
            return
        replies, offsets = self.state_machine.apply_replies(block)
        self.applied_entries += count
        # The bound method as a Python object (Cython calls log.term as C elsewhere).
        writes.applied(first, count, replies, offsets, getattr(self.core.log, "term"))

    # -------------------------------------------------------------- stopping

    def _internal_error(self, e):
        log.critical("internal error, stopping this node", exc_info=e)
        self._fatal(f"internal error: {e!r}")

    def _fatal(self, why):
        if not self._stopped:
            log.critical("%s; stopping (a failed write is never retried)", why)
            self._stopped = True
            self.group_commit.halt()
            self.snapshots.halt()
            self.on_fatal(why)

