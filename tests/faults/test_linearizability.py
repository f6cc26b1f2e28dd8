"""The checker itself: known-bad histories are caught, valid ones (also with unknown outcomes) pass."""

from __future__ import annotations

import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from storg.testing.linearizability import (
    GET,
    PUT,
    RM,
    Op,
    Outcome,
    check_history,
    check_key,
)

OK, FAILED, UNKNOWN = Outcome.OK, Outcome.FAILED, Outcome.UNKNOWN


def put(v, call, ret, outcome=OK, p=0, key="/k"):
    return Op(PUT, key, v, call, ret, outcome, process=p)


def get(v, call, ret, outcome=OK, p=0, key="/k"):
    return Op(GET, key, v, call, ret, outcome, process=p)


def rm(removed, call, ret, outcome=OK, p=0, key="/k"):
    return Op(RM, key, None, call, ret, outcome, removed=removed, process=p)


def valid(*ops):
    return check_key(list(ops)).ok


# -- known-bad histories ------------------------------------------------------------


def test_sequential_history_is_valid():
    assert valid(get(None, 0, 1), put("a", 2, 3), get("a", 4, 5), rm(True, 6, 7),
                 get(None, 8, 9), rm(False, 10, 11))


def test_stale_read_is_caught():
    assert not valid(put("a", 0, 1), put("b", 2, 3), get("a", 4, 5))


def test_lost_write_is_caught():
    # An acknowledged put that a later read does not see.
    assert not valid(put("a", 0, 1), get(None, 2, 3))
    assert not valid(put("a", 0, 1), put("b", 2, 3, p=1), get("a", 4, 5, p=2))


def test_overwritten_value_coming_back_is_caught():
    assert not valid(put("a", 0, 1), put("b", 2, 3), get("b", 4, 5), get("a", 6, 7))


def test_removed_value_coming_back_is_caught():
    assert not valid(put("a", 0, 1), rm(True, 2, 3), get("a", 4, 5))


def test_read_of_a_value_never_written_is_caught():
    assert not valid(put("a", 0, 1), get("zzz", 2, 3))


def test_rm_answers_must_match_the_register():
    assert not valid(put("a", 0, 1), rm(False, 2, 3))          # "not found" after an acked put
    assert not valid(rm(True, 0, 1))                           # removed what never existed
    assert not valid(put("a", 0, 1), rm(True, 2, 3), rm(True, 4, 5))


def test_failed_operations_never_happened():
    assert not valid(put("a", 0, 1, FAILED), get("a", 2, 3))
    assert valid(put("a", 0, 1), rm(True, 2, 3, FAILED), get("a", 4, 5))
    assert valid(put("a", 0, 1), put("b", 2, 3, FAILED), get("a", 4, 5))


# -- unknown outcomes -------------------------------------------------------------


def test_unknown_write_that_took_effect_is_valid():
    assert valid(put("a", 0, 1), put("b", 2, 3, UNKNOWN), get("b", 10, 11), get("b", 12, 13))


def test_unknown_write_taking_effect_long_after_the_client_gave_up_is_valid():
    assert valid(put("a", 0, 1), put("b", 2, 3, UNKNOWN), get("a", 5, 6), get("b", 7, 8))


def test_unknown_write_that_never_took_effect_is_valid():
    assert valid(put("a", 0, 1), put("b", 2, 3, UNKNOWN), get("a", 10, 11), get("a", 12, 13))


def test_unknown_write_cannot_take_effect_before_its_invocation():
    assert not valid(get("b", 0, 1), put("b", 2, 3, UNKNOWN))


def test_unknown_write_takes_effect_at_most_once():
    assert not valid(put("a", 0, 1), put("b", 2, 3, UNKNOWN), get("b", 4, 5), put("c", 6, 7),
                     get("c", 8, 9), get("b", 10, 11))


def test_unknown_writes_in_bulk_stay_cheap():
    # 40 unknown puts nobody read and 20 unknown rms: 2^60 subsets without the class reduction.
    ops = [put("a", 0, 1)]
    t = 2.0
    for i in range(40):
        ops.append(put(f"u{i}", t, t + 0.5, UNKNOWN, p=i % 4))
        t += 1
    for _ in range(20):
        ops.append(rm(True, t, t + 0.5, UNKNOWN))
        t += 1
    ops += [put("z", t, t + 1), get("z", t + 2, t + 3)]
    start = time.monotonic()
    assert valid(*ops)
    # A read that contradicts everything still fails, and fast.
    ops.append(get("a", t + 4, t + 5))
    assert not valid(*ops)
    assert time.monotonic() - start < 1.0


def test_unknown_rm_can_explain_a_not_found_read():
    assert valid(put("a", 0, 1), rm(False, 2, 3, UNKNOWN), get(None, 4, 5))
    assert not valid(put("a", 0, 1), rm(False, 2, 3, FAILED), get(None, 4, 5))


