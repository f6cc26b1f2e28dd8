"""Two costs every small put pays on every node, each beside its baseline in the same run.

* The storage thread hand-off: a round trip (submit a call, get its
  outcome back on the reactor thread) through ``SerialExecutor`` and
  through Twisted's one-thread ``ThreadPool`` with ``deferToThreadPool``,
  which the node used before.  Wall time and CPU (this process, all
  threads) per round trip.
* Decoding a small put's frames (PutStart, PutData, PutEnd) and its log
  command (PutInlineCommand) with ``schema.compile_reader``, the decoders
  the codec registers, against ``schema.read_fields``, the field-by-field
  form they replace; both on the same Reader, without the codec's frame
  checks around them.

Rounds alternate between the two sides; each figure is the median over
``--repeats`` rounds::

    python benchmarks/hotpath_bench.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from storg.node.executor import SerialExecutor
from storg.wire import CODEC
from storg.wire.chunks import PutInlineCommand
from storg.wire.files import PutData, PutEnd, PutStart
from storg.wire.records import Reader
from storg.wire.schema import _layout_of, compile_reader, read_fields

HANDOFFS = 3000
DECODES = 20000


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def handoff_round(reactor, submit) -> tuple[float, float]:
    """(wall us, CPU us) per round trip of a trivial call."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(HANDOFFS):
        await submit(int)
    return ((time.perf_counter() - t0) / HANDOFFS * 1e6, (cpu_seconds() - c0) / HANDOFFS * 1e6)


def small_put_frames() -> list[tuple[str, bytes, type]]:
    data = os.urandom(256)
    objs = [
        PutStart(1, "/bench/256-64/13/12345", 0x1234567890, 77),
        PutData(1, data),
        PutEnd(1, len(data), hashlib.sha256(data).hexdigest()),
        PutInlineCommand(0x1234567890, 77, 1_700_000_000_000_000_000, "/bench/256-64/13/12345", data,
                         ("n1", "n2", "n3")),
    ]
    return [(type(o).__name__, CODEC.encode(o), type(o)) for o in objs]


def decode_round(frames: list[tuple[str, bytes, type]], plain: bool) -> dict[str, float]:
    """us per decode of each frame: the codec's decoder, or field by field (``plain``)."""
    out = {}
    for name, frame, cls in frames:
        fields = _layout_of(cls)
        if plain:
            def decode(frame=frame, cls=cls, fields=fields):
                r = Reader(frame, 2)
                obj = read_fields(cls, fields, r)
                r.done()
                return obj
        else:
            def decode(frame=frame, read=compile_reader(cls, fields)):  # noqa: B008 -- compiled once, at definition
                r = Reader(frame, 2)
                obj = read(r)
                r.done()
                return obj
        assert decode() == CODEC.decode(frame)
        t0 = time.perf_counter()
        for _ in range(DECODES):
            decode()
        out[name] = (time.perf_counter() - t0) / DECODES * 1e6
    return out


async def run(reactor, repeats: int) -> None:
    serial = SerialExecutor(reactor, name="bench-serial")
    pool = ThreadPool(minthreads=1, maxthreads=1, name="bench-pool")
    pool.start()
    hand: dict[str, list[tuple[float, float]]] = {"SerialExecutor": [], "Twisted ThreadPool": []}
    frames = small_put_frames()
    dec: dict[str, list[dict[str, float]]] = {"compiled": [], "field by field": []}
    try:
        for _ in range(repeats):
            hand["SerialExecutor"].append(await handoff_round(reactor, serial))
            hand["Twisted ThreadPool"].append(
                await handoff_round(reactor, lambda fn: deferToThreadPool(reactor, pool, fn)))
            dec["compiled"].append(decode_round(frames, plain=False))
            dec["field by field"].append(decode_round(frames, plain=True))
    finally:
        await serial.stop()
        pool.stop()
    med = statistics.median
    print(f"storage hand-off, one round trip ({HANDOFFS} per round, {repeats} rounds, medians):")
    for name, rows in hand.items():
        print(f"  {name:<20} wall {med(r[0] for r in rows):6.1f} us   CPU {med(r[1] for r in rows):6.1f} us")
    print(f"decoding a small put's frames ({DECODES} each per round, medians, us per decode):")
    names = [name for name, _, _ in frames]
    print("  " + " " * 16 + "".join(f"{n:>18}" for n in names) + f"{'sum':>10}")
    for kind, rows in dec.items():
        cells = [med(r[n] for r in rows) for n in names]
        print(f"  {kind:<16}" + "".join(f"{c:>18.2f}" for c in cells) + f"{sum(cells):>10.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, args.repeats)))


if __name__ == "__main__":
    main()
