"""Snapshots on one node: taking them, compacting the log behind them,
sending them to followers that fell behind, and installing the leader's.

    taking      every --snapshot-entries applied entries, the state
                machine's writer is stepped from the loop, synced in a
                thread, then the log compacted behind it (storage in a
                thread, then the core);
    sending     the core's MSG_SNAPSHOT starts a snapshot_transfer.Sender
                to that follower;
    installing  a Receiver collects the leader's chunks; the complete file
                is fsynced in a thread, loaded in steps from the loop,
                stepped into the core as MSG_SNAPSHOT, and if the next Ready
                says rd.snapshot, made the node's snapshot and state.

A failure to take or compact is logged and retried later; only a failed
install (the core already moved on) stops the node.  No step blocks the
loop for more than a few milliseconds: a million keys snapshot while the
node keeps serving.

Why it is long: taking, sending and installing share one state (a snapshot
being written, a received one being loaded or installed, a compaction in a
worker thread each hold the others back), and they read best side by side;
the file format, the chunk stream and the log sizes live beside it.
"""
import concurrent.futures
import logging

from raftfast.core import LEADER
from raftfast.logs import event
from raftfast.core.messages import MSG_SNAPSHOT, MSG_SNAPSHOT_ACK, MSG_SNAPSHOT_CHUNK, Message
from raftfast.runtime.log_bytes import applied_bytes, log_too_large, trim_trailing
from raftfast.runtime.snapshot import SnapshotError
from raftfast.runtime.snapshot_transfer import Receiver, Sender
from raftfast.runtime.storage import StorageError

__all__ = ["SnapshotManager"]

log = logging.getLogger("raftfast.driver")


