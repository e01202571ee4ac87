"""The clients of a chaos run: redis-py threads that record every operation
whose outcome matters to the linearizability checker.

Each operation ends in one of three ways (docs/reference.md, errors):
  - done: a reply; recorded with its return time and result;
  - not done: `-MOVED`, `-CLUSTERDOWN`, `-TRYAGAIN`, or no connection could
    be opened; the command had no effect, so it is dropped from the history
    and tried again elsewhere after a short sleep;
  - unknown: a socket timeout, `-TIMEOUT`, or a connection broken after the
    command was sent; recorded with ret=None (it may take effect at any time
    after its call, or never) and never sent again: a second copy of the
    same unique value could make a lost write look applied.

redis-py would silently re-send a command after a connection error, which
turns one unknown write into two; `Retry(NoBackoff(), 0)` turns that off.
Opening the connection before the call is stamped keeps "could not connect"
(certainly not done) apart from "broke while waiting" (unknown).
"""
import random
import threading
import time
from collections import Counter

import redis
from redis.backoff import NoBackoff
from redis.exceptions import (ClusterDownError, ConnectionError, MovedError, RedisError,
                              ResponseError, TimeoutError, TryAgainError)
from redis.retry import Retry

from tests.support.linearizability import Op
from tests.support.wait import until

REGISTER, APPEND = "reg", "app"
SEPARATOR = ";"
FINAL_READER = 0          # client id of the final reads; workload clients count from 1
# A client's think time after a redirect or an unreachable node, drawn at
# random: part of the workload's shape (clients do not hammer a cluster that
# is electing), not a wait for anything.
REDIRECT_PAUSE = (0.02, 0.1)


class Keyspace:
    """The keys the clients use, in generations.

    Every `lifetime` seconds the clients move on to fresh keys, so no key's
    history grows beyond what the checker searches quickly however long the
    run (Jepsen's "independent keys").  A few keys per generation keep
    clients contending on each.
    """

    def __init__(self, registers=3, appends=3, lifetime=6.0):
        self.registers, self.appends, self.lifetime = registers, appends, lifetime
        self.started = time.monotonic()
        self._used = set()
        self._lock = threading.Lock()

    def pick(self, rng):
        generation = int((time.monotonic() - self.started) / self.lifetime)
        slot = rng.randrange(self.registers + self.appends)
        if slot < self.registers:
            key = f"{REGISTER}{slot}.{generation}"
        else:
            key = f"{APPEND}{slot - self.registers}.{generation}"
        with self._lock:
            self._used.add(key)
        return key

    def used(self):
        with self._lock:
            return sorted(self._used)


def is_append_key(key):
    return key.startswith(APPEND)


def connect(port, socket_timeout):
    """A redis-py client that never re-sends a command on its own."""
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=socket_timeout,
                       socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0),
                       single_connection_client=True, decode_responses=True)


class NodeRouter:
    """Which node to ask next: the last leader named by a `-MOVED`, else
    any node at random.  One connection per node, opened on demand."""

    def __init__(self, client_ports, rng, socket_timeout):
        self.client_ports = client_ports
        self.node_by_port = {p: i for i, p in client_ports.items()}
        self.rng, self.socket_timeout = rng, socket_timeout
        self.leader = None
        self._conns = {}

    def pick(self):
        if self.leader is None:
            self.leader = self.rng.choice(sorted(self.client_ports))
        return self.leader

    def conn(self, node):
        if node not in self._conns:
            self._conns[node] = connect(self.client_ports[node], self.socket_timeout)
        return self._conns[node]

    def drop(self, node):
        """Close `node`'s connection and ask someone else next time."""
        conn = self._conns.pop(node, None)
        if conn is not None:
            conn.close()
        self.leader = None

    def moved(self, err):
        self.leader = self.node_by_port.get(err.port)

    def forget(self):
        self.leader = None

    def close(self):
        for c in self._conns.values():
            c.close()
        self._conns.clear()


class Outcome:
    DONE, NOT_DONE, UNKNOWN = "done", "not done", "unknown"


def _open(router, node):
    """A connected client for `node`, or RedisError if it cannot be reached.

    A connection the node closed while idle (it was killed and restarted)
    is noticed here and reopened, before anything is sent on it."""
    r = router.conn(node)  # redis-py connects when it makes the client
    c = r.connection
    c.connect()  # a no-op when connected
    try:
        stale = c.can_read(timeout=0)
    except ConnectionError:
        stale = True
    if stale:
        c.disconnect()
        c.connect()
    return r


