"""raftfast.Client: a redis-py client for a raftfast cluster that finds and
follows the leader, and whose writes are applied at most once however
often they are retried.

    client = raftfast.Client(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"])
    client.set("k", "v", nx=True, ex=30)
    client.incr("hits")
    for key in client.scan_iter(match="user:*"): ...

Every redis-py command method is there (the client is a redis-py
CoreCommands); what the cluster does not know answers
`-ERR unknown command` as from any node.  Each command goes to the node
believed to lead and is retried, with jittered exponential backoff, until
`timeout` seconds after the call began; the decisions (which answer means
what, when to wait, which error to raise) are raftfast.client_calls'.

Writes (SET, DEL, INCR, ... the commands RAFT.EXEC runs) go through a
session: `RAFT.SESSION OPEN` once, then `RAFT.EXEC session seq SET k v`,
and a retry after a lost reply sends the same seq, which the cluster
applies at most once and answers with the first reply.  The cluster keeps
only the last reply of a session, so a session carries one write at a
time: the client keeps a small pool of sessions, one per write in flight
(`max_sessions`, opened as needed, reused, and expired by the cluster
after 10 minutes unused).  A client used by one thread at a time has one
session.  With `sessions=False` writes are sent as they are, and one whose
fate becomes unknown raises raftfast.OutcomeUnknown.

Thread-safe: redis-py's connection pools are, the leader's address is one
attribute, and a session is held by one write at a time under the pool's
lock.  Not offered: pipelines, transactions, pub/sub (they would bypass
leader following and sessions).
"""
from __future__ import annotations

import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.client import EMPTY_RESPONSE
from redis.commands import CoreCommands
from redis.exceptions import AuthenticationError, ResponseError
from redis.retry import Retry

from raftfast.client_async import AsyncClient
from raftfast.client_calls import (LOST, OPEN, WRITE, Call, Session, command_name, kind_of,
                                   node_kwargs, set_up_client)
from raftfast.errors import RaftError

__all__ = ["Client", "AsyncClient"]


class SessionPool:
    """Sessions not in use, and at most `limit` in use at once."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"max_sessions must be at least 1 (got {limit})")
        self.limit = limit
        self._idle: list[Session] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(limit)

    def enter(self, timeout: float) -> bool:
        return self._slots.acquire(timeout=max(0.0, timeout))

    def leave(self, session: Session | None) -> None:
        if session is not None and not session.dead:
            with self._lock:
                self._idle.append(session)
        self._slots.release()

    def idle(self) -> Session | None:
        with self._lock:
            return self._idle.pop() if self._idle else None


class Client(CoreCommands):
    """A leader-following redis-py client for a raftfast cluster.

    addrs: the nodes' client addresses ("host:port", tcp://, tls:// or
    unix:// URLs); more than one lets the client find the cluster when a
    node is down.  sessions: writes through RAFT.EXEC (see the module's
    docstring).  timeout: the longest a call keeps retrying, in seconds
    (one attempt may add up to redis-py's socket_timeout).
    max_sessions: writes in flight at once; more wait.  backoff_base,
    backoff_cap: the first and the longest wait between attempts.
    redis_kwargs: anything redis.Redis takes (password, ssl,
    socket_timeout, decode_responses, protocol, ...), but where to connect
    and how to retry, which are the client's.
    """

    def __init__(self, addrs, *, sessions: bool = True, timeout: float = 10.0,
                 max_sessions: int = 16, backoff_base: float = 0.02,
                 backoff_cap: float = 0.5, **redis_kwargs):
        set_up_client(self, addrs, sessions, timeout, backoff_base, backoff_cap, redis_kwargs)
        self._pool = SessionPool(max_sessions)
        self._nodes_lock = threading.Lock()

    # ---- what redis-py's command methods use --------------------------------

    def execute_command(self, *args, **options):
        """Run one command: found the leader, retried as its kind allows
        (raftfast.client_calls), its reply parsed as redis-py parses it."""
        kind = kind_of(command_name(args))
        call = Call(args, kind, self._router, time.monotonic() + self.timeout, self.timeout,
                    self._backoff, self._tls)
        if kind is not WRITE or not self._sessions_on:
            return self._attempts(call, options)
        if not self._pool.enter(call.deadline - time.monotonic()):
            raise RaftError(f"{call.name}: all {self._pool.limit} sessions stayed busy for "
                            f"{self.timeout:g} s (max_sessions)")
        try:
            return self._attempts(call, options)
        finally:
            self._pool.leave(call.session)

    def get_encoder(self):
        return self._node(self._router.seeds[0]).get_encoder()

    def get_connection_kwargs(self):
        return self._node(self._router.seeds[0]).get_connection_kwargs()

    # ---- the attempts ---------------------------------------------------------

    def _attempts(self, call: Call, options: dict):
        empty = options.pop(EMPTY_RESPONSE, _NOTHING)
        while True:
            if call.kind is WRITE and self._sessions_on and call.session is None:
                call.take_session(self._pool.idle() or self._open_session(call.deadline))
            addr = self._router.leader
            node = self._node(addr)
            try:
                conn = node.connection_pool.get_connection()
            except LOST as e:
                delay = call.connect_failed(addr, e, time.monotonic())
            else:
                try:
                    conn.send_command(*call.wire_args())
                    return node.parse_response(conn, call.name, **options)
                except (ResponseError, AuthenticationError) as e:
                    delay = call.refused(addr, e, time.monotonic())
                    if delay is None:
                        if empty is not _NOTHING:
                            return empty
                        raise
                except LOST as e:
                    conn.disconnect()
                    delay = call.lost(addr, e, time.monotonic())
                except BaseException:
                    conn.disconnect()   # interrupted mid-reply: the stream is unusable
                    raise
                finally:
                    node.connection_pool.release(conn)
            if delay:
                time.sleep(delay)

    def _open_session(self, deadline: float) -> Session:
        """RAFT.SESSION OPEN, retried like a read: a retry after a lost
        reply opens a second session, and the first expires unused."""
        call = Call(("RAFT.SESSION", "OPEN"), OPEN, self._router, deadline, self.timeout,
                    self._backoff, self._tls)
        return Session(int(self._attempts(call, {})))

    def _node(self, addr) -> redis.Redis:
        node = self._nodes.get(addr)
        if node is None:
            with self._nodes_lock:
                node = self._nodes.get(addr)
                if node is None:
                    node = redis.Redis(**node_kwargs(addr, self._redis_kwargs,
                                                     Retry(NoBackoff(), 0)))
                    self._nodes[addr] = node
        return node

    # ---- the rest ---------------------------------------------------------------

    @property
    def leader(self) -> str:
        """The address commands go to now (the leader, as far as this client knows)."""
        return str(self._router.leader)

    def close(self) -> None:
        """Close every connection.  The sessions stay on the cluster until
        they expire; a client used again opens new connections."""
        with self._nodes_lock:
            nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            node.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<raftfast.Client {[str(a) for a in self._router.seeds]} leader={self.leader}>"


_NOTHING = object()

