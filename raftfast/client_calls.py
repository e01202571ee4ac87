"""What raftfast.Client and raftfast.AsyncClient decide, without I/O: where
a command goes, what each answer means for it, when to try again and when
to give up with which error.

Both clients run the same loop around one Call (client.py,
client_async.py): send call.wire_args() to router.leader, then tell the
call what happened (replied, connect_failed, lost, refused); each of those
returns how long to wait before the next attempt, or raises the error the
caller gets.  Keeping the decisions here, away from sockets and event
loops, lets one set of rules serve both clients and be tested without a
cluster.

Commands come in three kinds:

- READ: changes nothing (GET, MGET, SCAN, ... and the node-local PING,
  INFO), so any failure is retried until the deadline.
- WRITE: the key-value writes RAFT.EXEC runs.  Through a session, every
  attempt carries the same (session, seq), so a retry after a lost reply
  is applied at most once and answers the first reply.  Without sessions,
  a write whose fate became unknown raises OutcomeUnknown.
- OTHER: everything else (RAFT.NODE, RAFT.TRANSFER_LEADER, commands the
  server does not know): sent as they are, retried only after an answer
  that says nothing was done, like a write without a session.

What an answer says about the command (contract, "Errors"):

    MOVED, NOTLEADER      not done; follow to the address it names
    CLUSTERDOWN           not done; another node may know a leader
    TRYAGAIN              not done; the leader is handing over, wait
    TIMEOUT outcome unknown
                          proposed, fate unknown
    connection refused    not sent
    connection lost, socket timeout after sending
                          unknown: the node may have applied it
    OOM, NOAUTH, WRONGPASS
                          refused before proposing: not done
    -ERR ... (anything else)
                          the command's own answer (RAFT.EXEC stores an
                          error reply like any other and replays it)

A session write whose earlier attempt may have been applied and which then
hears "-ERR unknown session" raises OutcomeUnknown: the session expired
(10 minutes of cluster time without use) after that attempt, so whether
the attempt ran before the expiry is lost with the session, and sending
the command again under a new session could apply it twice.  Only when no
attempt may have applied (every earlier one was refused) does the call
open a new session and go on.  The same reasoning makes any refusal that
says only "not this time" (OOM, authentication, a stale sequence number)
an OutcomeUnknown once an earlier attempt may have applied.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

try:
    from redis.exceptions import (AuthenticationError, ClusterDownError, ConnectionError,
                                  InvalidResponse, MovedError, NoPermissionError,
                                  OutOfMemoryError, TimeoutError, TryAgainError)
except ImportError as e:    # the server and the library do not need redis-py; the clients do
    raise ImportError("raftfast.Client and AsyncClient are built on redis-py: "
                      "pip install 'redis>=5.3'") from e

from raftfast.address import Address, AddressError, parse_address
from raftfast.errors import NotLeader, OutcomeUnknown, RaftError
from raftfast.resp_client import address as parse_target

__all__ = ["READ", "WRITE", "OTHER", "OPEN", "LOST", "READS", "WRITES", "OUTCOME_UNKNOWN",
           "command_name", "kind_of", "parse_targets", "check_redis_kwargs", "node_kwargs",
           "redirect_target", "set_up_client", "Backoff", "Router", "Session", "Call"]

READ, WRITE, OTHER, OPEN = "read", "write", "other", "open"

# Errors after which a connection's state is unknown: it is closed, and a
# command sent on it may or may not have reached the node.
LOST = (ConnectionError, TimeoutError, InvalidResponse, OSError)

# What RAFT.EXEC runs (the store's write opcodes).
WRITES = frozenset(("SET", "SETNX", "GETDEL", "DEL", "APPEND", "INCR", "INCRBY", "DECR",
                    "DECRBY", "MSET", "EXPIRE", "PEXPIRE", "PERSIST"))
# Linearizable reads, and what any node answers without changing anything.
READS = frozenset(("GET", "MGET", "EXISTS", "STRLEN", "TTL", "PTTL", "DBSIZE", "SCAN",
                   "PING", "ECHO", "INFO", "COMMAND"))

# The server's reply for a proposal whose fate it does not know (other
# TIMEOUT replies, like a leadership transfer's, are definite answers).
OUTCOME_UNKNOWN = "TIMEOUT outcome unknown"

# Refusals that happen before a command is proposed and that a retry may
# not meet again: they say nothing about an earlier attempt.
_NOT_THIS_TIME = (OutOfMemoryError, AuthenticationError, NoPermissionError)


def command_name(args) -> str:
    """The command's name as redis-py sends it: the first word of args[0]
    ("CONFIG GET" is two words on the wire), upper case."""
    first = args[0]
    if isinstance(first, (bytes, bytearray, memoryview)):
        first = bytes(first).decode("utf-8", "replace")
    return str(first).split(" ", 1)[0].upper()


def kind_of(name: str) -> str:
    """READ, WRITE or OTHER for a command name (upper case)."""
    if name in WRITES:
        return WRITE
    if name in READS:
        return READ
    return OTHER


def parse_targets(addrs, tls: bool) -> list[Address]:
    """The clients' node addresses: URLs (tcp://, tls://, unix://) or
    "host:port"; `tls` (redis-py's ssl=True) makes every TCP one TLS."""
    if isinstance(addrs, (str, Address)):
        addrs = [addrs]
    out = []
    for a in addrs:
        t = parse_target(a)
        if tls and t.scheme == "tcp" and not t.tls:
            t = Address("tcp", host=t.host, port=t.port, tls=True)
        if t not in out:
            out.append(t)
    if not out:
        raise ValueError("raftfast.Client needs at least one node address")
    return out


# redis-py keywords the clients set themselves: where to connect comes from
# the addresses, and redis-py must not retry anything behind their back.
_OWN_KWARGS = ("host", "port", "unix_socket_path", "connection_pool", "retry",
               "retry_on_error", "retry_on_timeout", "single_connection_client")


def check_redis_kwargs(redis_kwargs: dict) -> None:
    taken = sorted(k for k in redis_kwargs if k in _OWN_KWARGS)
    if taken:
        raise TypeError(f"raftfast's clients set {', '.join(taken)} themselves: nodes come "
                        "from the addresses, and retries are the client's own")



def set_up_client(client, addrs, sessions, timeout, backoff_base, backoff_cap,
                  redis_kwargs) -> None:
    """What Client and AsyncClient set up alike (their session pools
    differ): the keywords checked, the seeds, the router, the backoff."""
    check_redis_kwargs(redis_kwargs)
    if timeout <= 0:
        raise ValueError(f"timeout must be positive (got {timeout})")
    seeds = parse_targets(addrs, bool(redis_kwargs.get("ssl")))
    # A redirect names host:port only: TLS if the client speaks TLS at all.
    client._tls = any(a.tls for a in seeds)
    client._router = Router(seeds)
    # A node that does not answer must not use up the whole deadline: the
    # call moves on to another node after this (redis-py's defaults wait
    # longer, or forever).
    per_node = min(2.0, timeout / 4)
    redis_kwargs.setdefault("socket_timeout", per_node)
    redis_kwargs.setdefault("socket_connect_timeout", per_node)
    client._redis_kwargs = redis_kwargs
    client._sessions_on = sessions
    client.timeout = timeout
    client._backoff = Backoff(backoff_base, backoff_cap)
    client._nodes = {}

def node_kwargs(addr: Address, redis_kwargs: dict, retry) -> dict:
    """redis.Redis keywords for one node: the caller's, its address, and
    `retry` (a redis-py Retry of no retries)."""
    kw = dict(redis_kwargs, retry=retry, retry_on_error=[])
    if addr.scheme == "unix":
        kw["unix_socket_path"] = addr.path
        kw.pop("ssl", None)
    else:
        kw.update(host=addr.host, port=addr.port)
        if addr.tls:
            kw["ssl"] = True
    return kw


class Backoff:
    """Jittered exponential delays: the n-th is drawn from [d/2, d) with
    d = min(cap, base * 2**n), so clients that failed together do not
    come back together, and none comes back at once."""

    __slots__ = ("base", "cap", "rng")

    def __init__(self, base: float = 0.02, cap: float = 0.5, rng=None):
        if base <= 0 or cap < base:
            raise ValueError(f"backoff wants 0 < base <= cap (got base={base}, cap={cap})")
        self.base = base
        self.cap = cap
        self.rng = rng or random.Random()

    def delay(self, n: int) -> float:
        d = min(self.cap, self.base * (1 << min(n, 30)))
        return d / 2 + self.rng.uniform(0, d / 2)


class Router:
    """Where commands go: the node believed to lead.  It starts at the
    first address given, follows redirects, and moves on to the next given
    address when the node it points at cannot be reached or knows no
    leader.  Shared by every call of a client: plain attribute updates, so
    threads may race only to the same kind of answer."""

    def __init__(self, seeds: list[Address]):
        self.seeds = seeds
        self.leader = seeds[0]
        self._turn = 0
        # Set by a redirect: the address the cluster named as its leader.
        self.named: Address | None = None

    def follow(self, addr: Address) -> None:
        self.leader = self.named = addr

    def move_on(self, failed: Address) -> None:
        """`failed` could not serve: try the next given address (unless
        another call already moved elsewhere)."""
        if self.leader == failed:
            self._turn += 1
            self.leader = self.seeds[self._turn % len(self.seeds)]


@dataclass(eq=False)
class Session:
    """A session the server opened (RAFT.SESSION OPEN) and the last
    sequence number this client gave out in it.  One call holds it at a
    time: the server keeps only a session's last reply and refuses a
    sequence number below the last it ran, so two writes in flight in one
    session could refuse or lose each other's replies."""
    id: int
    seq: int = 0
    dead: bool = field(default=False)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


def redirect_target(exc, tls: bool) -> Address | None:
    """The address a MOVED or NOTLEADER error names, or None for any other error."""
    text = str(exc)
    try:
        if isinstance(exc, MovedError):
            # redis-py strips the "MOVED " prefix: "0 host:port".
            t = parse_target(text.split()[-1])
            return Address("tcp", host=t.host.strip("[]"), port=t.port, tls=tls)
        if text.startswith("NOTLEADER "):
            return parse_address(text.split()[-1])
    except (AddressError, ValueError, IndexError):
        raise RaftError(f"cannot follow the redirect {text!r}") from exc
    return None


class Call:
    """One command's way through its attempts.

    deadline is on the caller's clock (time.monotonic or the loop's time);
    every method that returns a delay raises instead when that delay would
    end past the deadline: NotLeader when nothing may have taken effect,
    OutcomeUnknown when an attempt may have.
    """

    __slots__ = ("args", "name", "kind", "session", "seq", "maybe_applied", "deadline",
                 "timeout", "backoff", "router", "tls", "last_error", "hops", "waits")

    def __init__(self, args, kind: str, router: Router, deadline: float, timeout: float,
                 backoff: Backoff, tls: bool = False):
        self.args = args
        self.name = command_name(args)
        self.kind = kind
        self.router = router
        self.deadline = deadline
        self.timeout = timeout
        self.backoff = backoff
        self.tls = tls
        self.session: Session | None = None
        self.seq = 0
        # Some attempt was sent and not answered: it may have been applied.
        self.maybe_applied = False
        self.last_error: BaseException | None = None
        self.hops = 0       # immediate retries in a row (redirects, the next node)
        self.waits = 0      # backoffs so far

    @property
    def uses_session(self) -> bool:
        return self.kind is WRITE and self.session is not None

    def take_session(self, session: Session) -> None:
        """The session this call's attempts run in, and its sequence number."""
        self.session = session
        self.seq = session.next_seq()

    def wire_args(self) -> tuple:
        if self.uses_session:
            return ("RAFT.EXEC", self.session.id, self.seq) + _split_name(self.args)
        return tuple(self.args)

    # ---- outcomes ---------------------------------------------------------

    def connect_failed(self, addr: Address, exc: BaseException, now: float) -> float:
        """No connection to addr: nothing was sent.  Try the next node."""
        if isinstance(exc, AuthenticationError):
            raise exc   # the same credentials fail on every node
        self.last_error = exc
        self.router.move_on(addr)
        return self._again(now, hop=True)

    def lost(self, addr: Address, exc: BaseException, now: float) -> float:
        """The connection failed or timed out after the command was
        (perhaps) sent: it may have been applied.  The retry goes to the next
        node: this one may be gone (its host cut off), and if it still
        leads, the next node names it."""
        self.last_error = exc
        if self.kind in (READ, OPEN):
            self.router.move_on(addr)
            return self._again(now, hop=True)
        if not self.uses_session:
            raise OutcomeUnknown(f"{self.name}: the connection to {addr} failed after the "
                                 f"command was sent ({exc}); it may have taken effect") from exc
        self.maybe_applied = True
        self.router.move_on(addr)
        return self._again(now, hop=True)

    def refused(self, addr: Address, exc: BaseException, now: float) -> float | None:
        """An error reply.  A delay to retry after, or None when the error
        is the command's own answer (the caller raises it)."""
        self.last_error = exc
        target = redirect_target(exc, self.tls)
        if target is not None:
            self.router.follow(target)
            return self._again(now, hop=True)
        if isinstance(exc, ClusterDownError):
            self.router.move_on(addr)
            return self._again(now, hop=True)
        if isinstance(exc, TryAgainError):
            return self._again(now, hop=False)
        text = str(exc)
        if text.startswith(OUTCOME_UNKNOWN):
            if self.kind in (READ, OPEN):
                return self._again(now, hop=False)
            if not self.uses_session:
                raise OutcomeUnknown(f"{self.name}: {text}") from exc
            self.maybe_applied = True
            return self._again(now, hop=False)
        if not self.uses_session:
            return None
        if text == "unknown session":
            if self.maybe_applied:
                raise OutcomeUnknown(
                    f"{self.name}: session {self.session.id} expired after an attempt that "
                    "may have been applied; sending it again could apply it twice") from exc
            self.session.dead = True    # the caller opens another and sets it here
            self.session = None
            return self._again(now, hop=True)
        if self.maybe_applied and (isinstance(exc, _NOT_THIS_TIME)
                                   or text.startswith("stale sequence number")):
            raise OutcomeUnknown(f"{self.name}: an earlier attempt may have been applied, "
                                 f"and a retry was refused ({text})") from exc
        if text.startswith("stale sequence number"):
            raise OutcomeUnknown(f"{self.name}: {text}") from exc
        return None

    def _again(self, now: float, hop: bool) -> float:
        """The delay before the next attempt: none for a hop (a redirect or
        the next node) unless hops keep failing, a backoff otherwise."""
        if hop and self.hops <= len(self.router.seeds):
            self.hops += 1
            delay = 0.0
        else:
            self.hops = 0
            delay = self.backoff.delay(self.waits)
            self.waits += 1
        if now + delay >= self.deadline:
            self.give_up()
        return delay

    def give_up(self):
        """The deadline passed: the error the caller gets."""
        why = f"{self.last_error}" if self.last_error is not None else "no answer"
        if self.maybe_applied:
            raise OutcomeUnknown(f"{self.name}: no answer within {self.timeout:g} s after an "
                                 f"attempt that may have been applied (last: {why})"
                                 ) from self.last_error
        named = self.router.named
        raise NotLeader(f"{self.name}: no leader took it within {self.timeout:g} s "
                        f"(last: {why})", leader_url=str(named) if named else None
                        ) from self.last_error


def _split_name(args) -> tuple:
    """args with a two-word first argument ("CONFIG GET") split, as redis-py
    does on the wire; needed once the command is itself an argument."""
    first = args[0]
    if isinstance(first, str) and " " in first:
        return tuple(first.split()) + tuple(args[1:])
    return tuple(args)
