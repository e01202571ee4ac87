"""The client front door: RESP2/RESP3 over TCP or Unix sockets.

RespServer listens, keeps the connections (connection.ClientProtocol) and
the one Batcher they share, routes commands the fast path passed over to
the command table, words the runtime's outcomes and redirects as RESP
errors, and builds INFO.
"""
import logging
import os
import resource

from raftfast import __version__
from raftfast._resp import ErrorReply
from raftfast.address import Address, create_server, parse_address
from raftfast.runtime.waiters import NotLeaderNow, OutcomeUnknown, TransferFailed
from raftfast.server import commands
from raftfast.server.backup import Backups
from raftfast.server.batcher import Batcher
from raftfast.server.connection import ClientProtocol
from raftfast.server.expiry import ActiveExpiry
from raftfast.server.memory import MemoryGuard

__all__ = ["RespServer", "effective_maxclients"]

log = logging.getLogger("raftfast.client")
# File descriptors a node keeps for itself: log segments, snapshots, the
# lock, listeners, the event loop's own, and per peer a dialed and an
# accepted connection.
FD_RESERVE = 64
FD_PER_PEER = 4


def effective_maxclients(cfg):
    """--maxclients, with the soft file-descriptor limit raised toward the
    hard one for it (as Redis does), else lowered (with a warning) to the
    descriptors left once the node's own are set aside."""
    reserve = FD_RESERVE + FD_PER_PEER * len(cfg.peers)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return cfg.maxclients
    want = cfg.maxclients + reserve
    if soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    room = max(1, soft - reserve)
    if cfg.maxclients > room:
        log.warning("--maxclients %d lowered to %d: the file-descriptor limit is %d",
                    cfg.maxclients, room, soft)
        return room
    return cfg.maxclients

# How a client hears each of the runtime's failures (NotLeaderNow: the
# redirect, which depends on who leads now).
_FAILURE_TEXT = {
    OutcomeUnknown: "TIMEOUT outcome unknown",
    TransferFailed: "TIMEOUT transfer did not complete",
}