def test_unknown_read_constrains_nothing():
    assert valid(put("a", 0, 1), get("nonsense", 2, 3, UNKNOWN), get("a", 4, 5))


def test_unseen_unknown_write_can_explain_a_later_successful_rm():
    assert valid(put("a", 0, 1), rm(True, 2, 3), put("b", 4, 5, UNKNOWN), rm(True, 6, 7))
    assert not valid(put("a", 0, 1), rm(True, 2, 3), put("b", 4, 5, FAILED), rm(True, 6, 7))


# -- concurrency ------------------------------------------------------------------


def test_concurrent_read_may_see_a_write_before_its_ack():
    assert valid(put("a", 0, 10), get("a", 1, 2, p=1), get("a", 3, 4, p=2))
    assert valid(put("a", 0, 10), get(None, 1, 2, p=1), get("a", 3, 4, p=2))


def test_concurrent_reads_must_agree_on_one_order():
    assert valid(put("a", 0, 10, p=0), put("b", 0, 10, p=1), get("a", 1, 2, p=2), get("b", 3, 4, p=2))
    # Once b was seen after a, a cannot come back.
    assert not valid(put("a", 0, 10, p=0), put("b", 0, 10, p=1), get("a", 1, 2, p=2),
                     get("b", 3, 4, p=2), get("a", 5, 6, p=3))
    # Two readers in sequence may not see the writes in opposite orders.
    assert not valid(put("a", 0, 10, p=0), put("b", 0, 10, p=1),
                     get("a", 1, 2, p=2), get("b", 3, 4, p=2),
                     get("b", 5, 6, p=3), get("a", 7, 8, p=3))


def test_keys_are_checked_separately_and_reported():
    ops = [put("a", 0, 1, key="/x"), get("a", 2, 3, key="/x"),
           put("b", 0, 1, key="/y"), get(None, 2, 3, key="/y")]
    result = check_history(ops)
    assert not result.ok
    assert result.keys["/x"].ok and not result.keys["/y"].ok
    assert result.ops == 4
    assert "/y" in result.problems() and "get -> not-found" in result.problems()


# -- random valid histories -----------------------------------------------------------


def simulate(rng: random.Random, n_ops: int, processes: int, unknown_rate: float) -> list[Op]:
    """A history produced by a real linearizable register: each op takes effect at a random
    instant inside its interval; unknown ops take effect late, or never."""
    clock = [0.0] * processes
    planned = []
    for i in range(n_ops):
        p = rng.randrange(processes)
        call = clock[p] + rng.random()
        ret = call + rng.random() * 3
        clock[p] = ret
        kind = rng.choice([PUT, PUT, GET, GET, RM])
        outcome = UNKNOWN if rng.random() < unknown_rate else OK
        if outcome is UNKNOWN:
            point = None if rng.random() < 0.5 else call + rng.random() * 6
        else:
            point = rng.uniform(call, ret)
        planned.append((point, i, p, kind, call, ret, outcome))
    state = None
    ops = []
    for point, i, p, kind, call, ret, outcome in sorted(planned, key=lambda x: (x[0] is None, x[0] or 0)):
        if kind == PUT:
            ops.append(put(f"v{i}", call, ret, outcome, p))
            if point is not None:
                state = f"v{i}"
        elif kind == GET:
            ops.append(get(state if point is not None else "?", call, ret, outcome, p))
        else:
            ops.append(rm(state is not None, call, ret, outcome, p))
            if point is not None:
                state = None
    return ops


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60), st.integers(1, 5), st.sampled_from([0.0, 0.1, 0.3]))
def test_histories_of_a_real_register_are_accepted(seed, n_ops, processes, unknown_rate):
    ops = simulate(random.Random(seed), n_ops, processes, unknown_rate)
    result = check_key(ops)
    assert result.ok, result.problem


def test_a_few_hundred_ops_per_key_check_well_under_a_second():
    rng = random.Random(8)
    ops = []
    for k in range(3):
        ops += [Op(o.kind, f"/k{k}", o.value, o.call, o.ret, o.outcome, o.removed, o.process)
                for o in simulate(rng, 400, 5, 0.1)]
    start = time.monotonic()
    result = check_history(ops)
    elapsed = time.monotonic() - start
    assert result.ok, result.problems()
    assert result.ops > 1000
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    # A stale read appended at the end is found.  Refuting takes longer than accepting
    # (every linearization of the prefix is tried); the bound leaves room for a busy machine.
    last = max(o.ret for o in ops)
    ops += [put("fresh", last + 1, last + 2, key="/k0"), get("stale", last + 3, last + 4, key="/k0")]
    start = time.monotonic()
    assert not check_history(ops).ok
    assert time.monotonic() - start < 5.0


def test_a_search_over_budget_is_reported_not_passed():
    ops = simulate(random.Random(3), 200, 5, 0.3)
    result = check_key(ops, max_configurations=5)
    assert not result.ok and "undecided" in result.problem
