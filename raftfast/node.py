"""One raftfast node: `python -m raftfast.node --id 1 --data-dir d --listen URL --client URL --peer 2=URL ...`

Wires storage, the Raft driver, the peer transport and the RESP server
onto one uvloop event loop.  Exit codes (docs/reference.md): 0 after
SIGTERM/SIGINT, 1 when the node refuses to start or stops on an error,
2 for bad usage.

RAFTFAST_WAL_SEGMENT_BYTES in the environment sets the size of a WAL
segment (default 64 MiB).  It is for tests, which need logs of several
segments without writing hundreds of megabytes; it changes nothing about
what the node promises.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import operator
import os
import signal
import sys
import time

import uvloop

from raftfast.logs import configure as configure_logging
from raftfast._logstore import DEFAULT_SEGMENT_BYTES
from raftfast.address import AddressError
from raftfast.config import Config, parse_node_config
from raftfast.runtime.cluster_version import CLUSTER_VERSION
from raftfast.runtime.driver import RaftDriver
from raftfast.runtime.force_new_cluster import describe, force_new_cluster, refuse_missing_state
from raftfast.runtime.kv_state_machine import KVStateMachine
from raftfast.runtime.node_role import role_of
from raftfast.runtime.peer_auth import SecretError, load_secrets
from raftfast.server.auth import PasswordError, load_passwords
from raftfast.tls import TLSSetupError, client_port_context, peer_contexts
from raftfast.runtime.storage import Storage, StorageError
from raftfast.runtime.transport import PeerTransport
from raftfast.server.server import RespServer

log = logging.getLogger("raftfast.node")


def lease_clock() -> float:
    """Seconds on a clock that never goes back and keeps counting while the
    machine is suspended (CLOCK_BOOTTIME where there is one)."""
    return time.clock_gettime(_CLOCK)


_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def tick_ms(cfg: Config) -> int:
    """The core counts time in ticks: fine enough for the heartbeat and for a
    tenth of the election timeout (the randomisation's resolution)."""
    return max(1, min(cfg.heartbeat_interval_ms, cfg.election_timeout_ms // 10))


class Node:
    def __init__(self, cfg: Config, storage: Storage, conf: tuple,
                 secret: object = None, password: tuple | None = None,
                 client_tls: object = None, peer_tls: object = None) -> None:
        self.cfg = cfg
        self.secret = secret  # the cluster secrets peers prove (PeerSecrets), or None
        self.password = password  # the passwords clients AUTH with (any one), or None
        self.client_tls = client_tls  # ssl context of a tls:// client port
        self.peer_tls = peer_tls  # (listening, dialing) ssl contexts between peers
        self.storage = storage
        self.conf = conf  # (voters, learners, urls, cluster version) the core starts from
        self.exit_code = 0
        # The state the newest snapshot held, or empty; the driver applies
        # from storage.snap_index + 1.
        self.state_machine = KVStateMachine(storage.kv)

    async def run(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.transport = PeerTransport(
            loop, cfg.node_id, cfg.cluster_id, self._on_peer_messages, dict(cfg.peers),
            cfg.max_frame_bytes, logging.getLogger("raftfast.transport"),
            client_url=cfg.client_advertised(), secret=self.secret, tls=self.peer_tls,
            # A full pipelining window must fit in the socket's buffer, or
            # the transport would drop appends that flow control allowed.
            write_buffer_limit=max(4 << 20, 2 * cfg.max_inflight_bytes))
        # Ticks catch up after a stall by this clock, and it keeps full
        # resolution (uvloop's loop.time() is in ms).  It counts through a
        # suspend, which a lease must (its followers' clocks ran on).
        self.driver = RaftDriver(loop, lease_clock, cfg, self.storage, self.state_machine,
                                 self.transport, self.conf, self._on_fatal, tick_ms(cfg))
        self.transport.on_messages = self.driver.step_read  # no wrapper on the hot path
        self.transport.on_peer_state = self.driver.on_peer_state
        self.resp = RespServer(loop, cfg, self.driver, self.info_fields, self.password,
                               self.client_tls)
        self.resp.leader_client_url = self.client_url_of
        counter = getattr(self, "call_counter", None)
        if counter is not None:
            self.resp.extra_stats = lambda: {"raftfast_python_calls": counter.calls,
                                             "raftfast_python_calls_top": counter.top()}
        timer = getattr(self, "stage_timer", None)
        if timer is not None:
            timer.install_node(self.driver, self.transport, self.state_machine, self.resp)
            extra = self.resp.extra_stats
            self.resp.extra_stats = lambda: {**extra(), **timer.stats()}
        try:
            listen = await self.transport.start(cfg.listen)
            client = await self.resp.start(cfg.client)
            if cfg.metrics is not None:
                from raftfast.metrics import serve_metrics, server_registry
                self.metrics = await serve_metrics(loop, cfg.metrics,
                                                   server_registry(cfg, self.resp))
        except (OSError, AddressError) as e:
            log.error("cannot start: %s", e)
            await self._shutdown()
            return 1
        # The addresses actually bound (a port 0 resolved).
        print(f"ready id={cfg.node_id} listen={listen} client={client}", flush=True)
        self.driver.start()
        await self._stop.wait()
        await self._shutdown()
        return self.exit_code

    def _on_peer_messages(self, msgs):
        self.driver.step_read(msgs)  # the transport starts before the driver exists

    def _on_fatal(self, why):
        self.exit_code = 1
        self._stop.set()

    async def _shutdown(self):
        if hasattr(self, "driver"):
            self.driver.stop()
        if getattr(self, "metrics", None) is not None:
            await self.metrics.close()
        await self.resp.close()
        await self.transport.close()
        self.storage.close()

    def client_url_of(self, node_id):
        if node_id == self.cfg.node_id:
            return self.cfg.client_advertised()
        return self.transport.peer_client_url(node_id)

    def info_fields(self):
        core = self.driver.core
        lg = core.log
        return {
            "raft_node_id": core.id,
            "raft_role": role_of(core),
            "raft_current_term": core.term,
            "raft_leader_id": core.leader_id,
            "raft_commit_index": lg.committed,
            "raft_last_applied": lg.applied,
            # The log may keep a trailing margin before the newest snapshot.
            "raft_first_log_index": lg.snap_index + 1,
            "raft_last_log_index": lg.last_index,
            "raft_last_log_term": lg.last_term(),
            "raft_snapshot_index": core.snapshot_index,
            "raft_voters": ",".join(map(str, sorted(core.voters))),
            "raft_learners": ",".join(map(str, sorted(core.learners))),
            "raft_cluster_id": self.cfg.cluster_id,
            # The formats every member reads (runtime/cluster_version.py).
            "raft_cluster_version": core.cluster_version,
        }


class CallCounter:
    """RAFTFAST_COUNT_CALLS=1: count Python-level function calls (the `call`
    events of sys.setprofile; calls into compiled code raise none) in every
    thread, for the benchmark of Python calls per replicated entry."""

    def __init__(self):
        self.calls = 0
        self.where = collections.Counter()

    def __call__(self, frame, event, arg):
        if event == "call":
            self.calls += 1
            code = frame.f_code
            self.where[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1

    def top(self, n=12):
        # A copy first, made in C (no call events): the hook adds keys to
        # self.where for the calls that sorting and formatting make.
        items = list(self.where.items())
        items.sort(key=operator.itemgetter(1), reverse=True)
        return ",".join(f"{k}={v}" for k, v in items[:n])

    def install(self):
        import threading
        threading.setprofile(self)
        sys.setprofile(self)


SEGMENT_BYTES_ENV = "RAFTFAST_WAL_SEGMENT_BYTES"
MIN_SEGMENT_BYTES = 4096


def segment_bytes_from_env() -> int:
    """The WAL segment size: RAFTFAST_WAL_SEGMENT_BYTES, or the default.
    ValueError (bad usage) when it is set to something else than a whole
    number of at least MIN_SEGMENT_BYTES."""
    raw = os.environ.get(SEGMENT_BYTES_ENV)
    if raw is None:
        return DEFAULT_SEGMENT_BYTES
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < MIN_SEGMENT_BYTES:
        raise ValueError(f"{SEGMENT_BYTES_ENV}={raw!r}: must be a whole number of bytes, "
                         f"at least {MIN_SEGMENT_BYTES}")
    return n


def bootstrap(storage: Storage, cfg: Config) -> tuple:
    """The configuration the core starts from; on a new data dir, first
    record the initial members durably.  Without --join they are this node
    and its --peer ids (every node of a new cluster gets the same set); with
    --join none at all: the node waits, outside the configuration, to be
    added, and a restart finds it the same.  From then on the members come
    from the data dir (members file, snapshot, log), never from flags, so a
    --join on a data dir that holds state is just a restart.  A new cluster
    starts at this release's cluster version (runtime/cluster_version.py)."""
    if storage.members() is None:
        if cfg.join:
            storage.save_members([], join=True)
        else:
            storage.save_members(sorted({cfg.node_id, *cfg.peers}),
                                 cluster_version=CLUSTER_VERSION)
    return storage.configuration()


def force_open(cfg: Config, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> Storage:
    """--force-new-cluster (runtime/force_new_cluster.py): rewrite the data
    dir's configuration to this node alone, log what may have been lost,
    and open it again as a restart would.  StorageError (or OSError, a
    failed write) when it cannot."""
    refuse_missing_state(cfg.data_dir)
    storage = Storage.open(cfg.data_dir, cfg.node_id, cfg.cluster_id,
                           fsync=cfg.fsync == "always", segment_bytes=segment_bytes)
    try:
        forced = force_new_cluster(storage, cfg.node_id)
    finally:
        storage.close()
    (log.warning if forced.changed else log.info)(describe(forced, cfg.node_id, cfg.cluster_id))
    return Storage.open(cfg.data_dir, cfg.node_id, cfg.cluster_id,
                        fsync=cfg.fsync == "always", segment_bytes=segment_bytes)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in ("backup", "restore"):
        from raftfast.backup import backup_main, restore_main
        return (backup_main if args[0] == "backup" else restore_main)(args[1:])
    # Everything the node creates (data dir, log, snapshots, sockets) is
    # its user's alone: 0700 directories, 0600 files.
    os.umask(0o077)
    cfg = parse_node_config(args)  # bad usage exits 2
    try:
        segment_bytes = segment_bytes_from_env()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level, cfg.log_format, cfg.node_id)
    secret = password = client_tls = peer_tls = None
    try:
        if cfg.cluster_secret_file is not None:
            secret = load_secrets(cfg.cluster_secret_file, warn=log.warning,
                                  optional=cfg.cluster_secret_optional)
        if cfg.requirepass_file is not None:
            password = load_passwords(cfg.requirepass_file, warn=log.warning)
        if cfg.tls_cert_file is not None:
            client_tls = client_port_context(cfg.tls_cert_file, cfg.tls_key_file,
                                             cfg.tls_ca_cert_file, cfg.tls_auth_clients == "yes")
        if cfg.peer_tls:
            peer_tls = peer_contexts(cfg.peer_tls_cert_file, cfg.peer_tls_key_file,
                                     cfg.peer_tls_ca_cert_file)
    except (SecretError, PasswordError, TLSSetupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        if cfg.force_new_cluster:
            storage = force_open(cfg, segment_bytes)
        else:
            storage = Storage.open(cfg.data_dir, cfg.node_id, cfg.cluster_id,
                                   fsync=cfg.fsync == "always", segment_bytes=segment_bytes)
    except (StorageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        conf = bootstrap(storage, cfg)
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        storage.close()
        return 1
    node = Node(cfg, storage, conf, secret, password, client_tls, peer_tls)
    if os.environ.get("RAFTFAST_COUNT_CALLS") == "1":
        node.call_counter = CallCounter()
        node.call_counter.install()
    if os.environ.get("RAFTFAST_STAGE_TIMES") == "1":
        from raftfast.stage_times import StageTimer
        node.stage_timer = StageTimer()
        node.stage_timer.install_storage(storage)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(node.run())


if __name__ == "__main__":
    sys.exit(main())
