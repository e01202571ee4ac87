"""raftfast.Node: one Raft node inside a Python program, on its event loop.

The node is the server's runtime (storage, driver, transport) around the
program's own StateMachine, without the RESP front door.  Calls from the
program gather into batches the way clients' commands do in the server:
every propose() of one loop iteration becomes one entry block and one
proposal, every read() of one iteration one read-index round.  On a
follower the batch goes to the leader (runtime/forwarding.py) and the
result comes from this node's own apply, so propose() and read() work the
same on every node.

Requests that find no leader wait for one, retried on the node's ticks,
until their own timeout; so do proposals the leader refused before
proposing them (nothing happened, a retry is safe).  A proposal whose fate
became unknown is never retried: OutcomeUnknown.
"""
import asyncio
import dataclasses
import logging
import os

from raftfast._entrylog import encode_entries
from raftfast.config import Config
from raftfast.core import (LEADER, ConfChangeBusy, NotLeader as CoreNotLeader,
                           TransferInProgress)
from raftfast.core.messages import ENTRY_NORMAL
from raftfast.errors import NotLeader, OutcomeUnknown, RaftError
from raftfast.library.memory import OOM_ERROR, MemoryLimit
from raftfast.library.state_machine import PythonSeam, Raised
from raftfast.node import bootstrap, force_open, lease_clock, tick_ms
from raftfast.runtime.cluster_time import wall_ms
from raftfast.runtime.driver import RaftDriver
from raftfast.runtime.forwarding import OverMemory
from raftfast.runtime.peer_auth import load_secrets
from raftfast.runtime.storage import Storage, StorageError
from raftfast.runtime.transport import PeerTransport
from raftfast.runtime.waiters import NotLeaderNow, OutcomeUnknown as RuntimeOutcomeUnknown
from raftfast.runtime.waiters import RequestFailed, TransferFailed
from raftfast.tls import peer_contexts

__all__ = ["Node", "node_config"]

log = logging.getLogger("raftfast.library")

_FIELDS = {f.name for f in dataclasses.fields(Config)}
# Keywords the library fills in itself.
_OWN = {"node_id", "data_dir", "listen", "client", "peers", "advertise_client"}


def node_config(id, data_dir, listen, peers, options):
    """A validated Config from Node's arguments: node flags as keywords,
    by their flag names (heartbeat_interval=50) or their Config names
    (heartbeat_interval_ms=50).  ValueError for an unknown or bad one."""
    kw = {}
    for name, value in options.items():
        field = name if name in _FIELDS else name + "_ms"
        if field not in _FIELDS or field in _OWN:
            raise TypeError(f"raftfast.Node: unknown option {name!r}")
        kw[field] = value
    # The library serves no clients: its client address is only checked
    # as an address, never bound.
    cfg = Config(node_id=id, data_dir=os.fspath(data_dir), listen=listen, client=listen,
                 peers=dict(peers or {}), **kw)
    return cfg.validate()


class _Request:
    __slots__ = ("payload", "future", "deadline")

    def __init__(self, payload, future, deadline):
        self.payload = payload    # a command (bytes) or a read function
        self.future = future
        self.deadline = deadline  # on the loop's clock


