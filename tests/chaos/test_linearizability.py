"""The linearizability checker: hand-made histories with a known verdict,
generated histories that are linearizable by construction, and small random
histories checked against a brute force over every order of their ops."""
import functools
import random

import pytest
from hypothesis import given, settings, strategies as st

from tests.support.linearizability import Op, append_anomalies, check_history, check_key


def op(client, kind, arg, call, ret, result=None, key="k"):
    return Op(client=client, key=key, kind=kind, arg=arg, call=call, ret=ret, result=result)


def get(client, call, ret, result, key="k"):
    return op(client, "get", None, call, ret, result, key)


def set_(client, value, call, ret, key="k"):
    return op(client, "set", value, call, ret, None, key)


def append(client, value, call, ret, length, key="k"):
    return op(client, "append", value, call, ret, length, key)


# -- hand-made histories -------------------------------------------------------

def test_empty_history_is_linearizable():
    assert check_key([]).ok
    assert check_history([]).ok


def test_sequential_sets_and_gets():
    history = [get(1, 0, 1, None), set_(1, "a", 2, 3), get(2, 4, 5, "a"),
               set_(2, "b", 6, 7), get(1, 8, 9, "b")]
    result = check_key(history)
    assert result.ok and result.ops_checked == 5 and result.key is None


def test_sequential_appends_return_new_lengths():
    history = [append(1, "x;", 0, 1, 2), append(2, "yz;", 2, 3, 5), get(1, 4, 5, "x;yz;"),
               set_(1, "", 6, 7), append(2, "q", 8, 9, 1), get(2, 10, 11, "q")]
    assert check_key(history).ok


def test_append_with_a_wrong_length_is_not_linearizable():
    assert not check_key([append(1, "x;", 0, 1, 2), append(2, "y;", 2, 3, 2)]).ok


@pytest.mark.parametrize("last", ["a", "b"])
def test_concurrent_writes_read_back_in_either_order(last):
    history = [set_(1, "a", 0, 10), set_(2, "b", 1, 9),
               get(3, 11, 12, last), get(1, 13, 14, last)]
    assert check_key(history).ok


def test_concurrent_read_may_see_old_or_new_value():
    for seen in (None, "a"):
        assert check_key([set_(1, "a", 0, 10), get(2, 2, 3, seen)]).ok


def test_reads_cannot_flip_back_between_concurrent_writes():
    # Once a read after both writes saw "b", "a" is gone for good.
    history = [set_(1, "a", 0, 10), set_(2, "b", 1, 9),
               get(3, 11, 12, "b"), get(3, 13, 14, "a")]
    assert not check_key(history).ok


def test_stale_read_after_a_completed_write_is_not_linearizable():
    history = [set_(1, "a", 0, 1), set_(1, "b", 2, 3), get(2, 4, 5, "a")]
    result = check_key(history)
    assert not result.ok and result.key == "k"
    assert "#2 client 2 get -> 'a'" in result.explanation
    assert "would read 'b'" in result.explanation
    assert "inconclusive" not in result.explanation


def test_read_of_a_value_never_written_is_not_linearizable():
    assert not check_key([set_(1, "a", 0, 1), get(2, 0.5, 2, "zz")]).ok


def test_read_that_sees_a_write_before_it_was_called_is_not_linearizable():
    assert not check_key([get(1, 0, 1, "a"), set_(2, "a", 2, 3)]).ok


def test_a_write_returning_when_a_read_is_called_counts_as_concurrent():
    # Equal timestamps cannot order two events: the read may precede the write.
    assert check_key([set_(1, "a", 0, 5), get(2, 5, 6, None)]).ok
    assert not check_key([set_(1, "a", 0, 5), get(2, 5.001, 6, None)]).ok


def test_lost_append_is_not_linearizable():
    history = [append(1, "c1-0;", 0, 2, 5), append(2, "c2-0;", 1, 3, 10),
               get(3, 4, 5, "c2-0;")]
    assert not check_key(history).ok


def test_unknown_write_that_a_later_read_sees_is_linearizable():
    history = [set_(1, "a", 0, 1), set_(2, "b", 2, None), get(3, 10, 11, "b")]
    assert check_key(history).ok


def test_unknown_write_never_seen_is_linearizable():
    history = [set_(1, "a", 0, 1), set_(2, "b", 2, None), get(3, 10, 11, "a"),
               get(3, 12, 13, "a")]
    assert check_key(history).ok


