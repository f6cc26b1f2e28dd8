"""PutInlineBatchCommand: many small files in one entry, applied whole or not at all, once per session."""

from __future__ import annotations

import hashlib

import pytest

from storg.fsm.errors import InvalidCommand
from storg.wire import CODEC
from storg.wire.batch import PutInlineBatchCommand
from storg.wire.chunks import PutInlineCommand
from storg.wire.objects import ObjectAttrs, PutObjectCommand

from tests.fsm.test_fsm_apply import Log

HOLDERS = ("n1", "n2")


def inline(path: str, data: bytes, holders: tuple[str, ...] = HOLDERS, client: int = 0,
           if_absent: bool = False) -> bytes:
    put = CODEC.encode(PutInlineCommand(client, 0, 5, path, data, holders if data else ()))
    etag = hashlib.md5(data).hexdigest()
    return CODEC.encode(PutObjectCommand(if_absent, "", "", ObjectAttrs(etag=etag), put))


def test_a_batch_stores_every_file_in_one_entry() -> None:
    log = Log()
    written: list[tuple[str, bytes]] = []
    log.fsm.on_inline_chunk = lambda digest, data, holders: written.append((digest, data))
    files = {f"/t/f{i}": b"data %d" % i for i in range(50)} | {"/t/empty": b""}
    index = log(PutInlineBatchCommand(7, 1, tuple(inline(p, d) for p, d in files.items())))
    assert index == 1
    for path, data in files.items():
        info = log.fsm.get(path)
        assert info is not None and info.size == len(data) and info.version == 1
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert info.attrs.etag == hashlib.md5(data).hexdigest()
    assert sorted(d for _, d in written) == sorted(d for d in files.values() if d)
    assert log.fsm.stats()["files"] == len(files)


def test_a_bad_file_refuses_the_whole_batch() -> None:
    log = Log()
    good = inline("/t/good", b"good")
    for bad in (inline("/t/../x", b"bad path"), inline("/t/nohold", b"no holders", holders=()),
                inline("/t/session", b"own session", client=9), inline("/t/cond", b"c", if_absent=True),
                CODEC.encode(PutInlineCommand(0, 0, 5, "/t/bare", b"no wrapper", HOLDERS)), b"\x00garbage",
                CODEC.encode(PutObjectCommand(False, "", "", ObjectAttrs(etag="e", parts=(1,)),
                                              CODEC.encode(PutInlineCommand(0, 0, 5, "/t/parts", b"p", HOLDERS))))):
        with pytest.raises(InvalidCommand):
            log(PutInlineBatchCommand(7, log.index + 1, (good, bad)))
        assert log.fsm.get("/t/good") is None, "nothing of a refused batch is applied"
    assert log.fsm.stats()["files"] == 0


def test_a_retried_batch_replays_its_first_outcome() -> None:
    log = Log()
    written: list[bytes] = []
    log.fsm.on_inline_chunk = lambda digest, data, holders: written.append(data)
    batch = PutInlineBatchCommand(7, 1, (inline("/a", b"one"), inline("/b", b"two")))
    first = log(batch)
    log(PutInlineBatchCommand(8, 1, (inline("/a", b"changed by another client"),)))
    assert log(batch) == first, "the retry answers as the first time"
    assert log.fsm.get("/a").size == len(b"changed by another client"), "and changes nothing"
    assert written == [b"one", b"two", b"changed by another client"], "holders write each file once"
