"""A linearizability checker for storg's per-path register (put / get / rm).

Why it exists: the fault tests record what concurrent clients saw while a
nemesis broke the cluster, and this module decides whether some order of
those operations, each taking effect at one instant between its invocation
and its completion, explains every answer.  That is the property
README.rst promises in "Guarantees" ("reads are linearizable", "an acknowledged put
survives"), checked as Jepsen's Knossos and Porcupine do.

The search is Wing & Gong's, with Lowe's memoisation: walk the history in
time order, try to linearize any pending operation whose call has been seen,
backtrack when an operation's return is reached before it could be
linearized, and never explore the same (set of linearized operations,
register state) twice.  Each path is a separate register and is checked on
its own (P-compositionality), which keeps every search small.

Operations with an unknown outcome (storgctl exit 3, a client timeout or a
killed client) may have taken effect at any instant after their invocation,
or never: they get an infinite return time, so they never force a
backtrack, and the search succeeds once every operation with a known
outcome is linearized.  An unknown read constrains nothing and is dropped;
an operation that failed for sure never happened and is dropped too.

Three reductions keep unknown writes from making the search exponential:

- A put whose value no read ever returned is indistinguishable, to every
  other operation, from any other such put: all of them write the same
  symbolic value :data:`UNSEEN`.
- Unknown operations with the same effect (all unknown rms; all unknown
  puts of :data:`UNSEEN`) are interchangeable, so they are linearized in
  invocation order only: if some valid order uses a subset of them, the
  same instants can be given to the earliest-invoked members of the class
  (the k-th earliest invoked is always invoked no later than the k-th
  instant used), so this loses no valid history and turns 2^k subsets into
  k+1 counts.
- Unknown operations are never required, so a configuration that consumed
  more of them than an already visited one, with the same known operations
  linearized and the same state, has a subset of its options: it is
  dominated and skipped (this also skips linearizing an unknown operation
  that would not change the register).
- Every unknown operation is a blind write (a put, or an rm that may have
  removed something or nothing), so one that is linearized just before
  another blind write (an unknown operation or a put) has no observable
  effect and might as well never have happened: after an unknown operation
  only an operation that reads the register (a get, an acknowledged rm) is
  tried.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

PUT = "put"
GET = "get"
RM = "rm"


class Outcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


class _Unseen:
    """The symbolic value of every put no read ever returned."""

    def __repr__(self) -> str:
        return "<unseen>"


UNSEEN = _Unseen()


@dataclass(frozen=True)
class Op:
    """One client operation on one path, as the client saw it.

    ``value``: for a put, the value written; for an ok get, the value read,
    ``None`` meaning "not found".  ``removed``: for an ok rm, whether it
    removed a file (``False``: it answered "not found").  ``ret`` is when the
    client got its answer (or gave up, for an unknown outcome).
    """

    kind: str
    key: str
    value: str | None
    call: float
    ret: float
    outcome: Outcome
    removed: bool = False
    process: int = 0

    def describe(self) -> str:
        if self.kind == PUT:
            what = f"put({self.value})"
        elif self.kind == GET:
            shown = "not-found" if self.value is None else self.value
            what = f"get -> {shown}" if self.outcome is Outcome.OK else "get"
        else:
            what = "rm -> " + ("removed" if self.removed else "not-found") \
                if self.outcome is Outcome.OK else "rm"
        return (f"p{self.process} {what} [{self.outcome.value}] "
                f"{self.call:.3f}..{self.ret:.3f}")


@dataclass
class KeyResult:
    key: str
    ok: bool
    ops: int
    """Operations that took part in the search (failed ops and unknown reads excluded)."""
    explored: int
    """Distinct (linearized set, state) configurations visited."""
    problem: str = ""


@dataclass
class CheckResult:
    keys: dict[str, KeyResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.keys.values())

    @property
    def ops(self) -> int:
        return sum(r.ops for r in self.keys.values())

    def problems(self) -> str:
        return "\n\n".join(r.problem for r in self.keys.values() if not r.ok)


def check_history(ops: Iterable[Op], initial: object = None) -> CheckResult:
    """Check every path's history separately; the register of each starts at ``initial``."""
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    result = CheckResult()
    for key in sorted(by_key):
        result.keys[key] = check_key(by_key[key], initial)
    return result