def attempt(router, node, command):
    """Send `command` once to `node`: (outcome, call, ret, reply).

    The call time is taken once the connection is open, so a node that
    cannot be reached never leaves an op in the history."""
    try:
        r = _open(router, node)
    except RedisError:
        router.drop(node)
        return Outcome.NOT_DONE, None, None, None
    call = time.monotonic()
    try:
        reply = r.execute_command(*command)
    except MovedError as e:
        router.moved(e)
        return Outcome.NOT_DONE, call, None, None
    except (ClusterDownError, TryAgainError):
        router.forget()
        return Outcome.NOT_DONE, call, None, None
    except (TimeoutError, ConnectionError):
        return Outcome.UNKNOWN, call, None, None
    except ResponseError as e:
        if str(e).startswith("TIMEOUT"):
            return Outcome.UNKNOWN, call, None, None
        raise  # any other -ERR is a bug in the node or in this client
    return Outcome.DONE, call, time.monotonic(), reply


class WorkloadClient(threading.Thread):
    """One client: registers (GET/SET of unique values) and appends (APPEND
    of unique tokens, GET of the whole string), until `stop` is set."""

    def __init__(self, client_id, client_ports, keyspace, seed, stop, socket_timeout=2.5):
        super().__init__(name=f"chaos-client-{client_id}", daemon=True)
        self.id = client_id
        self.rng = random.Random(seed)
        self.router = NodeRouter(client_ports, self.rng, socket_timeout)
        self.keyspace, self.stop = keyspace, stop
        self.ops = []                 # the history this client contributes
        self.outcomes = Counter()     # done / unknown / redirected / unreachable
        self.errors = []              # replies no correct node would send
        self._seq = 0

    def run(self):
        try:
            while not self.stop.is_set():
                self._one_op()
        except Exception as e:  # noqa: BLE001 - reported by the run, not lost in a thread
            self.errors.append(f"client {self.id}: {type(e).__name__}: {e}")
        finally:
            self.router.close()

    def _one_op(self):
        key = self.keyspace.pick(self.rng)
        self._seq += 1
        token = f"c{self.id}-{self._seq}"
        if is_append_key(key):
            kind, arg = ("append", token + SEPARATOR) if self.rng.random() < 0.7 else ("get", None)
        else:
            kind, arg = ("set", token) if self.rng.random() < 0.5 else ("get", None)
        command = (kind.upper(), key) if arg is None else (kind.upper(), key, arg)
        while not self.stop.is_set():
            node = self.router.pick()
            try:
                outcome, call, ret, reply = attempt(self.router, node, command)
            except ResponseError as e:
                self.errors.append(f"client {self.id} {command} on node {node}: {e}")
                return
            if outcome == Outcome.NOT_DONE:
                self.outcomes["redirected" if call is not None else "unreachable"] += 1
                time.sleep(self.rng.uniform(*REDIRECT_PAUSE))
                continue
            self.outcomes[outcome] += 1
            if outcome == Outcome.UNKNOWN and kind == "get":
                return  # an unknown read observed nothing and changed nothing
            result = None if kind == "set" else reply
            self.ops.append(Op(self.id, key, kind, arg, call, ret, result))
            return


def final_reads(client_ports, keys, timeout=60.0):
    """The last word on every key: one answered GET each (final_read),
    all within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    return [final_read(client_ports, key, deadline) for key in keys]


def final_read(client_ports, key, deadline):
    """GET `key` until a node answers it, for the history's last word on it.

    Retrying a read is safe (it changes nothing); only the answered one is
    recorded, with its own call and return times."""
    router = NodeRouter(client_ports, random.Random(key), socket_timeout=5.0)

    def answered():
        node = router.pick()
        outcome, call, ret, reply = attempt(router, node, ("GET", key))
        if outcome == Outcome.DONE:
            return Op(FINAL_READER, key, "get", None, call, ret, reply)
        if outcome == Outcome.UNKNOWN:
            router.drop(node)
        return None

    try:
        return until(answered, f"a node to answer GET {key} after the faults were healed",
                     max(0.0, deadline - time.monotonic()), interval=0.05)
    finally:
        router.close()