def test_unknown_append_may_take_effect_with_any_length_reply():
    # An unknown op's result is ignored: the caller may put anything there.
    history = [append(1, "x;", 0, None, 999), append(2, "y;", 5, 6, 4), get(3, 7, 8, "x;y;")]
    assert check_key(history).ok


def test_unknown_write_seen_then_unseen_is_not_linearizable():
    history = [set_(1, "a", 0, 1), set_(2, "b", 2, None),
               get(3, 10, 11, "b"), get(3, 12, 13, "a")]
    assert not check_key(history).ok


def test_unknown_get_is_ignored():
    assert check_key([set_(1, "a", 0, 1), get(2, 2, None, "never written")]).ok


def test_history_of_only_unknown_ops_is_linearizable():
    assert check_key([set_(1, "a", 0, None), append(2, "b", 1, None, None)]).ok


def test_check_history_names_the_bad_key():
    good = [set_(1, "a", 0, 1, key="k1"), get(2, 2, 3, "a", key="k1")]
    bad = [set_(1, "a", 0, 1, key="k2"), set_(1, "b", 2, 3, key="k2"), get(2, 4, 5, "a", key="k2")]
    also_good = [append(3, "z", 0, 1, 1, key="k3"), get(3, 2, 3, "z", key="k3")]
    interleaved = [good[0], bad[0], also_good[0], bad[1], good[1], also_good[1], bad[2]]
    result = check_history(interleaved)
    assert not result.ok and result.key == "k2"
    # Labels are positions in the whole history, not in the key's ops.
    assert "#6 client 2 get -> 'a'" in result.explanation
    assert check_history(good + also_good).ok
    assert check_history(good + also_good).ops_checked == 4


def test_keys_are_independent():
    # Each key alone is fine; a checker mixing keys would see "a" overwritten.
    history = [set_(1, "a", 0, 1, key="x"), set_(2, "b", 2, 3, key="y"), get(1, 4, 5, "a", key="x")]
    assert check_history(history).ok


def test_budget_exhaustion_is_inconclusive_never_success():
    history = [set_(c, str(c), 0, 10) for c in range(6)] + [get(9, 11, 12, "none of them")]
    result = check_key(history, budget=50)
    assert not result.ok and result.key == "k"
    assert result.explanation.startswith("inconclusive")
    proved = check_key(history)
    assert not proved.ok and "inconclusive" not in proved.explanation
    # A linearizable history also needs enough budget to prove it.
    ok_history = [set_(1, "a", 0, 1), get(2, 2, 3, "a")]
    assert "inconclusive" in check_key(ok_history, budget=1).explanation
    assert check_key(ok_history, budget=100).ok


def test_check_history_prefers_a_definite_violation_to_an_inconclusive_key():
    slow = [set_(c, str(c), 0, 10, key="a") for c in range(6)] + [get(9, 11, 12, "?", key="a")]
    bad = [set_(1, "x", 0, 1, key="b"), get(2, 2, 3, None, key="b")]
    result = check_history(slow + bad, budget_per_key=50)
    assert result.key == "b" and "inconclusive" not in result.explanation
    result = check_history(slow, budget_per_key=50)
    assert result.key == "a" and "inconclusive" in result.explanation


def test_invalid_histories_are_refused():
    with pytest.raises(ValueError, match="one key"):
        check_key([set_(1, "a", 0, 1, key="x"), set_(1, "a", 0, 1, key="y")])
    with pytest.raises(ValueError, match="kind"):
        check_key([op(1, "del", None, 0, 1)])
    with pytest.raises(ValueError, match="before it is called"):
        check_key([set_(1, "a", 2, 1)])


# -- append_anomalies ------------------------------------------------------------

def test_append_anomalies_clean_run():
    ops = [append(1, "c1-0;", 0, 1, 5), append(2, "c2-0;", 0, 2, 10),
           append(1, "c1-1;", 2, None, None), get(3, 3, 4, "c1-0;c2-0;")]
    report = append_anomalies("c1-0;c2-0;", ops)
    assert report == {"lost": [], "duplicated": [], "unknown_applied": 0, "unexpected": []}
    report = append_anomalies("c1-0;c2-0;c1-1;", ops)
    assert report["unknown_applied"] == 1 and report["lost"] == []


