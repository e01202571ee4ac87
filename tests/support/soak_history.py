"""The soak's sampled history: a few register and append keys whose every
operation is recorded by the chaos run's workload clients
(tests/support/chaos_workload.py), checked as the run goes.

The clients move to fresh keys every few seconds (the keyspace's
generations).  Once every client has moved past a generation, nobody will
touch its keys again: the checker reads each once more (the history's
last word on it), checks the generation's history with the chaos run's
checks (tests/support/chaos.py: linearizability per key, no acknowledged
write lost, no append applied twice), deletes the keys, and forgets the
operations.  So an hour's history is checked in pieces of a few seconds
each, the test's memory stays flat, and the cluster's data set holds a
generation or two of these keys, never an hour of them.
"""
import threading
import time
from collections import Counter, defaultdict

import raftfast
from tests.support.chaos import ScheduleResult, check
from tests.support.chaos_workload import Keyspace, final_reads


def generation_of(key):
    return int(key.rsplit(".", 1)[1])


class GenerationKeyspace(Keyspace):
    """A Keyspace that remembers the generation each client thread last
    picked a key from: a thread picks its next key only once its previous
    operation is over."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._last = {}

    def pick(self, rng):
        key = super().pick(rng)
        self._last[threading.current_thread().name] = generation_of(key)
        return key

    def done_below(self, threads):
        """Generations below this one no thread of `threads` will touch again."""
        return min((self._last.get(t.name, 0) if t.is_alive() else 1 << 60) for t in threads)


class HistoryChecker(threading.Thread):
    """Checks finished generations as they come (see the module's docstring)."""

    def __init__(self, keyspace, clients, client_ports, addrs, stop):
        super().__init__(name="soak-history", daemon=True)
        self.keyspace, self.clients = keyspace, clients
        self.client_ports, self.addrs, self.stop = client_ports, addrs, stop
        self.checked_below = 0
        self.totals = Counter()       # ops recorded/ok/unknown/checked, keys, generations
        self.findings = []            # every anomaly found ("violation: ...", "lost: ...")
        self.check_seconds = 0.0
        self.errors = []
        self._pending = defaultdict(list)  # generation -> its ops taken from the clients

    def run(self):
        deleter = raftfast.Client(self.addrs, timeout=30.0, decode_responses=True)
        try:
            while not self.stop.wait(1.0):
                self.check_finished(deleter)
        except Exception as e:  # noqa: BLE001 - reported by the run, not lost in a thread
            self.errors.append(f"history checker: {type(e).__name__}: {e}")
        finally:
            deleter.close()

    def finish(self):
        """After the clients stopped: check every generation left."""
        deleter = raftfast.Client(self.addrs, timeout=60.0, decode_responses=True)
        try:
            self.check_finished(deleter, everything=True)
        finally:
            deleter.close()

    def _collect(self):
        """Move the clients' recorded ops into their generations.  A client
        appends to its list while this runs: take what is there, then
        delete exactly that many from the front (both are atomic list
        operations)."""
        for c in self.clients:
            taken = c.ops[:]
            del c.ops[:len(taken)]
            for op in taken:
                self._pending[generation_of(op.key)].append(op)

    def check_finished(self, deleter, everything=False):
        below = 1 << 60 if everything else self.keyspace.done_below(self.clients)
        self._collect()
        for gen in sorted(g for g in self._pending if g < below):
            self._check_generation(gen, self._pending.pop(gen), deleter)
            self.checked_below = gen + 1

    def _check_generation(self, gen, ops, deleter):
        keys = sorted({op.key for op in ops})
        last_reads = final_reads(self.client_ports, keys)
        finals = {op.key: op.result for op in last_reads}
        started = time.monotonic()
        result = ScheduleResult(config={}, faults={})
        check(result, ops + last_reads, finals)
        self.check_seconds += time.monotonic() - started
        unknown = sum(1 for op in ops if op.ret is None)
        self.totals.update(generations=1, keys=result.keys, ops_recorded=len(ops),
                           ops_ok=len(ops) - unknown, ops_unknown=unknown,
                           ops_checked=result.ops_checked, unknown_applied=result.unknown_applied)
        for label, items in (("violation", result.violations),
                             ("inconclusive", result.inconclusive), ("lost", result.lost),
                             ("duplicated", result.duplicated),
                             ("unexpected", result.unexpected)):
            self.findings += [f"generation {gen}: {label}: {item}" for item in items]
        if keys:
            deleter.delete(*keys)

    def summary(self):
        return dict(self.totals) | {"findings": len(self.findings),
                                    "check_seconds": round(self.check_seconds, 1)}