class RespServer:
    def __init__(self, loop, cfg, driver, node_info, password=None, tls=None):
        """password: what clients must AUTH with (bytes), or None.  tls: the
        ssl context of a tls:// client port (raftfast.tls), or None."""
        self.loop = loop
        self.cfg = cfg
        # The passwords AUTH accepts (a tuple; one as bytes is that one alone).
        self.password = (password,) if isinstance(password, bytes) else password
        self.tls = tls
        self.driver = driver
        self.node_info = node_info  # callable -> dict of INFO raft fields
        self.connections = set()
        # The window of writes in flight: two batches (one being made durable
        # while the next is gathered), within the replication pipeline's.
        self.batcher = Batcher(loop, self, driver, cfg.max_batch_entries, cfg.max_batch_bytes,
                               cfg.batch_linger_us,
                               min(cfg.max_inflight_bytes, 2 * cfg.max_batch_bytes))
        self.leader_client_url = None  # callable(leader_id) -> advertised URL or None
        # Room for the frame and message headers around one entry.
        self.max_command_bytes = min(cfg.proto_max_bulk_len, cfg.max_frame_bytes - (64 << 10))
        self.maxclients = effective_maxclients(cfg)
        self.rejected_connections = 0
        self.memory = MemoryGuard(self, cfg.effective_maxmemory(),
                                  cfg.effective_maxmemory_clients())
        self.expiry = ActiveExpiry(driver)
        self.backups = Backups(self)
        self._idle_timer = None
        self._server = None
        self._unix_path = None
        self.extra_stats = dict  # node-level additions to INFO stats
        self.client_reads = 0  # data_received calls on client connections
        self.protocol = ClientProtocol  # what serves each connection

    async def start(self, url):
        """Listen for clients; returns the URL actually bound (port 0 resolved)."""
        addr = parse_address(url)
        extra = {"ssl": self.tls} if addr.tls else {}
        self._server = await create_server(self.loop, addr, lambda: self.protocol(self),
                                           unix_mode=self.cfg.unixsocketperm, **extra)
        if self.cfg.timeout > 0 and self._idle_timer is None:
            self._idle_timer = self.loop.call_later(1.0, self.close_idle)
        self.driver.on_tick = self.tick
        if addr.scheme == "unix":
            self._unix_path = (addr.path, os.stat(addr.path).st_ino)
            return str(addr)
        port = self._server.sockets[0].getsockname()[1]
        return str(Address("tcp", host=addr.host, port=port, tls=addr.tls))

    async def close(self):
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.driver.on_tick == self.tick:
            self.driver.on_tick = None
        self.batcher.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self._unix_path is not None:
            # Remove our own socket file (not one another process put there since).
            path, ino = self._unix_path
            try:
                if os.stat(path).st_ino == ino:
                    os.unlink(path)
            except OSError:
                pass
            self._unix_path = None

    def tick(self):
        """On every tick of the node's clock: memory accounting, active expiry."""
        self.memory.check()
        self.expiry.tick()
        self.backups.tick()

    # ------------------------------------------------------------ routing

    def dispatch(self, conn, cmd):
        commands.dispatch(self, conn, cmd)

    def dispatch_unauthenticated(self, conn, cmd):
        commands.dispatch_unauthenticated(self, conn, cmd)

    def config_parameters(self):
        """CONFIG GET's parameters: name -> value as text (secrets never)."""
        cfg = self.cfg
        return {"enable-debug-command": cfg.enable_debug_command,
                "proto-max-bulk-len": str(cfg.proto_max_bulk_len),
                "client-query-buffer-limit": str(cfg.client_query_buffer_limit),
                "client-output-buffer-limit": str(cfg.client_output_buffer_limit),
                "maxmemory": str(self.memory.maxmemory),
                "maxmemory-clients": str(self.memory.maxmemory_clients),
                "snapshot-log-bytes": str(cfg.snapshot_log_bytes),
                "max-uncommitted-bytes": str(cfg.max_uncommitted_bytes),
                "maxclients": str(self.maxclients), "timeout": str(cfg.timeout),
                "unixsocketperm": f"{cfg.unixsocketperm:o}"}

    def close_idle(self):
        """Once a second with --timeout: close connections that read nothing
        and await no reply for that many seconds."""
        self._idle_timer = self.loop.call_later(1.0, self.close_idle)
        for conn in list(self.connections):
            if conn.read_since_sweep or conn.replies:
                conn.read_since_sweep = False
                conn.idle_sweeps = 0
                continue
            conn.idle_sweeps += 1
            if conn.idle_sweeps >= self.cfg.timeout:
                conn.closing = True
                if conn.transport is not None:
                    conn.transport.close()

    def redirect_error(self):
        """The error a non-leader gives for a command that needs the leader."""
        leader = self.driver.core.leader_id
        url = self.leader_client_url(leader) if leader else None
        if not leader or url is None:
            return ErrorReply("CLUSTERDOWN No raft leader")
        addr = parse_address(url)
        if addr.scheme == "unix":
            return ErrorReply(f"NOTLEADER {url}")
        host = f"[{addr.host}]" if ":" in addr.host else addr.host
        return ErrorReply(f"MOVED 0 {host}:{addr.port}")

    def failure_reply(self, failure):
        """The error a client hears for one of the runtime's RequestFailed."""
        if isinstance(failure, NotLeaderNow):
            return self.redirect_error()
        return ErrorReply(_FAILURE_TEXT[type(failure)])

    # ------------------------------------------------------------- INFO

    def stats(self):
        """Counters for benchmarks: how well batching and encode-once work."""
        d = self.driver
        return {
            "rejected_connections": self.rejected_connections,
            "evicted_clients": self.memory.clients_evicted,
            "raftfast_oom_refusals": self.memory.writes_refused,
            "expired_keys": self.expiry.keys_proposed,
            "raftfast_appends_sent": d.appends_sent,
            "raftfast_entries_sent": d.entries_sent,
            "raftfast_append_frames_encoded": d.append_frames_encoded,
            "raftfast_fsyncs": d.group_commit.fsyncs,
            "raftfast_entries_written": d.entries_written,
            "raftfast_entries_applied": d.applied_entries,
            "raftfast_proposals": self.batcher.proposals,
            "raftfast_entries_proposed": self.batcher.entries_proposed,
            "raftfast_reads_served": d.reads.served,
            "raftfast_read_batches": d.read_batches,
            "raftfast_read_rounds": d.core.read_round,
            "raftfast_ready_passes": d.ready_passes,
            "raftfast_fsync_wakeups": d.group_commit.thread_wakeups,
            "raftfast_fsyncs_inline": d.group_commit.inline_syncs,
            "raftfast_peer_reads": d.transport.reads,
            "raftfast_peer_frames_received": d.transport.frames_received,
            "raftfast_client_reads": self.client_reads,
            "raftfast_client_reads_paused": self.batcher.throttles,
            "raftfast_cpu_seconds": f"{_cpu_seconds():.3f}",
            **d.snapshots.stats(),
            **self.backups.stats(),
            **self.extra_stats(),
        }

    def info_text(self, section):
        fields = self.node_info()
        raft = "# Raft\r\n" + "".join(f"{k}:{v}\r\n" for k, v in fields.items())
        if section == "raft":
            return raft
        server = ("# Server\r\n"
                  f"redis_version:7.2.0\r\nraftfast_version:{__version__}\r\n"
                  f"redis_mode:standalone\r\nprocess_id:{os.getpid()}\r\n"
                  f"run_id:{self.cfg.cluster_id}-{self.cfg.node_id}\r\n")
        clients = (f"# Clients\r\nconnected_clients:{len(self.connections)}\r\n"
                   f"maxclients:{self.maxclients}\r\n")
        repl = ("# Replication\r\nrole:"
                + ("master" if self.driver.is_leader else "slave") + "\r\n")
        sm = self.driver.state_machine
        keyspace = (f"# Keyspace\r\ndb0:keys={len(sm)},"
                    f"expires={getattr(sm, 'expires', 0)},avg_ttl=0\r\n")
        stats = "# Stats\r\n" + "".join(f"{k}:{v}\r\n" for k, v in self.stats().items())
        memory = "# Memory\r\n" + "".join(f"{k}:{v}\r\n" for k, v in self.memory.info().items())
        if section in ("", "all", "default", "everything"):
            return "\r\n".join((server, clients, memory, repl, keyspace, stats, raft))
        if section == "memory":
            return memory
        if section == "keyspace":
            return keyspace
        if section == "stats":
            return stats
        if section == "server":
            return server
        if section == "clients":
            return clients
        if section == "replication":
            return repl
        return ""


def _cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime
