"""raftfast.AsyncClient: raftfast.Client on redis.asyncio, for one event loop.

    client = raftfast.AsyncClient(["127.0.0.1:7001", "127.0.0.1:7002"])
    await client.incr("hits")
    async for key in client.scan_iter(match="job:*"): ...
    await client.aclose()          # or: async with raftfast.AsyncClient(...) as client:

The same rules as raftfast.Client (raftfast/client.py: leader following,
sessions, one write in flight per session, up to `max_sessions` writes in
flight), the same decisions (raftfast.client_calls); only the waiting is
the event loop's.  A call cancelled while it waits for a reply closes its
connection (the reply would otherwise answer the next command on it); a
cancelled write is like a lost reply: it may have been applied, and its
session's next write takes the next sequence number.
"""
from __future__ import annotations

import asyncio

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import EMPTY_RESPONSE
from redis.commands import AsyncCoreCommands
from redis.exceptions import AuthenticationError, ResponseError

from raftfast.client_calls import (LOST, OPEN, WRITE, Call, Session, command_name, kind_of,
                                   node_kwargs, set_up_client)
from raftfast.errors import RaftError

__all__ = ["AsyncClient"]


class AsyncSessionPool:
    """Sessions not in use, and at most `limit` in use at once."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"max_sessions must be at least 1 (got {limit})")
        self.limit = limit
        self._idle: list[Session] = []
        self._slots = asyncio.Semaphore(limit)

    async def enter(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._slots.acquire(), max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        return True

    def leave(self, session: Session | None) -> None:
        if session is not None and not session.dead:
            self._idle.append(session)
        self._slots.release()

    def idle(self) -> Session | None:
        return self._idle.pop() if self._idle else None


class AsyncClient(AsyncCoreCommands):
    """A leader-following redis.asyncio client for a raftfast cluster; the
    arguments are raftfast.Client's."""

    def __init__(self, addrs, *, sessions: bool = True, timeout: float = 10.0,
                 max_sessions: int = 16, backoff_base: float = 0.02,
                 backoff_cap: float = 0.5, **redis_kwargs):
        set_up_client(self, addrs, sessions, timeout, backoff_base, backoff_cap, redis_kwargs)
        self._pool = AsyncSessionPool(max_sessions)

    async def execute_command(self, *args, **options):
        """Run one command: found the leader, retried as its kind allows
        (raftfast.client_calls), its reply parsed as redis-py parses it."""
        loop = asyncio.get_running_loop()
        kind = kind_of(command_name(args))
        call = Call(args, kind, self._router, loop.time() + self.timeout, self.timeout,
                    self._backoff, self._tls)
        if kind is not WRITE or not self._sessions_on:
            return await self._attempts(call, options)
        if not await self._pool.enter(call.deadline - loop.time()):
            raise RaftError(f"{call.name}: all {self._pool.limit} sessions stayed busy for "
                            f"{self.timeout:g} s (max_sessions)")
        try:
            return await self._attempts(call, options)
        finally:
            self._pool.leave(call.session)

    def get_encoder(self):
        return self._node(self._router.seeds[0]).get_encoder()

    def get_connection_kwargs(self):
        return self._node(self._router.seeds[0]).get_connection_kwargs()

    async def _attempts(self, call: Call, options: dict):
        loop = asyncio.get_running_loop()
        empty = options.pop(EMPTY_RESPONSE, _NOTHING)
        while True:
            if call.kind is WRITE and self._sessions_on and call.session is None:
                call.take_session(self._pool.idle() or await self._open_session(call.deadline))
            addr = self._router.leader
            node = self._node(addr)
            try:
                conn = await node.connection_pool.get_connection()
            except LOST as e:
                delay = call.connect_failed(addr, e, loop.time())
            else:
                try:
                    await conn.send_command(*call.wire_args())
                    return await node.parse_response(conn, call.name, **options)
                except (ResponseError, AuthenticationError) as e:
                    delay = call.refused(addr, e, loop.time())
                    if delay is None:
                        if empty is not _NOTHING:
                            return empty
                        raise
                except LOST as e:
                    await conn.disconnect()
                    delay = call.lost(addr, e, loop.time())
                except BaseException:
                    # Cancelled or interrupted mid-reply: the stream is unusable.
                    await asyncio.shield(conn.disconnect())
                    raise
                finally:
                    await asyncio.shield(node.connection_pool.release(conn))
            if delay:
                await asyncio.sleep(delay)

    async def _open_session(self, deadline: float) -> Session:
        """RAFT.SESSION OPEN, retried like a read (see Client._open_session)."""
        call = Call(("RAFT.SESSION", "OPEN"), OPEN, self._router, deadline, self.timeout,
                    self._backoff, self._tls)
        return Session(int(await self._attempts(call, {})))

    def _node(self, addr) -> redis.asyncio.Redis:
        node = self._nodes.get(addr)
        if node is None:
            node = redis.asyncio.Redis(**node_kwargs(addr, self._redis_kwargs,
                                                     Retry(NoBackoff(), 0)))
            self._nodes[addr] = node
        return node

    @property
    def leader(self) -> str:
        """The address commands go to now (the leader, as far as this client knows)."""
        return str(self._router.leader)

    async def aclose(self) -> None:
        """Close every connection (the sessions expire on the cluster)."""
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            await node.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (f"<raftfast.AsyncClient {[str(a) for a in self._router.seeds]} "
                f"leader={self.leader}>")


_NOTHING = object()