class Node:
    """A Raft node replicating `state_machine` (a raftfast.StateMachine).

    Keywords: id, data_dir, listen (this node's peer address), peers ({id:
    url} of the others; on a new data dir the initial members are this
    node and these), and any node flag (fsync="always", election_timeout=
    1000, snapshot_entries=..., cluster_id=..., cluster_secret_file=...).
    wall_clock: a function giving milliseconds, the leader's share of
    cluster time (tests skew it)."""

    def __init__(self, state_machine, *, id, data_dir, listen, peers=None, wall_clock=wall_ms,
                 **options):
        self.state_machine = state_machine
        self.cfg = node_config(id, data_dir, listen, peers, options)
        self._wall_clock = wall_clock
        self._loop = None
        self._driver = None
        self._memory = None
        self._storage = None
        self._transport = None
        self._metrics = None      # the --metrics endpoint, when asked for
        self.metrics_url = None   # where it serves (http://HOST:PORT/metrics), once started
        self._proposals = []      # gathered this iteration
        self._reads = []
        self._flush_handle = None
        self._waiting = []        # (kind, requests) batches waiting for a leader
        self._in_flight = {}      # id -> a proposed batch waiting for its results
        self._tick_waiters = []   # futures set on the next tick
        self._stopped = asyncio.Event()
        self.stop_reason = None   # why the node stopped on its own, if it did
        if hasattr(state_machine, "_bind_node"):
            state_machine._bind_node(self)

    # -------------------------------------------------------------- running

    async def start(self):
        """Open the data dir, listen for peers, and take part in the cluster."""
        if self._driver is not None:
            raise RaftError("node already started")
        cfg = self.cfg
        loop = self._loop = asyncio.get_running_loop()
        secret = peer_tls = None
        if cfg.cluster_secret_file is not None:
            secret = load_secrets(cfg.cluster_secret_file, warn=log.warning,
                                  optional=cfg.cluster_secret_optional)
        if cfg.peer_tls:
            peer_tls = peer_contexts(cfg.peer_tls_cert_file, cfg.peer_tls_key_file,
                                     cfg.peer_tls_ca_cert_file)
        try:
            if cfg.force_new_cluster:
                storage = force_open(cfg)  # logs what it changed and what may be lost
            else:
                storage = Storage.open(cfg.data_dir, cfg.node_id, cfg.cluster_id,
                                       fsync=cfg.fsync == "always")
        except (StorageError, OSError) as e:
            raise RaftError(str(e)) from None
        try:
            conf = bootstrap(storage, cfg)
            seam = PythonSeam(self.state_machine, storage.kv)
        except BaseException:
            storage.close()
            raise
        self._storage = storage
        self._transport = PeerTransport(
            loop, cfg.node_id, cfg.cluster_id, self._on_peer_messages, dict(cfg.peers),
            cfg.max_frame_bytes, logging.getLogger("raftfast.transport"), secret=secret,
            tls=peer_tls, write_buffer_limit=max(4 << 20, 2 * cfg.max_inflight_bytes))
        driver = self._driver = RaftDriver(loop, lease_clock, cfg, storage, seam, self._transport,
                                           conf, self._on_fatal, tick_ms(cfg),
                                           wall_clock=self._wall_clock)
        seam.log = driver.core.log
        self._transport.on_messages = driver.step_read
        self._transport.on_peer_state = driver.on_peer_state
        driver.on_tick = self._on_tick
        memory = self._memory = MemoryLimit(driver, self.state_machine, cfg.effective_maxmemory())
        driver.forwarding.admit = lambda: not memory.refusing
        try:
            self.listen_url = await self._transport.start(cfg.listen)
            if cfg.metrics is not None:
                from raftfast.metrics import library_registry, serve_metrics
                self._metrics = await serve_metrics(loop, cfg.metrics,
                                                    library_registry(cfg, driver, memory))
                self.metrics_url = self._metrics.url
        except BaseException:
            await self._close()
            raise
        driver.start()

    async def stop(self):
        """Leave the cluster's work to the others and release the data dir.
        Requests still waiting end with NotLeader or OutcomeUnknown."""
        if self._driver is None:
            return
        self._stopped.set()
        self._driver.stop()
        self._fail_unsent()
        await self._close()

    async def _close(self):
        if self._metrics is not None:
            await self._metrics.close()
            self._metrics = None
        if self._transport is not None:
            await self._transport.close()
        if self._storage is not None:
            self._storage.close()
            self._storage = None

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.stop()

    async def wait_stopped(self):
        """Until the node stops (stop(), or a failure: see stop_reason)."""
        await self._stopped.wait()

    def _on_peer_messages(self, msgs):
        self._driver.step_read(msgs)

    def _on_fatal(self, why):
        # A failed write or an exception in apply(): the node is done.
        self.stop_reason = why
        self._stopped.set()
        self._fail_unsent()
        in_flight, self._in_flight = self._in_flight, {}
        for batch in in_flight.values():
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(RaftError(f"node stopped: {why}"))
        self._loop.create_task(self._close())

    # --------------------------------------------------------------- status

    @property
    def is_leader(self):
        return self._driver is not None and self._driver.core.role == LEADER

    @property
    def leader_id(self):
        """The leader this node knows of, 0 if none."""
        return self._driver.core.leader_id if self._driver is not None else 0

    @property
    def term(self):
        return self._driver.core.term if self._driver is not None else 0

    @property
    def id(self):
        return self.cfg.node_id

    def status(self):
        """Role, term, leader and log indexes, as the server's INFO raft."""
        core = self._driver.core
        lg = core.log
        return {"id": core.id, "role": core.role, "term": core.term, "leader_id": core.leader_id,
                "commit_index": lg.committed, "last_applied": lg.applied,
                "last_log_index": lg.last_index, "snapshot_index": core.snapshot_index,
                "voters": sorted(core.voters), "learners": sorted(core.learners)}

    # ------------------------------------------------------------- requests

    def _check_running(self):
        if self._driver is None:
            raise RaftError("node not started")
        if self._stopped.is_set():
            raise RaftError(f"node stopped{': ' + self.stop_reason if self.stop_reason else ''}")

    def propose(self, command, timeout=5.0):
        """An awaitable of apply()'s result for `command` (bytes) once it is
        committed and applied on this node."""
        self._check_running()
        if not isinstance(command, (bytes, bytearray, memoryview)):
            raise TypeError(f"a command is bytes, not {type(command).__name__}")
        fut = self._loop.create_future()
        self._proposals.append(_Request(bytes(command), fut, self._loop.time() + timeout))
        self._flush_soon()
        return fut

    def read(self, fn, timeout=5.0):
        """An awaitable of fn(state_machine), called once this node's state
        reflects every write committed before the call (linearizable)."""
        self._check_running()
        fut = self._loop.create_future()
        self._reads.append(_Request(fn, fut, self._loop.time() + timeout))
        self._flush_soon()
        return fut

    def _flush_soon(self):
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self):
        self._flush_handle = None
        if self._proposals:
            batch, self._proposals = self._proposals, []
            self._submit_proposals(batch)
        if self._reads:
            batch, self._reads = self._reads, []
            self._submit_reads(batch)

    def _live(self, batch):
        return [r for r in batch if not r.future.done()]

    def _submit_proposals(self, batch):
        batch = self._live(batch)
        if not batch:
            return
        driver = self._driver
        if self._memory.refusing and driver.core.role == LEADER:
            for r in batch:
                r.future.set_exception(RaftError(OOM_ERROR))
            return
        block = encode_entries([(0, ENTRY_NORMAL, r.payload) for r in batch])

        def applied(outcome):
            self._in_flight.pop(id(batch), None)
            self._proposals_done(batch, outcome)

        try:
            if driver.core.role == LEADER:
                driver.propose(block, len(batch), applied)
            else:
                driver.forward(block, len(batch), applied)
        except CoreNotLeader:
            self._waiting.append(("propose", batch))
        except Exception as e:  # a transfer in progress, the uncommitted-bytes limit
            log.debug("proposal refused for now: %r", e)
            self._waiting.append(("propose", batch))
        else:
            self._in_flight[id(batch)] = batch
            driver.process_now()

    def _proposals_done(self, batch, outcome):
        if isinstance(outcome, OverMemory):
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(RaftError(OOM_ERROR))
            return
        if isinstance(outcome, NotLeaderNow):
            self._waiting.append(("propose", batch))  # refused before proposing: retry
            return
        if isinstance(outcome, RequestFailed):
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(OutcomeUnknown(
                        "the proposal's fate is unknown (leadership changed or no quorum "
                        "answered in time)"))
            return
        results = []
        for replies, _, lo, hi in outcome:
            results.extend(replies[lo:hi])
        for r, result in zip(batch, results):
            if not r.future.done():
                if isinstance(result, Raised):
                    r.future.set_exception(result.error)
                else:
                    r.future.set_result(result)

    def _submit_reads(self, batch):
        batch = self._live(batch)
        if not batch:
            return
        driver = self._driver

        def confirmed(outcome):
            self._reads_done(batch, outcome)

        try:
            if driver.core.role == LEADER:
                driver.read(0, confirmed)
            else:
                driver.forward_read(confirmed)
        except CoreNotLeader:
            self._waiting.append(("read", batch))
        else:
            driver.process_now()

    def _reads_done(self, batch, outcome):
        if isinstance(outcome, RequestFailed):
            # A read changes nothing: asking again is always safe.
            self._waiting.append(("read", batch))
            return
        sm = self.state_machine
        for r in batch:
            if r.future.done():
                continue
            try:
                r.future.set_result(r.payload(sm))
            except Exception as e:
                r.future.set_exception(e)

    def _on_tick(self):
        """Retry what waits for a leader; end what waited too long."""
        self._memory.check()
        now = self._loop.time()
        if self._tick_waiters:
            waiters, self._tick_waiters = self._tick_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        for reqs in (self._proposals, self._reads):
            for r in reqs:
                if r.deadline < now and not r.future.done():
                    r.future.set_exception(self._no_leader())
        self._expire_in_flight(now)
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        for kind, batch in waiting:
            for r in batch:
                if r.deadline < now and not r.future.done():
                    r.future.set_exception(self._no_leader())
            if kind == "propose":
                self._submit_proposals(batch)
            else:
                self._submit_reads(batch)

    def _expire_in_flight(self, now):
        """Proposals sent whose caller's timeout passed: their fate is
        unknown to the caller (the driver's own, longer, deadline ends the
        waiter itself)."""
        for batch in self._in_flight.values():
            for r in batch:
                if r.deadline < now and not r.future.done():
                    r.future.set_exception(OutcomeUnknown(
                        "no result within the timeout; the proposal may still take effect"))

    def _no_leader(self):
        leader = self.leader_id
        url = self.cfg.peers.get(leader) if leader != self.cfg.node_id else self.cfg.listen
        return NotLeader(f"no leader took the request in time (known leader: {leader or 'none'})",
                         leader_id=leader, leader_url=url)

    def _fail_unsent(self):
        for reqs in (self._proposals, self._reads):
            for r in reqs:
                if not r.future.done():
                    r.future.set_exception(self._no_leader())
            reqs.clear()
        for _, batch in self._waiting:
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(self._no_leader())
        self._waiting = []

    # ----------------------------------------------------------- membership

    async def _call(self, start, timeout):
        fut = self._loop.create_future()

        def done(outcome):
            if fut.done():
                return
            if isinstance(outcome, TransferFailed):
                fut.set_exception(RaftError("leadership transfer did not complete"))
            elif isinstance(outcome, RuntimeOutcomeUnknown):
                fut.set_exception(OutcomeUnknown("the change's fate is unknown"))
            elif isinstance(outcome, RequestFailed):
                fut.set_exception(RaftError(type(outcome).__name__))
            else:
                fut.set_result(None)

        self._check_running()
        deadline = self._loop.time() + timeout
        while True:
            try:
                start(done)
                break
            except (ConfChangeBusy, TransferInProgress) as e:
                # The one change at a time is still settling (a promotion
                # the leader started itself, say): ours goes next.
                if self._loop.time() >= deadline:
                    raise RaftError(str(e) or type(e).__name__) from None
                await self._next_tick()
            except CoreNotLeader as e:
                raise NotLeader(f"this node is not the leader (leader: {e.leader_id or 'unknown'})",
                                leader_id=e.leader_id,
                                leader_url=self.cfg.peers.get(e.leader_id)) from None
            except ValueError as e:
                raise RaftError(str(e)) from None
            except Exception as e:  # the core's other refusals
                raise RaftError(str(e) or type(e).__name__) from None
        return await asyncio.wait_for(fut, max(0.0, deadline - self._loop.time()))

    def _next_tick(self):
        fut = self._loop.create_future()
        self._tick_waiters.append(fut)
        return fut

    async def add_member(self, node_id, url, timeout=10.0):
        """Add node_id (dialed at url) as a learner; it becomes a voter by
        itself once caught up.  On the leader only (NotLeader elsewhere)."""
        await self._call(lambda cb: self._driver.change_membership("add", node_id, url, cb),
                         timeout)

    async def remove_member(self, node_id, timeout=10.0):
        """Remove node_id from the configuration (the leader may remove itself)."""
        await self._call(lambda cb: self._driver.change_membership("remove", node_id, None, cb),
                         timeout)

    async def transfer_leadership(self, node_id, timeout=10.0):
        """Hand leadership to node_id; returns once it leads."""
        await self._call(lambda cb: self._driver.transfer_leadership(node_id, cb), timeout)