class SnapshotManager:
    """The driver's snapshot side, handed what it works with:

    core           the node's Raft core (read, and told what happened:
                   snapshot_taken, compact, report_snapshot, step)
    storage        snapshot_path, incoming_snapshot_path, compact,
                   install_snapshot
    state_machine  snapshot_writer, snapshot_loader, restore (StateMachine)
    transport      send, can_send, peer_version
    clock()        the time in seconds (monotonic)
    schedule()     run the Ready loop soon
    fail(exc)      an internal error: the node must stop
    durable        --fsync always: a received snapshot is fsynced
    snapshot_entries, snapshot_trailing, snapshot_log_bytes,
    election_timeout_s: the knobs

    on_taken(error, index, path), when set (RAFT.BACKUP: server/backup.py),
    hears of every snapshot this node takes: durable at `path`, or failed.
    """

    STEP_KEYS = 2048          # keys per write/merge step: ~0.25 ms each
    FLUSH_BYTES = 256 << 10   # fdatasync the file being written this often (in a thread)
    RETRY_S = 5.0             # after a failed snapshot or compaction
    COMPACT_NOW_BYTES = 1 << 20  # what compact_now must be able to free

    def __init__(self, loop, clock, core, storage, state_machine, transport, schedule, fail,
                 durable, snapshot_entries, snapshot_trailing, election_timeout_s,
                 snapshot_log_bytes=0):
        self.loop = loop
        self.clock = clock
        self.core = core
        self.storage = storage
        self.state_machine = state_machine
        self.transport = transport
        self._schedule = schedule
        self._fail = fail
        self.durable = durable
        self.snapshot_entries = snapshot_entries
        self.snapshot_trailing = snapshot_trailing
        self.snapshot_log_bytes = snapshot_log_bytes
        self.resend_after = max(1.0, election_timeout_s)
        self.give_up_after = max(10.0, 10 * election_timeout_s)
        self.stopped = False
        self.senders = {}               # peer -> Sender
        self.receiver = Receiver(core.id, storage.incoming_snapshot_path,
                                 stall_after=2 * self.give_up_after)
        self._received = None           # ReceivedSnapshot being synced or loaded
        self.installing = None          # ... stepped into the core, awaiting its Ready
        self._offer_waiting = False
        self._writer = None
        self._started = 0.0             # when the writer began
        self._jobs = 0                  # worker-thread jobs running (sync, compaction)
        # Their one thread (they run one after the other anyway); stop()
        # waits for it, so no job touches storage after the node closed it.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "snapshot")
        self._retry_at = 0.0
        self._pressed = False           # compact_now asked: the next compaction keeps nothing behind
        self._base = core.snapshot_index  # applied index of the newest snapshot
        self._v1_warned = set()
        self.taken = 0
        self.failures = 0
        self.compactions = 0
        self.sent = 0
        self.sends_failed = 0
        self.bytes_sent = 0
        self.installed = 0
        self.chunks_dropped = 0  # from a sender that is not this node's leader
        self.on_taken = None

    def stats(self):
        """Counters for INFO stats."""
        return {
            "raftfast_snapshots_taken": self.taken,
            "raftfast_snapshot_failures": self.failures,
            "raftfast_compactions": self.compactions,
            "raftfast_snapshots_sent": self.sent,
            "raftfast_snapshot_sends_failed": self.sends_failed,
            "raftfast_snapshot_bytes_sent": self.bytes_sent,
            "raftfast_snapshot_bytes_received": self.receiver.bytes_received,
            "raftfast_snapshots_installed": self.installed,
            "raftfast_snapshot_chunks_dropped": self.chunks_dropped,
        }

    # ---- the driver's hooks

    def after_process(self):
        """After a Ready loop pass: drop transfers of a past leadership,
        and take a snapshot when enough was applied since the last."""
        core = self.core
        if self.senders:
            for peer, s in list(self.senders.items()):
                if core.role != LEADER or s.term != core.term:
                    s.close()  # the leader of the day decides what a follower needs
                    del self.senders[peer]
        if self.snapshot_entries and core.log.applied - self._base >= self.snapshot_entries:
            self._maybe_take()
        elif self.snapshot_log_bytes and log_too_large(core.log, self.snapshot_log_bytes):
            self._maybe_take()

    def take_now(self):
        """Start a snapshot of everything applied, whatever the thresholds
        (a backup asked for one).  True when one is being written, this one
        or one already under way; False when none can start yet (an install
        or compaction is running, or the last attempt failed moments ago):
        ask again later."""
        if self._writer is None:
            self._maybe_take()
        return self._writer is not None

    def compact_now(self):
        """The node is over its memory limit: snapshot now, if the log holds
        at least COMPACT_NOW_BYTES of applied entries a snapshot would let go."""
        if applied_bytes(self.core.log) >= self.COMPACT_NOW_BYTES:
            self._pressed = True  # this time keep no trailing entries
            self._maybe_take()

    def tick(self, now):
        if self.senders:
            for s in list(self.senders.values()):
                s.tick(now)
                self._sender_check(s)
        if self.receiver.cur is not None:
            self.receiver.tick(now)

    def on_peer_state(self, peer, writable, lost):
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

    def on_message(self, m):
        """A snapshot message from a peer: runtime-level, never stepped
        into the core as is."""
        if m.type == MSG_SNAPSHOT_ACK:
            s = self.senders.get(m.frm)
            if s is not None:
                s.on_ack(m, self.clock())
                self._sender_check(s)
        elif m.type == MSG_SNAPSHOT_CHUNK:
            core = self.core
            if m.term == core.term and core.leader_id not in (0, m.frm):
                # A term has one leader, so this cannot come from a member
                # that keeps its promises; drop it unanswered.  A chunk of
                # this term while no leader is known yet, or of a newer term,
                # comes from the leader of that term: a restarted node behind
                # a compacted log hears a chunk before any append, and
                # dropping it cost a resend a second later.  Receiving only
                # writes a temporary file; the core learns the leader and
                # the term when it installs the snapshot.
                self.chunks_dropped += 1
                log.debug("dropped a snapshot chunk from node %d (term %d): this node "
                          "follows node %d in term %d", m.frm, m.term, core.leader_id,
                          core.term)
                return
            ack, done = self.receiver.on_chunk(m, core.term, core.log.committed, self.clock())
            if ack is not None:
                self.transport.send(ack)
            if done is not None:
                self._received_file(done)
            elif (m.term == core.term and m.index <= core.log.committed
                  and self.receiver.cur is None and self._received is None
                  and self.installing is None):
                self._ack_held(m)
        else:
            # MSG_SNAPSHOT is the runtime's word to its own core, never a
            # peer's: stepping one would restore a snapshot nobody sent.
            log.debug("dropped a %r from the wire", m)

    def _ack_held(self, m):
        """The leader streams a snapshot this node holds already (its
        install acknowledgement crossed a second request for the same
        snapshot).  The receiver answers "the whole file is here", which
        only ends the leader's transfer; the leader's core leaves its
        SNAPSHOT state on an append acknowledgement alone, and without one
        it waits out its ten-election-timeout stall rule before sending the
        entries after the snapshot.  So the core acknowledges what it holds
        now (its snapshot handler answers a covered index with its commit)."""
        core = self.core
        core.step(Message(MSG_SNAPSHOT, frm=m.frm, to=core.id, term=m.term,
                          index=m.index, log_term=m.log_term))
        if core.has_ready():
            self._schedule()

    def halt(self):
        """Stop reacting (the node is stopping on an error)."""
        self.stopped = True

    def stop(self):
        self.stopped = True
        for s in self.senders.values():
            s.close()
        self.senders.clear()
        self.receiver.abort()
        for done in (self._received, self.installing):
            if done is not None and not done.syncing:
                done.discard()  # (one being synced is left to recovery, which deletes it)
        self._received = self.installing = None
        writer, self._writer = self._writer, None
        self._pool.shutdown(wait=True)  # a running sync, flush or compaction ends first
        if writer is not None:
            writer.abort()  # its temporary file goes (harmless once it was synced)

    def _in_thread(self, fn, then, *args):
        """Run fn() in a worker thread, then then(error, result, *args) on
        the loop.  Nothing else touches what fn uses meanwhile."""
        self._jobs += 1

        def done(fut):
            self._jobs -= 1
            if self.stopped:
                return
            error = fut.exception()
            try:
                then(error, None if error is not None else fut.result(), *args)
            except Exception as e:
                self._fail(e)
                return
            if self._jobs == 0 and self._offer_waiting:
                self._offer_waiting = False
                self._offer()

        self.loop.run_in_executor(self._pool, fn).add_done_callback(done)

    # ---- taking snapshots and compacting

    def _maybe_take(self):
        if (self._writer is not None or self._jobs or self._received is not None
                or self.installing is not None or self.clock() < self._retry_at):
            return
        core = self.core
        index = core.log.applied
        if index <= core.snapshot_index:
            return
        try:
            writer = self.state_machine.snapshot_writer(self.storage.snapshot_path(index), index,
                                                        core.log.term(index),
                                                        core.config_at(index))
        except (SnapshotError, OSError, ValueError) as e:
            self._failed(e)
            return
        if writer is None:
            return  # the state machine is not ready for another yet
        self._writer = writer
        self._started = self.clock()
        self.loop.call_soon(self._write_step, writer)

    def _write_step(self, writer):
        if self._writer is not writer or self.stopped:
            return
        try:
            if not writer.write_step(self.STEP_KEYS):
                if writer.unflushed >= self.FLUSH_BYTES:
                    # Pace the file to the disk FLUSH_BYTES at a time,
                    # so the log's fsyncs never queue behind all of it.
                    self._in_thread(writer.flush_to_disk, self._flushed, writer)
                else:
                    self.loop.call_soon(self._write_step, writer)  # yield to the loop
                return
        except SnapshotError as e:
            self._writer = None
            self._failed(e)
            return
        # Every key is in the file; fsync off the loop while the state
        # machine settles on it (sync touches only the file).
        self._in_thread(writer.sync, self._synced, writer)
        self.loop.call_soon(self._merge_step, writer, self.installed)

    def _flushed(self, error, _, writer):
        if self._writer is not writer:
            return
        if error is not None:
            self._writer = None
            writer.abort()
            self._failed(error)
            return
        self._write_step(writer)

    def _merge_step(self, writer, installed):
        # An install since replaced the state this writer froze: nothing
        # of it is left to settle.
        if (not self.stopped and installed == self.installed
                and not writer.merge_step(self.STEP_KEYS)):
            self.loop.call_soon(self._merge_step, writer, installed)

    def _synced(self, error, _, writer):
        self._writer = None
        if error is not None:
            writer.abort()
            self._failed(error)
            return
        core = self.core
        self.taken += 1
        self._base = max(self._base, writer.index)
        if writer.index > core.snapshot_index:
            core.snapshot_taken(writer.index, writer.term)
        ms = round(1000 * (self.clock() - self._started))
        log.info("snapshot at index %d (term %d, %d keys, %d bytes) taken in %d ms",
                 writer.index, writer.term, writer.count, writer.bytes, ms,
                 extra=event("snapshot_taken", node=core.id, index=writer.index,
                             term=writer.term, keys=writer.count, bytes=writer.bytes, ms=ms))
        if self.on_taken is not None:
            self.on_taken(None, writer.index, self.storage.snapshot_path(writer.index))
        self._compact()

    def _compact(self):
        core = self.core
        upto = core.compactable(0 if self._pressed else self.snapshot_trailing)
        self._pressed = False
        if self.snapshot_log_bytes:
            upto = trim_trailing(core.log.entries, upto, core.compactable(0),
                                 self.snapshot_log_bytes // 2)
        if upto <= core.log.snap_index:
            return
        snap = core.snapshot_index
        self._in_thread(lambda: self.storage.compact(snap, trailing=snap - upto),
                        self._compacted, upto)

    def _compacted(self, error, result, upto):
        if error is not None:
            self._failed(error, "compaction")
            return
        self.core.compact(upto)
        self.compactions += 1
        segments, snapshots = result
        log.info("log compacted through index %d (%d segment(s), %d old snapshot(s) "
                 "deleted)", upto, len(segments), len(snapshots),
                 extra=event("log_compacted", node=self.core.id, index=upto,
                             segments_deleted=len(segments), snapshots_deleted=len(snapshots)))

    def _failed(self, error, what="snapshot"):
        self.failures += 1
        self._retry_at = self.clock() + self.RETRY_S
        log.warning("%s failed: %s; retrying in %g s", what, error, self.RETRY_S)
        if what == "snapshot" and self.on_taken is not None:
            self.on_taken(error, 0, None)

    # ---- sending a snapshot to a follower

    def send(self, m):
        """The core wants follower m.to to get the snapshot at m.index."""
        peer = m.to
        s = self.senders.get(peer)
        if s is not None:
            if s.term == m.term and s.index == m.index:
                return  # already on its way
            s.close()
            del self.senders[peer]
        transport = self.transport
        if transport.peer_version(peer) == 1 and peer not in self._v1_warned:
            self._v1_warned.add(peer)
            log.warning("node %d speaks protocol v1 only and cannot receive a snapshot; "
                        "it stays behind until it is upgraded", peer)

        def send(chunk):
            ok = transport.send(chunk)
            if ok:
                self.bytes_sent += len(chunk.entries or b"")
            return ok

        try:
            s = Sender(self.core.id, peer, m.term, m.index, m.log_term,
                       self.storage.snapshot_path(m.index), send,
                       lambda: transport.can_send(peer), self.clock(),
                       resend_after=self.resend_after, give_up_after=self.give_up_after)
        except (SnapshotError, OSError) as e:
            log.error("cannot send node %d the snapshot at %d: %s", peer, m.index, e)
            # Reported later, not now: the core would ask again at once.
            self.loop.call_later(self.resend_after, self._report, peer, m.term, False)
            return
        log.info("sending node %d the snapshot at index %d (%d bytes)", peer, m.index, s.size,
                 extra=event("snapshot_send_started", node=self.core.id, peer=peer,
                             index=m.index, term=m.log_term, bytes=s.size))
        self.senders[peer] = s
        s.pump()

    def _report(self, peer, term, ok):
        if not self.stopped and self.core.term == term:
            self.core.report_snapshot(peer, ok)
            self._schedule()

    def _sender_check(self, s):
        if s.result is None:
            return
        if self.senders.get(s.peer) is s:
            del self.senders[s.peer]
        if s.result:
            self.sent += 1
            log.info("node %d has the snapshot at index %d (%d bytes sent)", s.peer, s.index,
                     s.bytes_sent, extra=event("snapshot_sent", node=self.core.id, peer=s.peer,
                                               index=s.index, bytes=s.size,
                                               bytes_sent=s.bytes_sent))
        else:
            self.sends_failed += 1
            log.warning("sending node %d the snapshot at %d failed: %s", s.peer, s.index, s.why,
                        extra=event("snapshot_send_failed", node=self.core.id, peer=s.peer,
                                    index=s.index, reason=s.why))
        self._report(s.peer, s.term, s.result)

    # ---- receiving and installing the leader's snapshot

    def _received_file(self, done):
        old = self._received
        if old is not None and not old.syncing:
            old.discard()  # superseded by a newer one (if syncing: once its thread is done)
        self._received = done
        log.info("snapshot at index %d (%d bytes) received from node %d; loading it",
                 done.index, done.size, done.leader,
                 extra=event("snapshot_received", node=self.core.id, index=done.index,
                             term=done.snap_term, bytes=done.size, leader=done.leader))
        if self.durable:
            done.syncing = True
            self._in_thread(done.sync, self._file_synced, done)
        else:
            done.sync(fsync=False)  # --fsync never: closing it is all
            self._file_synced(None, None, done)

    def _file_synced(self, error, _, done):
        done.syncing = False
        if self._received is not done:
            done.discard()
            return
        if error is not None:
            log.error("snapshot from node %d: fsync of %s failed: %s", done.leader, done.path,
                      error)
            self._drop_received()
            return
        self.loop.call_soon(self._load_step, done)

    def _load_step(self, done):
        if self._received is not done or self.stopped:
            return
        try:
            if not done.load_step(1, self.state_machine.snapshot_loader):
                self.loop.call_soon(self._load_step, done)  # yield to the loop
                return
        except SnapshotError as e:
            log.error("snapshot from node %d is unusable: %s", done.leader, e)
            self._drop_received()
            return
        self._offer()

    def _drop_received(self):
        done, self._received = self._received, None
        if done is not None:
            done.discard()
        self.receiver.forget_done()

    def _offer(self):
        """Step the loaded snapshot into the core; the next Ready says
        whether it took it (rd.snapshot)."""
        done = self._received
        if done is None or self.stopped:
            return
        if self._jobs:
            # A snapshot sync or compaction of our own is touching storage;
            # install after it.
            self._offer_waiting = True
            return
        if self._writer is not None:
            self._writer.abort()  # of a state about to be replaced
            self._writer = None
        self._received = None
        self.installing = done
        core = self.core
        try:
            core.step(Message(MSG_SNAPSHOT, frm=done.leader, to=core.id, term=done.term,
                              index=done.index, log_term=done.snap_term,
                              entries=done.meta.meta))
        except Exception as e:
            self._fail(e)
            return
        if core.has_ready():
            self._schedule()
        else:
            self.on_ready(None)  # ignored (stale), and no Ready will say so

    def on_ready(self, rd):
        """The first Ready after the snapshot was stepped in (the driver
        calls this before carrying out anything else of it): install the
        snapshot if the core restored from it, else drop the file.  Raises
        OSError when the install fails: the core moved on already, and
        going on would diverge from the disk."""
        done, self.installing = self.installing, None
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
            done.discard()
            raise OSError(f"installing the snapshot at {done.index} failed: {e}") from e
        self.state_machine.restore(done.store)
        self._base = done.index
        self.installed += 1
        log.info("installed the snapshot at index %d (term %d, %d keys, %d bytes) from node %d",
                 done.index, done.snap_term, done.meta.count, done.size, done.leader,
                 extra=event("snapshot_installed", node=self.core.id, index=done.index,
                             term=done.snap_term, keys=done.meta.count, bytes=done.size,
                             leader=done.leader))
