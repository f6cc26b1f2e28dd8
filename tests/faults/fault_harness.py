"""The fault tests' moving parts: client workers, the nemesis, and the checks after healing.

Workers run the real ``storgctl`` in subprocesses, as an operator's
scripts would, and record for every operation when it was invoked, when it
returned, and what it returned: ok, failed for sure, or unknown (exit 3, a
client timeout: the operation may or may not have happened).  The nemesis
breaks the cluster (kill -9, SIGSTOP, partitions through
:class:`storg.testing.devcluster.LinkFirewall`) and counts what it did.  After a
scenario, :func:`verify` heals everything and checks the guarantees of
README.rst, section "Guarantees": same applied index and namespace on every node, every
acknowledged put that nothing could have replaced is readable, and the
whole history is linearizable (:mod:`storg.testing.linearizability`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import re
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from storg.testing.devcluster import LinkFirewall, ProcCluster, wait_for
from storg.testing.linearizability import GET, PUT, RM, Op, Outcome, check_history
from storg.testing.storgctl_server import StorgctlRunner

SUMMARY: list[dict] = []
"""One row per finished scenario; the conftest prints them at the end of the run."""

CHUNK = 64 * 1024


def content_of(value: str) -> bytes:
    """The bytes stored for a value: its name on the first line, then bytes derived from it.

    A reader can tell which put it sees and whether every byte is right.
    Most values are small; one in four spans one to three chunks, so that
    chunk traffic and multi-chunk atomicity are exercised too.
    """
    seed = hashlib.sha256(value.encode()).digest()
    if seed[0] < 64:
        size = CHUNK // 2 + int.from_bytes(seed[1:4], "big") % (2 * CHUNK)
    else:
        size = int.from_bytes(seed[1:3], "big") % 2048
    return value.encode() + b"\n" + hashlib.shake_256(seed).digest(size)


def value_of(data: bytes) -> tuple[str, bool]:
    """(the value a read returned, whether its content is intact)."""
    name = data.split(b"\n", 1)[0].decode(errors="replace")
    return name, content_of(name) == data


@dataclass
class Anomaly:
    """Something no fault excuses: a corrupt read, a crash of storgctl, an integrity error."""

    what: str
    detail: str


class Workload:
    """Threads that run concurrent put/get/rm on a few keys with unique values."""

    def __init__(self, cluster: ProcCluster, keys: list[str], *, workers: int = 3, seed: int = 0,
                 client_timeout: float = 5.0, mix: tuple[float, float, float] = (0.5, 0.35, 0.15),
                 pinned: dict[int, list[str]] | None = None) -> None:
        self.cluster = cluster
        self.keys = keys
        self.workers = workers
        self.seed = seed
        self.client_timeout = client_timeout
        self.mix = mix
        self.pinned = pinned or {}
        self.ops: list[Op] = []
        self.anomalies: list[Anomaly] = []
        self.counts = collections.Counter()
        self.reasons = collections.Counter()
        """Why operations failed or ended unknown, for the report."""
        self.t0 = time.monotonic()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="storg-values-")
        self.runner = StorgctlRunner(cluster.env, Path(self._tmp.name))

    # -- running -------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> Workload:
        for w in range(self.workers):
            t = threading.Thread(target=self._worker, args=(w,), name=f"worker-{w}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.client_timeout + 60)
        self._threads.clear()

    def close(self) -> None:
        self.stop()
        self.runner.close()
        self._tmp.cleanup()

    def addresses(self, worker: int) -> list[str]:
        names = self.pinned.get(worker)
        if names is None:
            names = list(self.cluster.nodes)
            k = worker % len(names)
            names = names[k:] + names[:k]  # each worker starts with another node
        return names

    def spawn(self, process: int, nodes: list[str]) -> threading.Event:
        """One more worker that talks to ``nodes`` only, until the returned event is set."""
        done = threading.Event()
        t = threading.Thread(target=self._worker, args=(process, nodes, done),
                             name=f"worker-{process}", daemon=True)
        t.start()
        self._threads.append(t)
        return done

    def _worker(self, w: int, nodes: list[str] | None = None,
                done: threading.Event | None = None) -> None:
        rng = random.Random(f"{self.seed}-{w}")
        n = 0
        while not self._stop.is_set() and not (done is not None and done.is_set()):
            key = rng.choice(self.keys)
            kind = rng.choices([PUT, GET, RM], weights=self.mix)[0]
            n += 1
            value = f"w{w}-{n}-{rng.randrange(16**6):06x}"
            op = self.run_op(w, kind, key, value, nodes or self.addresses(w))
            self.add(op)

    def add(self, op: Op) -> None:
        with self._cond:
            self.ops.append(op)
            self.counts[op.outcome.value] += 1
            if op.outcome is Outcome.OK and op.kind != GET:
                self.counts["acked"] += 1
            self._cond.notify_all()

    def run_op(self, process: int, kind: str, key: str, value: str, nodes: list[str],
               client_timeout: float | None = None) -> Op:
        """Run one storgctl and classify its outcome."""
        timeout = client_timeout or self.client_timeout
        args = ["--cluster", ",".join(self.cluster.nodes[n].client_address for n in nodes),
                "--timeout", str(timeout)]
        source = None
        if kind == PUT:
            # A regular file, not stdin: the client may re-send it after a leader change.
            source = Path(self._tmp.name) / value
            source.write_bytes(content_of(value))
            args += ["put", str(source), key]
        elif kind == GET:
            args += ["get", key, "-"]
        else:
            args += ["rm", key]
        call = self.now()
        # storgctl's own --timeout bounds the wait for a leader; a transfer that keeps
        # making progress may run longer, so the kill comes well after it.
        code, stdout, stderr = self.runner.run(args, timeout + 30)
        ret = self.now()
        if source is not None:
            source.unlink(missing_ok=True)
        return self._classify(process, kind, key, value, call, ret, code, stdout, stderr)

    def _classify(self, process: int, kind: str, key: str, value: str, call: float, ret: float,
                  code: int | None, stdout: bytes, stderr: str) -> Op:
        not_found = code == 1 and "not found" in stderr
        clean = stderr == "" or stderr.startswith("storgctl: ")
        if code is not None and not clean:
            self.anomalies.append(Anomaly(f"storgctl {kind} crashed (exit {code})", stderr[-2000:]))
        if code == 4:
            self.anomalies.append(Anomaly(f"integrity error on {kind} {key}", stderr.strip()))
        if code is None or code == 3 or code == 4 or not clean:
            outcome = Outcome.UNKNOWN
        elif code == 0 or not_found:
            outcome = Outcome.OK
        else:
            outcome = Outcome.FAILED
        if outcome is not Outcome.OK:
            reason = stderr.strip().splitlines()[-1][:120] if stderr.strip() else f"exit {code}"
            self.reasons[f"{kind} {outcome.value}: {re.sub(r'[0-9.:]+[0-9]', 'N', reason)}"] += 1
        if kind == PUT:
            return Op(PUT, key, value, call, ret, outcome, process=process)
        if kind == RM:
            return Op(RM, key, None, call, ret, outcome, removed=code == 0, process=process)
        read = None
        if outcome is Outcome.OK and not not_found:
            read, intact = value_of(stdout)
            if not intact:
                self.anomalies.append(Anomaly(f"corrupt read of {key}",
                                              f"{len(stdout)} bytes starting {stdout[:60]!r}"))
                read = f"<corrupt {read}>"
        return Op(GET, key, read, call, ret, outcome, process=process)

    # -- waiting for progress (instead of sleeping) -------------------------------

    def wait_progress(self, done: int = 0, acked: int = 0, timeout: float = 90.0) -> None:
        """Block until ``done`` more operations completed and ``acked`` more writes were acknowledged."""
        deadline = time.monotonic() + timeout
        with self._cond:
            goal_done = len(self.ops) + done
            goal_acked = self.counts["acked"] + acked
            while len(self.ops) < goal_done or self.counts["acked"] < goal_acked:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no progress: wanted {done} more ops and {acked} more acks within "
                        f"{timeout:.0f} s; counts {dict(self.counts)}")
                self._cond.wait(left)


class Nemesis:
    """Breaks the cluster on purpose, and remembers what it broke so it can heal it all."""

    def __init__(self, cluster: ProcCluster, firewall: LinkFirewall | None, rng: random.Random,
                 clock=time.monotonic) -> None:
        self.cluster = cluster
        self.firewall = firewall
        self.rng = rng
        self.faults = collections.Counter()
        self.down: set[str] = set()
        self.paused: set[str] = set()
        self.events: list[str] = []
        self._clock = clock

    def note(self, text: str) -> None:
        self.events.append(f"{self._clock():9.3f} {text}")

    @property
    def total(self) -> int:
        return sum(self.faults.values())

    def live(self) -> list[str]:
        return [n for n in self.cluster.nodes if n not in self.down]

    def leader(self, among: list[str] | None = None, timeout: float = 60) -> str:
        among = among or [n for n in self.live() if n not in self.paused]
        # A paused member holds each status poll for its row's timeout: keep that short.
        return wait_for(lambda: self.cluster.leader(among, timeout=1), timeout,
                        f"a leader among {among}", 0.2)

    def kill(self, nid: str) -> None:
        self.cluster.kill(nid, signal.SIGKILL)
        self.paused.discard(nid)
        self.down.add(nid)
        self.faults["kill -9"] += 1
        self.note(f"kill -9 {nid}")

    def start(self, nid: str) -> None:
        self.cluster.start(nid)
        self.down.discard(nid)
        self.note(f"start {nid}")

    def kill_all(self) -> None:
        """SIGKILL every node at once (signals first, then reap), as a power cut would."""
        for node in self.cluster.nodes.values():
            if node.alive():
                node.proc.send_signal(signal.SIGKILL)
        for nid in self.cluster.nodes:
            self.cluster.kill(nid)
            self.down.add(nid)
        self.paused.clear()
        self.faults["kill -9 all"] += 1
        self.note("kill -9 all")

    def pause(self, nid: str) -> None:
        self.cluster.pause(nid)
        self.paused.add(nid)
        self.faults["SIGSTOP"] += 1
        self.note(f"SIGSTOP {nid}")

    def resume(self, nid: str) -> None:
        self.cluster.resume(nid)
        self.paused.discard(nid)
        self.note(f"SIGCONT {nid}")

    def partition(self, *groups: list[str], kind: str = "partition") -> None:
        self.firewall.partition(*groups)
        self.faults[kind] += 1
        self.note(f"{kind} {' | '.join(','.join(g) for g in groups)} | rest")

    def heal_net(self) -> None:
        if self.firewall is not None and self.firewall.blocked:
            self.firewall.heal()
            self.note("heal network")

    def heal_all(self) -> None:
        self.heal_net()
        for nid in sorted(self.paused):
            self.resume(nid)
        for nid in sorted(self.down):
            self.start(nid)


@dataclass
class Report:
    scenario: str
    seed: int
    seconds: float = 0.0
    ops: int = 0
    checked: int = 0
    outcomes: dict = field(default_factory=dict)
    faults: dict = field(default_factory=dict)
    faults_total: int = 0
    linearizable: bool = False

    def line(self) -> str:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(self.faults.items())) or "none"
        o = self.outcomes
        return (f"faults/{self.scenario}: {self.ops} ops ({self.checked} checked; ok {o.get('ok', 0)}, "
                f"failed {o.get('failed', 0)}, unknown {o.get('unknown', 0)}), "
                f"{self.faults_total} faults ({kinds}), {self.seconds:.0f} s, "
                f"{'linearizable' if self.linearizable else 'NOT LINEARIZABLE'} (seed {self.seed})")


def _findings(report: Report, text: str, workload: Workload, nemesis: Nemesis, root: Path) -> str:
    """Write the history next to the cluster (and to $STORG_FAULT_FINDINGS if set); return the text."""
    history = root / f"history-{report.scenario}.json"
    history.write_text(json.dumps({
        "scenario": report.scenario, "seed": report.seed, "nemesis": nemesis.events,
        "ops": [dict(asdict(o), outcome=o.outcome.value) for o in workload.ops]}, indent=0))
    body = (f"## {report.scenario} (seed {report.seed})\n\n{text}\n\nNemesis:\n"
            + "\n".join("    " + e for e in nemesis.events[-30:])
            + f"\n\nFull history: {history}\n")
    target = os.environ.get("STORG_FAULT_FINDINGS")
    if target:
        with open(target, "a") as f:
            f.write(body + "\n")
    return body


def _log_problems(cluster: ProcCluster) -> list[str]:
    found = []
    for nid in cluster.nodes:
        for line in cluster.log_text(nid).splitlines():
            if "Traceback" in line or "Unhandled" in line:
                found.append(f"{nid}: {line.strip()[:200]}")
    return found


def verify(cluster: ProcCluster, workload: Workload, nemesis: Nemesis, scenario: str,
           seed: int, started: float) -> Report:
    """Heal, then check convergence, durability and linearizability; record the summary row."""
    report = Report(scenario, seed)
    crashed = [n for n, node in cluster.nodes.items()
               if n not in nemesis.down and not node.alive()]
    nemesis.heal_all()
    problems: list[str] = []
    if crashed:
        problems.append("nodes died without being killed: " + ", ".join(
            f"{n} (log tail: {cluster.log_text(n)[-1500:]})" for n in crashed))
        for n in crashed:
            nemesis.start(n)
    nemesis.leader(list(cluster.nodes), timeout=90)

    # Final linearizable reads, one through each node: they join the history.
    for i, nid in enumerate(cluster.nodes):
        for key in workload.keys:
            op = workload.run_op(1000 + i, GET, key, "", [nid], client_timeout=30)
            workload.add(op)
            if op.outcome is not Outcome.OK:
                problems.append(f"final read of {key} through {nid} did not succeed: {op.describe()}")

    # Every node reaches the same applied index and holds the same namespace.
    def converged():
        rows = cluster.status()
        applied = {r["applied_index"] for r in rows}
        commits = {r["commit_index"] for r in rows}
        return len(applied) == 1 and None not in applied and applied == {max(commits)}
    wait_for(converged, 60, "every node to apply the same index", 0.3)

    def same_namespace():
        spaces = {nid: cluster.namespace(nid) for nid in cluster.nodes}
        first = next(iter(spaces.values()))
        return all(s == first for s in spaces.values()) and first
    namespace = wait_for(same_namespace, 60, "the same namespace on every node", 0.3)
    listed = {f["path"] for f in namespace}

    # An acknowledged put that no other write could have replaced must be what is there now.
    for key in workload.keys:
        writes = [o for o in workload.ops if o.key == key and o.kind != GET
                  and o.outcome is not Outcome.FAILED and o.process < 1000]
        for p in writes:
            if p.kind != PUT or p.outcome is not Outcome.OK:
                continue
            if all(o is p or (o.outcome is Outcome.OK and o.ret < p.call) for o in writes):
                finals = [o for o in workload.ops if o.key == key and o.process >= 1000]
                if any(o.value != p.value for o in finals) or key not in listed:
                    problems.append(f"acknowledged last put {p.describe()} of {key} is not what "
                                    f"the final reads return: {[o.value for o in finals]}")

    result = check_history(workload.ops)
    report.seconds = time.monotonic() - started
    report.ops = len(workload.ops)
    report.checked = result.ops
    report.outcomes = {k: workload.counts[k] for k in ("ok", "failed", "unknown")}
    report.faults = dict(nemesis.faults)
    report.faults_total = nemesis.total
    report.linearizable = result.ok
    SUMMARY.append(asdict(report) | {"line": report.line()})
    print("\n" + report.line(), flush=True)
    for reason, count in workload.reasons.most_common(6):
        print(f"    {count:4d} x {reason}", flush=True)
    if not result.ok:
        problems.append(result.problems())
    problems += [f"{a.what}: {a.detail}" for a in workload.anomalies]
    if problems:
        raise AssertionError(_findings(report, "\n".join(problems), workload, nemesis, cluster.root))
    logged = _log_problems(cluster)
    if logged:
        print(f"    note: {len(logged)} traceback lines in the node logs ({cluster.root})", flush=True)
    return report


def hold(seconds: float) -> None:
    """Let a fault act for a while.

    This is the nemesis' schedule (how long a partition or a flap lasts),
    not a wait for something to happen: every wait for an outcome polls a
    condition with a deadline (:func:`wait_for`, :meth:`Workload.wait_progress`).
    """
    threading.Event().wait(seconds)