def test_append_anomalies_finds_lost_duplicated_and_unexpected_tokens():
    ops = [append(1, "c1-0;", 0, 1, 5), append(2, "c2-0;", 0, 2, 10),
           append(3, "c3-0;", 0, 3, 15), append(1, "c1-1;", 2, None, None)]
    report = append_anomalies("c1-0;c3-0;c9-9;c1-0;c1-1;", ops)
    assert report == {"lost": ["c2-0"], "duplicated": ["c1-0"], "unknown_applied": 1,
                      "unexpected": ["c9-9"]}


def test_append_anomalies_of_a_missing_key_and_other_separators():
    ops = [append(1, "t1|", 0, 1, 3), append(2, "t2|", 0, None, None)]
    assert append_anomalies(None, ops, sep="|")["lost"] == ["t1"]
    assert append_anomalies("t2|t1|", ops, sep="|")["unknown_applied"] == 1


def test_append_anomalies_takes_one_key():
    with pytest.raises(ValueError):
        append_anomalies("", [append(1, "a;", 0, 1, 2, key="x"), append(1, "b;", 0, 1, 2, key="y")])


# -- generated histories -----------------------------------------------------------

def model_step(state, kind, arg):
    """The register every key is: (new state, reply)."""
    if kind == "get":
        return state, state
    if kind == "set":
        return arg, None
    new = (state or "") + arg
    return new, len(new.encode())


class Choices:
    """Reads small choices out of one drawn integer.  One draw per op keeps
    hypothesis fast (it spends far more time drawing than the checker spends
    checking), and a code of 0 reads as the simplest op, so shrinking still
    simplifies ops."""

    def __init__(self, code):
        self.code = code

    def pick(self, n):
        self.code, choice = divmod(self.code, n)
        return choice


op_codes = st.integers(0, 2**40)


def sequential_execution(codes, keys=("k",), time_step=10):
    """A sequential run of the model, op i taking effect at time
    i * time_step, then an interval around each point, some outcomes unknown
    (those took effect at their point or never).  Linearizable by
    construction."""
    state = {}
    history = []
    for i, code in enumerate(codes):
        choose = Choices(code)
        kind = ["get", "set", "append"][choose.pick(3)]
        arg = None if kind == "get" else ["a", "b", "xy", ""][choose.pick(4)]
        key = keys[choose.pick(len(keys))]
        point = i * time_step
        call = point - choose.pick(3 * time_step + 1)
        ret = point + choose.pick(3 * time_step + 1)
        fate = choose.pick(10)              # 0..7 known, 8 unknown and applied, 9 never applied
        if fate == 9:
            history.append(op(i % 8, kind, arg, call, None, None, key))
            continue
        state[key], reply = model_step(state.get(key), kind, arg)
        history.append(op(i % 8, kind, arg, call, None if fate == 8 else ret, reply, key))
    return history


@settings(max_examples=120, deadline=None)
@given(st.lists(op_codes, min_size=20, max_size=60))
def test_generated_sequential_executions_are_linearizable(codes):
    # Few distinct values and ~6 overlapping ops make different orders reach
    # the same (ops, state) configuration, which exercises the cache and the
    # forced gets; a bug there once needed about this much history to show.
    history = sequential_execution(codes, time_step=4)
    result = check_key(history)
    assert result.ok, result.explanation


def test_seeded_sequential_executions_are_linearizable():
    """The same property over uniformly random codes.  Hypothesis favours
    small integers, which decode to alike ops; this sweep is deterministic
    and reliably reaches the deeper cache hits."""
    rng = random.Random(20240601)
    for _ in range(600):
        codes = [rng.randrange(2**40) for _ in range(rng.randint(20, 60))]
        history = sequential_execution(codes, time_step=rng.choice([2, 4, 10]))
        result = check_key(history)
        assert result.ok, (history, result.explanation)


@settings(max_examples=60, deadline=None)
@given(st.lists(op_codes, max_size=60))
def test_generated_multi_key_executions_are_linearizable(codes):
    history = sequential_execution(codes, keys=("x", "y", "z"))
    result = check_history(history)
    assert result.ok, result.explanation
    assert result.ops_checked == len(history)


