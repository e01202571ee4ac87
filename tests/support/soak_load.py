"""The soak's load: client threads writing and reading through
raftfast.Client (leader following, writes in sessions), each on keys only
it writes, so it knows what every one of them must hold.

A client's keys are a fixed set (values of a fixed size, counters, and
strings appended to until they reach a bound and are then set back to
empty), so the data set stops growing once every key was written: what
the soak measures after that is the nodes' own growth, not the data's.

Every GET of one of its keys must return the client's last acknowledged
write to it (nobody else writes it, and reads are linearizable), and at
the end every key is read back (`read_back`) and must hold it too.  A
write whose call gave up (the client's deadline passed: its fate is
unknown) takes its key out of both checks and is counted.
"""
import random
import threading

from redis.exceptions import RedisError

import raftfast
from raftfast.errors import RaftError

COUNTERS = 16
LOGS = 16
LOG_BOUND = 2048  # bytes an appended string may reach before it is set back to ""


class LoadClient(threading.Thread):
    """One client thread: SET (40%), INCR (20%), APPEND (20%) and GET (20%)
    of its own keys until `stop` is set."""

    def __init__(self, client_id, addrs, stop, keys=500, value_bytes=100, seed=0,
                 timeout=30.0):
        super().__init__(name=f"soak-load-{client_id}", daemon=True)
        self.id = client_id
        self.addrs, self.stop = addrs, stop
        self.keys, self.value_bytes = keys, value_bytes
        self.timeout = timeout
        self.rng = random.Random(f"{seed}-{client_id}")
        self.expected = {}          # key -> what it must hold (str); only keys written
        self.uncertain = set()      # keys a write to which gave up
        self.acked = 0              # operations answered (writes and reads)
        self.writes = 0
        self.reads = 0
        self.gave_up = 0            # calls that gave up at the deadline
        self.wrong_reads = []       # GETs that did not return the last acknowledged write
        self.errors = []            # replies no correct cluster would send
        self._seq = 0

    def run(self):
        client = raftfast.Client(self.addrs, timeout=self.timeout, socket_timeout=5.0,
                                 decode_responses=True)
        try:
            while not self.stop.is_set():
                self._one_op(client)
        except Exception as e:  # noqa: BLE001 - reported by the run, not lost in a thread
            self.errors.append(f"load client {self.id}: {type(e).__name__}: {e}")
        finally:
            client.close()

    def _one_op(self, client):
        self._seq += 1
        roll = self.rng.random()
        if roll < 0.4:
            key = f"load:{self.id}:{self.rng.randrange(self.keys)}"
            value = f"{self.id}-{self._seq}-".ljust(self.value_bytes, "x")
            self._write(key, value, client.set, key, value)
        elif roll < 0.6:
            key = f"ctr:{self.id}:{self.rng.randrange(COUNTERS)}"
            self._write(key, str(int(self.expected.get(key, "0")) + 1), client.incr, key)
        elif roll < 0.8:
            key = f"log:{self.id}:{self.rng.randrange(LOGS)}"
            now = self.expected.get(key, "")
            if len(now) >= LOG_BOUND:
                self._write(key, "", client.set, key, "")
            else:
                token = f"{self._seq};"
                self._write(key, now + token, client.append, key, token)
        else:
            self._read(client)

    def _write(self, key, after, method, *args):
        if key in self.uncertain:
            return
        try:
            method(*args)
        except (RaftError, RedisError) as e:
            # Either way the write's fate is not known: the key leaves the checks.
            self.uncertain.add(key)
            self.expected.pop(key, None)
            if isinstance(e, RaftError):
                self.gave_up += 1
            else:  # an error reply the client does not retry: no correct node sends one here
                self.errors.append(f"load client {self.id} {args[:1]}: {type(e).__name__}: {e}")
            return
        self.expected[key] = after
        self.writes += 1
        self.acked += 1

    def _read(self, client):
        if not self.expected:
            return
        key = self.rng.choice(list(self.expected))
        try:
            value = client.get(key)
        except RaftError:
            self.gave_up += 1
            return
        except RedisError as e:
            self.errors.append(f"load client {self.id} GET {key}: {type(e).__name__}: {e}")
            return
        self.reads += 1
        self.acked += 1
        if (value or "") != self.expected[key] and key not in self.uncertain:
            self.wrong_reads.append(f"{key}: read {value!r:.60}, last acknowledged write "
                                    f"{self.expected[key]!r:.60}")


def read_back(clients, addrs, timeout=60.0):
    """Every key the clients wrote, read once more at the end: the keys
    whose value is not their last acknowledged write ("key: found ...")."""
    lost = []
    reader = raftfast.Client(addrs, timeout=timeout, decode_responses=True)
    try:
        for c in clients:
            keys = sorted(c.expected)
            for start in range(0, len(keys), 200):
                chunk = keys[start:start + 200]
                for key, value in zip(chunk, reader.mget(chunk)):
                    if (value or "") != c.expected[key]:
                        lost.append(f"{key}: found {value!r:.60}, last acknowledged "
                                    f"{c.expected[key]!r:.60}")
    finally:
        reader.close()
    return lost