class _Entry:
    """A node of the doubly linked event list (call or return of one operation)."""

    __slots__ = ("is_call", "match", "next", "op", "prev")

    prev: _Entry
    """Set when the entry is linked into the list; only the head's never is, and nothing reads it."""

    def __init__(self, op: int, is_call: bool) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Entry | None = None  # a call's return entry (None: unknown outcome)
        self.next: _Entry | None = None


def _relevant(ops: Iterable[Op]) -> list[Op]:
    """Drop what cannot constrain anything: failed operations and unknown reads."""
    kept = []
    for op in ops:
        if op.kind not in (PUT, GET, RM):
            raise ValueError(f"unknown operation kind {op.kind!r}")
        if op.outcome is Outcome.FAILED:
            continue
        if op.kind == GET and op.outcome is not Outcome.OK:
            continue
        kept.append(op)
    return kept


MAX_CONFIGURATIONS = 3_000_000
"""A search that visits more configurations than this gives up and reports the
history as not shown linearizable (a human looks), rather than running for hours."""


def check_key(ops: Iterable[Op], initial: object = None,
              max_configurations: int = MAX_CONFIGURATIONS) -> KeyResult:
    """Is this single register's history linearizable?  (Wing-Gong-Lowe search.)"""
    history = _relevant(ops)
    key = history[0].key if history else ""
    n = len(history)
    seen_values = {op.value for op in history if op.kind == GET and op.value is not None}

    # Per operation: how it changes the register.  A put of a value nobody
    # read writes UNSEEN (see the module docstring).
    written: list[object] = [
        (op.value if op.value in seen_values else UNSEEN) if op.kind == PUT else None
        for op in history]
    unknown = [op.outcome is Outcome.UNKNOWN for op in history]
    # Operations whose effect does not depend on the register (unknown ones are all blind).
    blind = [unknown[i] or op.kind == PUT for i, op in enumerate(history)]

    # Interchangeable unknown operations: each may only be linearized after
    # the previous member of its class (in invocation order).
    before = [-1] * n
    last_of_class: dict[str, int] = {}
    for i in sorted(range(n), key=lambda i: history[i].call):
        if not unknown[i]:
            continue
        cls = RM if history[i].kind == RM else (PUT if written[i] is UNSEEN else None)
        if cls is None:
            continue
        before[i] = last_of_class.get(cls, -1)
        last_of_class[cls] = i

    # The event list: calls before returns at equal times (the more permissive reading).
    events: list[tuple[float, int, _Entry]] = []
    for i, op in enumerate(history):
        call = _Entry(i, True)
        events.append((op.call, 0, call))
        if not unknown[i]:
            ret = _Entry(i, False)
            call.match = ret
            events.append((op.ret, 1, ret))
    events.sort(key=lambda e: (e[0], e[1], e[2].op))
    head = _Entry(-1, False)
    tail = head
    for _, _, entry in events:
        tail.next = entry
        entry.prev = tail
        tail = entry

    def step(i: int, state: object) -> tuple[bool, object]:
        op = history[i]
        if op.kind == PUT:
            return True, written[i]
        if op.kind == GET:
            return state == op.value, state
        if unknown[i]:
            return True, None
        if op.removed:
            return state is not None, None
        return state is None, None

    def lift(entry: _Entry) -> None:
        entry.prev.next = entry.next
        if entry.next is not None:
            entry.next.prev = entry.prev
        ret = entry.match
        if ret is not None:
            ret.prev.next = ret.next
            if ret.next is not None:
                ret.next.prev = ret.prev

    def unlift(entry: _Entry) -> None:
        ret = entry.match
        if ret is not None:
            ret.prev.next = ret
            if ret.next is not None:
                ret.next.prev = ret
        entry.prev.next = entry
        if entry.next is not None:
            entry.next.prev = entry

    def candidates() -> tuple[list[_Entry], int]:
        """Calls that may be linearized next (those before the first pending return),
        known outcomes first: unknown operations are tried only when those fail;
        and the operation whose return bounds them (-1: none)."""
        known: list[_Entry] = []
        unknowns: list[_Entry] = []
        e = head.next
        while e is not None and e.is_call:
            (unknowns if unknown[e.op] else known).append(e)
            e = e.next
        return known + unknowns, (e.op if e is not None else -1)

    remaining = sum(1 for u in unknown if not u)
    linearized = 0
    state = initial
    # Visited configurations: (known operations linearized, state, whether the last
    # one was unknown) -> the sets of unknown operations consumed on the way.  One
    # that consumed a superset of unknowns of a visited one is dominated (fewer
    # options left, and unknowns are never required) and is not explored.
    seen: dict[tuple[int, object, bool], list[int]] = {(0, initial, False): [0]}
    explored = 1
    known_mask = 0
    unknown_mask = 0
    after_unknown = False  # the last operation linearized had an unknown outcome
    # Depth-first search; a frame is (candidate calls, next one to try, blocking op);
    # undo holds what each linearization changed.
    frames: list[list] = [[*candidates(), 0]]
    undo: list[tuple[_Entry, object, bool]] = []
    deepest = (-1, -1, initial)  # (known ops linearized, op blocked at its return, state then)
    while remaining:
        frame = frames[-1]
        cands, blocker, tried = frame
        advanced = False
        while tried < len(cands):
            entry = cands[tried]
            tried += 1
            i = entry.op
            prior = before[i]
            if prior >= 0 and not linearized >> prior & 1:
                continue
            if after_unknown and blind[i]:
                continue
            legal, new_state = step(i, state)
            if not legal:
                continue
            bit = 1 << i
            new_known = known_mask if unknown[i] else known_mask | bit
            new_unknown = unknown_mask | bit if unknown[i] else unknown_mask
            visited = seen.setdefault((new_known, new_state, unknown[i]), [])
            if any(u & ~new_unknown == 0 for u in visited):
                continue
            # Keep only the undominated sets: the new one dominates its supersets.
            visited[:] = [u for u in visited if new_unknown & ~u != 0]
            visited.append(new_unknown)
            explored += 1
            if explored > max_configurations:
                return KeyResult(key, False, n, explored,
                                 f"key {key}: undecided, the search gave up after "
                                 f"{max_configurations} configurations")
            undo.append((entry, state, after_unknown))
            linearized |= bit
            known_mask, unknown_mask, state = new_known, new_unknown, new_state
            after_unknown = unknown[i]
            lift(entry)
            if not unknown[i]:
                remaining -= 1
            advanced = True
            break
        frame[2] = tried
        if advanced:
            frames.append([*candidates(), 0])
            continue
        # Dead end: nothing can be linearized before ``blocker`` returns.  Backtrack.
        done_known = known_mask.bit_count()
        if blocker >= 0 and done_known > deepest[0]:
            deepest = (done_known, blocker, state)
        frames.pop()
        if not undo:
            return KeyResult(key, False, n, explored, _explain(history, deepest))
        entry, state, after_unknown = undo.pop()
        j = entry.op
        bit = 1 << j
        linearized &= ~bit
        known_mask &= ~bit
        unknown_mask &= ~bit
        unlift(entry)
        if not unknown[j]:
            remaining += 1
    return KeyResult(key, True, n, explored)


def _explain(history: list[Op], deepest: tuple[int, int, object]) -> str:
    """A short account of where the search got stuck: the blocked operation and its neighbours."""
    done, i, state = deepest
    op = history[i]
    shown = "not-found" if state is None else state
    headline = (f"key {op.key}: not linearizable; at best {done} operations with known "
                f"outcomes were linearized, then {op.describe()} could not take effect "
                f"(register then held {shown}). Operations overlapping it or just before:")
    lines = [headline]
    window_start = op.call - 5.0
    near = [o for o in history if o.ret >= window_start and o.call <= op.ret]
    near.sort(key=lambda o: o.call)
    lines += ["  " + o.describe() for o in near[-40:]]
    return "\n".join(lines)