def brute_force_linearizable(history):
    """The definition, checked directly: try every order of the ops in which
    every op with a known outcome appears and unknown ones may be left out.
    An order is built one op at a time and a prefix is abandoned as soon as
    it gives a wrong reply or breaks real time (an op that returned before
    this one was called must already be placed), which only skips orders
    that would fail anyway.  Memoizing on (ops placed, state) changes no
    answer and lets the same function check histories twice as long."""
    must_precede = [frozenset(j for j, other in enumerate(history)
                              if other.ret is not None and other.ret < o.call)
                    for o in history]
    known = frozenset(i for i, o in enumerate(history) if o.ret is not None)

    @functools.lru_cache(maxsize=None)
    def extends(placed, state):
        if known <= placed:
            return True
        for i, candidate in enumerate(history):
            if i in placed or not must_precede[i] <= placed:
                continue
            new_state, reply = model_step(state, candidate.kind, candidate.arg)
            if candidate.ret is not None and candidate.kind != "set" and reply != candidate.result:
                continue
            if extends(placed | {i}, new_state):
                return True
        return False

    return extends(frozenset(), None)


def spoiled_history(codes):
    """A sequential run on small integer times (so ties are common), then
    perhaps spoiled: a reply replaced by a random one, or an interval moved
    off its op's point.  The high part of each code chooses the damage."""
    history = sequential_execution([code % 2**24 for code in codes], time_step=2)
    spoiled = []
    for o, code in zip(history, codes):
        choose = Choices(code >> 24)
        damage = choose.pick(5)
        if damage == 1 and o.kind == "get":
            o = op(o.client, "get", None, o.call, o.ret,
                   [None, "", "a", "b", "xy", "axy", "bxy"][choose.pick(7)])
        elif damage == 1 and o.kind == "append":
            o = op(o.client, "append", o.arg, o.call, o.ret, choose.pick(7))
        elif damage == 2:
            call = choose.pick(27) - 6
            ret = None if o.ret is None else call + choose.pick(7)
            o = op(o.client, o.kind, o.arg, call, ret, o.result)
        spoiled.append(o)
    return spoiled


@settings(max_examples=200, deadline=None)
@given(st.lists(op_codes, max_size=7))
def test_small_histories_agree_with_brute_force(codes):
    history = spoiled_history(codes)
    result = check_key(history)
    assert result.ok == brute_force_linearizable(history), result.explanation
    assert "inconclusive" not in result.explanation


@settings(max_examples=120, deadline=None)
@given(st.lists(op_codes, min_size=8, max_size=14))
def test_medium_histories_agree_with_the_memoized_brute_force(codes):
    history = spoiled_history(codes)
    result = check_key(history)
    assert result.ok == brute_force_linearizable(history), result.explanation


# -- a realistic size ------------------------------------------------------------------

def client_history(seed, n_ops, clients=8, unknown_every=40, key="k"):
    """What the chaos harness records: `clients` closed-loop clients, each
    op taking effect at a random instant inside its own interval."""
    rng = random.Random(seed)
    clock = [rng.random() for _ in range(clients)]
    pending = []
    for i in range(n_ops):
        client = i % clients
        call = clock[client]
        ret = call + rng.expovariate(1.0)
        clock[client] = ret + rng.expovariate(5.0)
        kind = rng.choice(["get", "get", "set", "append"])
        arg = None if kind == "get" else f"c{client}-{i};"
        pending.append((rng.uniform(call, ret), client, kind, arg, call, ret))
    state, history = None, []
    for point, client, kind, arg, call, ret in sorted(pending):
        unknown = rng.randrange(unknown_every) == 0
        if unknown and kind != "get" and rng.random() < 0.5:
            history.append(op(client, kind, arg, call, None, None, key))
            continue
        state, reply = model_step(state, kind, arg)
        history.append(op(client, kind, arg, call, None if unknown else ret, reply, key))
    return history


def test_a_thousand_op_eight_client_history_is_linearizable():
    history = client_history(seed=1, n_ops=1000)
    result = check_key(history)
    assert result.ok, result.explanation


def test_one_stale_read_in_a_thousand_ops_is_found():
    history = client_history(seed=2, n_ops=1000, unknown_every=10**9)
    # Turn a late read into a read of the value before the last completed write.
    values = [o.arg for o in history if o.kind == "set"]
    last = max((i for i, o in enumerate(history) if o.kind == "get"))
    history[last] = op(history[last].client, "get", None, history[last].call + 100,
                       history[last].call + 101, values[0])
    result = check_key(history)
    assert not result.ok and "inconclusive" not in result.explanation
    assert f"#{last} client" in result.explanation
