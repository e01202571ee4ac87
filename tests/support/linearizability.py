"""Linearizability checker for the chaos tests' key-value histories.

A history is a list of `Op`s recorded by clients of the cluster: when each
request was sent (`call`), when its reply came (`ret`) and what the reply
said (`result`).  The history is linearizable when every op can be given one
instant between its call and its return such that running the ops in that
order on a single-copy register gives every reply the clients saw.

The model, per key: the state is a string or None (missing).
  get       returns the state
  set v     makes the state v (its reply carries no information)
  append v  makes the state (state or "") + v and returns the new length in
            bytes (Redis APPEND's reply)

What the caller records:
  * An op whose reply was a definite refusal (MOVED, CLUSTERDOWN, TRYAGAIN,
    any ERR) had no effect: leave it out of the history.
  * An op whose outcome is unknown (timeout, -TIMEOUT, broken connection)
    goes in with `ret=None`.  It may take effect at any time after its call,
    or never: its return time is +infinity and a history is linearizable when
    every op with a known outcome is placed; unknown ones may be left out.
    An unknown get tells nothing and changes nothing, so it is dropped.
  * Real time: op a precedes op b only when `a.ret < b.call`; equal times
    count as concurrent (the clock cannot tell which came first).

Keys are independent in this model, so `check_history` checks each key on
its own (Herlihy & Wing's locality, which Porcupine calls P-compositionality).

The search is Wing & Gong's, with Lowe's memoization, in the shape Porcupine
made popular: the calls and returns of a key's ops sorted by time in a doubly
linked list; ops whose call comes before the first remaining return are the
candidates to linearize next; linearizing one lifts its call and return out
of the list (and backtracking puts them back, dancing-links style); a cache
of (set of linearized ops, model state) pairs that were already explored
prunes revisits.  One addition: a get whose result equals the current state
is linearized at once and never branched on (see `_Search._place_fitting_gets`),
which removes most of the branching in read-heavy histories.

`append_anomalies` is a cheaper, complementary check of the append workload:
given the key's final value it lists acknowledged appends that were lost and
tokens that were applied twice.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

GET, SET, APPEND = "get", "set", "append"
KINDS = (GET, SET, APPEND)


@dataclass(frozen=True)
class Op:
    client: int            # which client (a client runs one op at a time)
    key: str
    kind: str              # "get" | "set" | "append"
    arg: str | None        # the value for set/append; None for get
    call: float            # time.monotonic() when the request was sent
    ret: float | None      # time.monotonic() when the reply came; None = outcome unknown
    result: object         # get: value or None; set: None; append: new length (int).
                           # Ignored when ret is None.


@dataclass
class CheckResult:
    ok: bool
    key: str | None        # the first key found non-linearizable (None when ok)
    ops_checked: int
    explanation: str       # for a failure: what was proved, and what could not be placed


def check_key(ops: list[Op], budget: int = 2_000_000) -> CheckResult:
    """Check the ops of one key.  `budget` bounds the search steps; when it
    runs out the result is ok=False with an "inconclusive" explanation,
    because success is only reported when a linearization was found."""
    return _check_one_key(list(ops), list(range(len(ops))), budget)[0]


def check_history(ops: list[Op], budget_per_key: int = 2_000_000) -> CheckResult:
    """Check a whole history, one key at a time, in sorted key order.

    Stops at the first key that is definitely not linearizable.  A key whose
    check runs out of budget does not stop the others (a definite violation
    elsewhere is the more useful report); if no key fails outright, the first
    inconclusive key is reported.  `ops_checked` counts the ops of the keys
    checked, so it is len(ops) unless a violation stopped the check early."""
    by_key: dict[str, list[int]] = {}
    for index, op in enumerate(ops):
        by_key.setdefault(op.key, []).append(index)
    checked = 0
    first_inconclusive = None
    for key in sorted(by_key):
        indices = by_key[key]
        result, inconclusive = _check_one_key([ops[i] for i in indices], indices, budget_per_key)
        checked += len(indices)
        if not result.ok and not inconclusive:
            result.ops_checked = checked
            return result
        if inconclusive and first_inconclusive is None:
            first_inconclusive = result
    if first_inconclusive is not None:
        first_inconclusive.ops_checked = checked
        return first_inconclusive
    return CheckResult(ok=True, key=None, ops_checked=checked, explanation="")


def append_anomalies(final_value: str | None, ops: list[Op], sep: str = ";") -> dict:
    """Compare the append workload's writes with the key's final value.

    Each append's arg is a unique token followed by `sep` ("c3-17;"); an arg
    without the trailing `sep` is taken whole as the token.  Gets and sets are
    ignored.  Returns:
      lost             tokens of acknowledged appends missing from the value
      duplicated       tokens found more than once in the value
      unknown_applied  how many unknown-outcome appends did take effect
      unexpected       tokens in the value that no op in `ops` wrote (also
                       what an append the caller left out as refused, but
                       which did take effect, looks like)
    In a correct system `lost` and `duplicated` are empty.  Lists keep the
    order of the ops (lost) or of first appearance in the value (others)."""
    keys = {op.key for op in ops}
    if len(keys) > 1:
        raise ValueError(f"append_anomalies takes the ops of one key, got keys {sorted(keys)}")
    in_value = Counter(t for t in (final_value or "").split(sep) if t)
    written = {}                          # token -> was its append acknowledged
    for op in ops:
        if op.kind == APPEND:
            token = op.arg[:-len(sep)] if sep and op.arg.endswith(sep) else op.arg
            written[token] = written.get(token, False) or op.ret is not None
    return {
        "lost": [t for t, acked in written.items() if acked and t not in in_value],
        "duplicated": [t for t, n in in_value.items() if n > 1],
        "unknown_applied": sum(1 for t, acked in written.items() if not acked and t in in_value),
        "unexpected": [t for t in in_value if t not in written],
    }


def _check_one_key(ops: list[Op], labels: list[int], budget: int) -> tuple[CheckResult, bool]:
    """The result, and whether it is inconclusive (the budget ran out).
    `labels` are the ops' positions in the caller's list, for explanations."""
    if not ops:
        return CheckResult(ok=True, key=None, ops_checked=0, explanation=""), False
    _validate(ops)
    search = _Search(ops, labels)
    verdict = search.run(budget)
    if verdict is True:
        return CheckResult(ok=True, key=None, ops_checked=len(ops), explanation=""), False
    inconclusive = verdict is None
    explanation = search.explain(inconclusive=inconclusive, budget=budget)
    return CheckResult(ok=False, key=ops[0].key, ops_checked=len(ops),
                       explanation=explanation), inconclusive


def _validate(ops: list[Op]) -> None:
    key = ops[0].key
    for op in ops:
        if op.key != key:
            raise ValueError(f"check_key takes the ops of one key: {op.key!r} and {key!r} "
                             "(use check_history for many keys)")
        if op.kind not in KINDS:
            raise ValueError(f"unknown op kind {op.kind!r} (expected one of {KINDS})")
        if op.kind != GET and not isinstance(op.arg, str):
            raise ValueError(f"{op.kind} needs a str arg: {op}")
        if op.ret is not None and op.ret < op.call:
            raise ValueError(f"op returns before it is called: {op}")


def _byte_length(value: str) -> int:
    # str.isascii() is O(1) in CPython, and the workloads' values are ASCII.
    return len(value) if value.isascii() else len(value.encode())


class _Search:
    """One key's search.  Ops live in parallel lists indexed by op number
    (plain lists of ints and strs: this loop is the hot path of the chaos
    tests' verdict).  Entries are numbered 1..E in time order; entry 0 is the
    list head and entry E+1 the tail sentinel."""

    def __init__(self, ops: list[Op], labels: list[int]):
        # An unknown get neither changes the state nor tells anything.
        kept = [i for i, op in enumerate(ops) if not (op.kind == GET and op.ret is None)]
        self.ops = [ops[i] for i in kept]
        self.labels = [labels[i] for i in kept]
        self.t0 = min(op.call for op in ops)
        n = len(self.ops)
        self.kind = [op.kind for op in self.ops]
        self.arg = [op.arg for op in self.ops]
        self.known = [op.ret is not None for op in self.ops]
        # What the reply must be; for an unknown append None means "anything".
        self.expected = [op.result if op.ret is not None else None for op in self.ops]

        # The linearized set is two bitsets: known ops numbered by return
        # time, and unknown ops on their own.  Every known op that returns
        # before the first one still unplaced is linearized, so the known
        # bitset is a long run of low 1 bits plus a few bits above it; the
        # cache stores it as (run length, bits above the run), which keeps an
        # entry small however long the history is (a cache of a million
        # entries must fit in memory).
        known_ops = sorted((i for i in range(n) if self.known[i]),
                           key=lambda i: (self.ops[i].ret, self.ops[i].call, i))
        unknown_ops = [i for i in range(n) if not self.known[i]]
        self.bit = [0] * n
        for numbering in (known_ops, unknown_ops):
            for position, op_index in enumerate(numbering):
                self.bit[op_index] = 1 << position
        self.known_count = len(known_ops)

        # Calls sort before returns at the same instant: equal times are
        # concurrent, so the call must be a candidate before that return.
        events = [(op.call, 0, i) for i, op in enumerate(self.ops)]
        events += [(op.ret, 1, i) for i, op in enumerate(self.ops) if op.ret is not None]
        events.sort()
        self.tail = len(events) + 1
        self.entry_op = [-1] * (self.tail + 1)
        self.is_call = [False] * (self.tail + 1)      # head and tail are not calls
        self.return_of = [0] * (self.tail + 1)        # call entry -> its return entry, 0 if unknown
        call_entry = [0] * n
        for entry, (_, is_return, i) in enumerate(events, start=1):
            self.entry_op[entry] = i
            if is_return:
                self.return_of[call_entry[i]] = entry
            else:
                self.is_call[entry] = True
                call_entry[i] = entry
        self.next = list(range(1, self.tail + 2))
        self.prev = [-1] + list(range(0, self.tail))

        self.steps = 0
        self.best_frames: list[tuple] = []   # the deepest stack seen (see run)
        self.best_state: str | None = None

    # -- the linked list ----------------------------------------------------

    def _lift(self, entry: int) -> None:
        """Take an op's call and return entries out of the list.  Their own
        links are left as they were, so `_unlift` can put them back."""
        nxt, prv = self.next, self.prev
        before, after = prv[entry], nxt[entry]
        nxt[before], prv[after] = after, before
        ret = self.return_of[entry]
        if ret:
            before, after = prv[ret], nxt[ret]
            nxt[before], prv[after] = after, before

    def _unlift(self, entry: int) -> None:
        """Undo `_lift(entry)`, in the reverse order of its removals."""
        nxt, prv = self.next, self.prev
        ret = self.return_of[entry]
        if ret:
            nxt[prv[ret]] = ret
            prv[nxt[ret]] = ret
        nxt[prv[entry]] = entry
        prv[nxt[entry]] = entry

    # -- the search ----------------------------------------------------------

    def run(self, budget: int):
        """True: linearizable.  False: proved not.  None: budget ran out.

        The loop walks the candidates (call entries before the first return
        entry) from the head.  Linearizing one pushes a frame (call entry,
        state before, forced) and restarts from the head; reaching a return
        entry means the op it belongs to can no longer be placed, so the
        last choice is undone and the walk resumes after it."""
        kind, arg, expected, known, bit = self.kind, self.arg, self.expected, self.known, self.bit
        entry_op, is_call, nxt = self.entry_op, self.is_call, self.next
        lift, unlift = self._lift, self._unlift
        cache = set()
        stack: list[tuple] = []
        state = None
        known_bits = unknown_bits = 0
        known_left = self.known_count
        steps = 0
        if known_left == 0:
            return True

        fresh_config = True           # a new configuration: place the fitting gets first
        cursor = 0
        while True:
            steps += 1
            if steps > budget:
                self._remember_if_deepest(stack, state)
                self.steps = steps - 1
                return None

            if fresh_config:
                fresh_config = False
                doomed, placed, known_bits = self._place_fitting_gets(
                    stack, state, known_bits, unknown_bits, cache)
                known_left -= placed
                if known_left == 0:
                    self.steps = steps
                    return True
                cursor = nxt[0]
                if doomed:
                    cursor = self.tail            # falls through to the backtrack below

            if not is_call[cursor]:
                # A return entry (or the tail): its op was not placed in time.
                self._remember_if_deepest(stack, state)
                while True:
                    if not stack:
                        self.steps = steps
                        return False
                    entry, state, forced = stack.pop()
                    unlift(entry)
                    op = entry_op[entry]
                    if known[op]:
                        known_bits ^= bit[op]
                        known_left += 1
                    else:
                        unknown_bits ^= bit[op]
                    if not forced:
                        break
                    # A fitting get was forced on its configuration, so that
                    # configuration failed too: keep undoing.
                cursor = nxt[entry]
                continue

            op = entry_op[cursor]
            op_kind = kind[op]
            if op_kind == GET:
                # Every candidate get that fits was placed on arrival here.
                cursor = nxt[cursor]
                continue
            if op_kind == SET:
                new_state = arg[op]
            else:
                new_state = arg[op] if state is None else state + arg[op]
                want = expected[op]
                if want is not None and want != _byte_length(new_state):
                    cursor = nxt[cursor]
                    continue
            if known[op]:
                new_known, new_unknown = known_bits | bit[op], unknown_bits
            else:
                new_known, new_unknown = known_bits, unknown_bits | bit[op]
            run = (new_known ^ (new_known + 1)).bit_length() - 1
            config = (run, new_known >> run, new_unknown, new_state)
            if config in cache:
                cursor = nxt[cursor]
                continue
            cache.add(config)
            stack.append((cursor, state, False))
            lift(cursor)
            state, known_bits, unknown_bits = new_state, new_known, new_unknown
            if known[op]:
                known_left -= 1
                if known_left == 0:
                    self.steps = steps
                    return True
            fresh_config = True

    def _place_fitting_gets(self, stack, state, known_bits, unknown_bits, cache):
        """Linearize every candidate get whose result equals `state`.

        Why this is safe to do without branching: if any linearization exists
        from here, moving such a get to its front still is one.  Every op left
        has its return after this get's call (that is what being a candidate
        means), so no real-time order is broken; and a get changes nothing, so
        every other reply stays the same.  Hence if the search fails after
        the get, the configuration before it fails too (the frame is marked
        forced).  A fitting get whose configuration after it is already in
        the cache (so it was explored and failed: it cannot be an ancestor,
        which would lack this get) dooms the configuration it is found in.

        Returns (doomed, how many gets were placed, the known-ops bitset
        with them); every get here is known, unknown gets were dropped."""
        kind, expected, bit, entry_op = self.kind, self.expected, self.bit, self.entry_op
        is_call, nxt, prv = self.is_call, self.next, self.prev
        placed = 0
        entry = nxt[0]
        while is_call[entry]:
            op = entry_op[entry]
            if kind[op] == GET and expected[op] == state:
                with_get = known_bits | bit[op]
                run = (with_get ^ (with_get + 1)).bit_length() - 1
                config = (run, with_get >> run, unknown_bits, state)
                if config in cache:
                    return True, placed, known_bits
                cache.add(config)
                stack.append((entry, state, True))
                self._lift(entry)
                known_bits = with_get
                placed += 1
                entry = nxt[prv[entry]]        # the lifted entry's place, now filled
            else:
                entry = nxt[entry]
        return False, placed, known_bits

    def _remember_if_deepest(self, stack, state) -> None:
        """Keep the longest linearizable prefix for the explanation.  The
        stack is deepest just before a backtrack, so it is copied only there
        (never on the way to a success)."""
        if len(stack) > len(self.best_frames):
            self.best_frames = stack.copy()
            self.best_state = state

    # -- the explanation -----------------------------------------------------

    def explain(self, inconclusive: bool, budget: int) -> str:
        ops, key = self.ops, self.ops[0].key
        placed_ops = [self.entry_op[entry] for entry, _, _ in self.best_frames]
        placed = set(placed_ops)
        lines = []
        if inconclusive:
            lines.append(f"inconclusive: key {key!r}: the search budget of {budget} steps ran "
                         "out before a linearization was found or ruled out; the history may "
                         "or may not be linearizable (raise the budget or shorten the history).")
        else:
            lines.append(f"key {key!r} is not linearizable: no order of its {len(ops)} ops "
                         f"respects both real time and the model (searched {self.steps} steps).")
        lines.append(f"Longest linearizable prefix found: {len(placed_ops)} of {len(ops)} ops"
                     + (":" if placed_ops else "."))
        shown = 10
        if len(placed_ops) > shown:
            lines.append(f"  ... {len(placed_ops) - shown} earlier ops")
        lines += ["  " + self._describe(i) for i in placed_ops[-shown:]]
        lines.append(f"State after it: {self.best_state!r}")

        remaining = [i for i in range(len(ops)) if i not in placed]
        first_return = min((ops[i].ret for i in remaining if self.known[i]), default=None)
        if first_return is None:
            return "\n".join(lines)
        candidates = [i for i in remaining if ops[i].call <= first_return]
        if inconclusive:
            lines.append("The candidates to place next there (the search had not finished "
                         "with them):")
        else:
            lines.append("None of these could be placed next (the earliest-returning must "
                         f"take effect by t={first_return - self.t0:.6f}):")
        for i in candidates[:20]:
            lines.append(f"  {self._describe(i)}"
                         + ("" if inconclusive else f": {self._why_not(i)}"))
        if len(candidates) > 20:
            lines.append(f"  ... and {len(candidates) - 20} more")
        return "\n".join(lines)

    def _why_not(self, i: int) -> str:
        state, op = self.best_state, self.ops[i]
        if op.kind == GET and op.result != state:
            return f"would read {state!r}"
        if op.kind == APPEND and op.ret is not None:
            length = _byte_length((state or "") + op.arg)
            if length != op.result:
                return f"would return length {length}"
        if op.ret is None:
            return "outcome unknown (could also be left out); fits, but nothing after it fits"
        return "fits, but nothing after it fits"

    def _describe(self, i: int) -> str:
        op, t0 = self.ops[i], self.t0
        known = op.ret is not None
        if op.kind == GET:
            what = f"get -> {op.result!r}"
        elif op.kind == SET:
            what = f"set {op.arg!r}"
        else:
            what = f"append {op.arg!r} -> {op.result if known else '?'}"
        ret = f"{op.ret - t0:.6f}" if known else "unknown"
        return f"#{self.labels[i]} client {op.client} {what} [{op.call - t0:.6f} .. {ret}]"
