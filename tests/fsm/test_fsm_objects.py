"""Object attributes and the object commands in the state machine (issue 18).

Attributes ride with a put, stay with mv, are copied by cp, replaced by a
copy with attributes (onto itself too), and survive snapshots; an
MD5-only ETag costs 17 bytes of the packed record.  Compose builds one file
from parts in one entry, with the composite SHA-256, the parts' sizes, the
upload folder removed and exact chunk reference counts.  S3 keys are
created, listed without secrets, revoked, and carried by snapshots.
"""

from __future__ import annotations

import hashlib
import sys

import pytest

from storg.fsm.errors import Conflict, InvalidCommand, NotFound
from storg.fsm.records import pack_attrs
from storg.wire import CODEC
from storg.wire.chunks import CollectChunksCommand, PutFileCommand, PutInlineCommand
from storg.wire.objects import (
    ComposeCommand,
    CopyAttrsCommand,
    ObjectAttrs,
    PutObjectCommand,
    S3Key,
    S3KeyCreateCommand,
    S3KeyRevokeCommand,
)

from tests.fsm.test_fsm_apply import Log, fresh, h, put, refs, reuse, rm
from tests.fsm.test_fsm_tree import cp, mv, restored, rmr

MD5 = hashlib.md5(b"content").hexdigest()
MD5_ONLY = ObjectAttrs(MD5)
MULTIPART = ObjectAttrs("x-2")


@pytest.fixture
def log() -> Log:
    return Log()


def oput(inner: PutFileCommand | PutInlineCommand, attrs: ObjectAttrs = MD5_ONLY, *,
         if_absent: bool = False, if_match: str = "", if_match_etag: str = "") -> PutObjectCommand:
    return PutObjectCommand(if_absent, if_match, if_match_etag, attrs, CODEC.encode(inner))


def compose(dst: str, parts: list[str], attrs: ObjectAttrs = MULTIPART, remove: str = "",
            if_absent: bool = False, if_match_etag: str = "", client: int = 0, seq: int = 0) -> ComposeCommand:
    return ComposeCommand(client, seq, 21, dst, tuple(parts), attrs, remove, if_absent, if_match_etag)


RICH = ObjectAttrs("ab" * 16 + "-3", "text/plain", (("colour", "blue"), ("size", "L")),
                   (("CRC32", "AAAAAA=="),), (), (("mine", "yes"),))


def test_a_put_with_attributes_keeps_them(log: Log) -> None:
    info = log(oput(put("/b/k", fresh(1)), RICH))
    assert info.attrs == RICH
    assert log.fsm.get("/b/k").attrs == RICH
    assert log.fsm.list("/b", with_chunks=False)[0].attrs == RICH
    assert log.fsm.listing("/b").page(0, 1)[0].attrs == RICH


def test_an_md5_etag_costs_17_bytes_per_file(log: Log) -> None:
    log(put("/plain", fresh(1)))
    log(oput(put("/tagged", reuse(1))))
    plain, tagged = log.fsm._files["/plain"], log.fsm._files["/tagged"]
    assert len(tagged) - len(plain) == 17
    assert sys.getsizeof(tagged) - sys.getsizeof(plain) == 17
    assert log.fsm.get("/tagged").attrs == ObjectAttrs(MD5)
    assert log.fsm.get("/plain").attrs == ObjectAttrs()
    # An upper-case or odd ETag is kept exactly as given (the general form).
    log(oput(put("/upper", reuse(1)), ObjectAttrs(MD5.upper())))
    assert log.fsm.get("/upper").attrs.etag == MD5.upper()


def test_inline_puts_carry_attributes(log: Log) -> None:
    inline = PutInlineCommand(0, 0, 5, "/small", b"tiny", ("n1",))
    info = log(oput(inline, ObjectAttrs(hashlib.md5(b"tiny").hexdigest(), "image/png")))
    assert info.attrs.content_type == "image/png" and info.size == 4


def test_if_match_etag_is_decided_at_apply(log: Log) -> None:
    log(oput(put("/k", fresh(1)), ObjectAttrs("e1" * 16)))
    before = log.fsm.digest()
    with pytest.raises(Conflict, match="ETag"):
        log(oput(put("/k", fresh(2)), ObjectAttrs("e2" * 16), if_match_etag="ff" * 16))
    with pytest.raises(Conflict, match="does not exist"):
        log(oput(put("/none", fresh(2)), if_match_etag="e1" * 16))
    with pytest.raises(Conflict, match="already exists"):
        log(oput(put("/k", fresh(2)), if_absent=True))
    assert log.fsm.digest() == before
    info = log(oput(put("/k", fresh(2)), ObjectAttrs("e2" * 16), if_match_etag="e1" * 16))
    assert info.attrs.etag == "e2" * 16


def test_a_put_may_not_claim_parts(log: Log) -> None:
    with pytest.raises(InvalidCommand, match="parts"):
        log(oput(put("/k", fresh(1)), ObjectAttrs(parts=(10,))))
    assert log.fsm.get("/k") is None


def test_mv_keeps_cp_copies_rm_drops_attributes(log: Log) -> None:
    log(oput(put("/a/f", fresh(1)), RICH))
    log(mv("/a", "/b"))
    assert log.fsm.get("/b/f").attrs == RICH
    log(cp("/b/f", "/c"))
    assert log.fsm.get("/c").attrs == RICH
    log(rm("/c"))
    log(put("/c", reuse(1)))
    assert log.fsm.get("/c").attrs == ObjectAttrs()
    assert restored(log.fsm).digest() == log.fsm.digest()


def test_copy_with_attributes_replaces_them_also_onto_itself(log: Log) -> None:
    log(oput(put("/b/k", fresh(1), fresh(2)), RICH))
    new = ObjectAttrs(MD5, "application/json", (("mtime", "123"),))
    assert log(CopyAttrsCommand(0, 0, 40, "/b/k", "/b/k", False, new)) == 1
    info = log.fsm.get("/b/k")
    assert info.attrs == new and info.modified_ns == 40 and info.version == log.index
    assert (refs(log.fsm, 1), refs(log.fsm, 2)) == (1, 1)
    log(put("/other", fresh(3)))
    with pytest.raises(Conflict):
        log(CopyAttrsCommand(0, 0, 41, "/b/k", "/other", False, new))
    log(CopyAttrsCommand(0, 0, 41, "/b/k", "/other", True, ObjectAttrs()))
    assert (refs(log.fsm, 1), refs(log.fsm, 3)) == (2, 0)
    assert log.fsm.get("/other").attrs == ObjectAttrs()
    with pytest.raises(NotFound):
        log(CopyAttrsCommand(0, 0, 41, "/none", "/x", False, new))


def parts(log: Log) -> None:
    """An upload folder with three parts: chunks 1+2, 3, and 1 again (a repeated chunk)."""
    log(oput(put("/.mp/u1/info", ), ObjectAttrs(extra=(("key", "/b/big"),))))
    log(put("/.mp/u1/00001", fresh(1), fresh(2)))
    log(put("/.mp/u1/00002", fresh(3)))
    log(put("/.mp/u1/00003", reuse(1)))


def test_compose_builds_the_file_from_the_parts_and_removes_the_folder(log: Log) -> None:
    parts(log)
    shas = [log.fsm.get(f"/.mp/u1/0000{i}").sha256 for i in (1, 2, 3)]
    info = log(compose("/b/big", [f"/.mp/u1/0000{i}" for i in (1, 2, 3)],
                       ObjectAttrs("99" * 16 + "-3", "video/mp4"), remove="/.mp/u1"))
    assert info.path == "/b/big" and info.size == 40
    assert [c.hash for c in info.chunks] == [h(1), h(2), h(3), h(1)]
    assert info.sha256 == hashlib.sha256(b"".join(bytes.fromhex(s) for s in shas)).hexdigest()
    assert info.attrs == ObjectAttrs("99" * 16 + "-3", "video/mp4", parts=(20, 10, 10))
    assert log.fsm.list("/.mp", with_chunks=False) == []
    assert (refs(log.fsm, 1), refs(log.fsm, 2), refs(log.fsm, 3)) == (2, 1, 1)
    assert log.fsm.unreferenced_chunks() == []
    assert restored(log.fsm).digest() == log.fsm.digest()


def test_compose_then_rm_of_the_sources_then_collection_keeps_what_is_referenced(log: Log) -> None:
    parts(log)
    log(compose("/b/big", ["/.mp/u1/00001", "/.mp/u1/00002"]))  # sources stay
    log(cp("/.mp/u1/00003", "/b/copy"))
    log(rmr("/.mp"))
    assert log.fsm.unreferenced_chunks() == []
    log(CollectChunksCommand((h(1), h(2), h(3))))
    assert all(log.fsm.chunk(h(n)) is not None for n in (1, 2, 3))
    log(rm("/b/big"))
    assert log.fsm.unreferenced_chunks() == sorted([h(2), h(3)])
    assert log(CollectChunksCommand((h(1), h(2), h(3)))) == (h(2), h(3))
    assert log.fsm.chunk(h(1)).refs == 1  # /b/copy still refers to it
    log(rm("/b/copy"))
    log(CollectChunksCommand((h(1),)))
    assert log.fsm.stats()["chunks"] == 0


def test_compose_conditions_and_refusals_change_nothing(log: Log) -> None:
    parts(log)
    log(oput(put("/b/big", fresh(9)), ObjectAttrs("e1" * 16)))
    before = log.fsm.digest()
    with pytest.raises(Conflict):
        log(compose("/b/big", ["/.mp/u1/00001"], if_absent=True, remove="/.mp/u1"))
    with pytest.raises(Conflict):
        log(compose("/b/big", ["/.mp/u1/00001"], if_match_etag="00" * 16, remove="/.mp/u1"))
    with pytest.raises(NotFound):
        log(compose("/b/new", ["/.mp/u1/00001", "/.mp/u1/00009"], remove="/.mp/u1"))
    with pytest.raises(InvalidCommand):
        log(compose("/.mp/u1/x", ["/.mp/u1/00001"], remove="/.mp/u1"))
    with pytest.raises(InvalidCommand):
        log(compose("/b/new", []))
    assert log.fsm.digest() == before
    info = log(compose("/b/big", ["/.mp/u1/00002"], if_match_etag="e1" * 16, remove="/.mp/u1"))
    assert info.attrs.parts == (10,) and refs(log.fsm, 9) == 0
    with pytest.raises(InvalidCommand, match="composed"):
        log(compose("/b/again", ["/b/big"]))


def test_a_retried_compose_replays_its_outcome(log: Log) -> None:
    parts(log)
    first = log(compose("/b/big", ["/.mp/u1/00001"], remove="/.mp/u1", client=5, seq=1))
    assert log(compose("/b/big", ["/.mp/u1/00001"], remove="/.mp/u1", client=5, seq=1)) == first


def test_s3_keys_are_created_listed_revoked_and_snapshotted(log: Log) -> None:
    assert log(S3KeyCreateCommand(0, 0, 77, "AKID1", "backup", "readwrite", "s3cret")) == 1
    log(S3KeyCreateCommand(0, 0, 78, "AKID2", "ops", "admin", "other"))
    with pytest.raises(Conflict):
        log(S3KeyCreateCommand(0, 0, 79, "AKID1", "again", "admin", "x"))
    with pytest.raises(InvalidCommand, match="role"):
        log(S3KeyCreateCommand(0, 0, 79, "AKID3", "bad", "root", "x"))
    assert log.fsm.s3_secret("AKID1") == ("s3cret", "readwrite")
    assert log.fsm.s3_keys() == [S3Key("AKID1", "backup", "readwrite", 77), S3Key("AKID2", "ops", "admin", 78)]
    copy = restored(log.fsm)
    assert copy.s3_secret("AKID2") == ("other", "admin") and copy.digest() == log.fsm.digest()
    log(S3KeyRevokeCommand(0, 0, "AKID1"))
    assert log.fsm.s3_secret("AKID1") is None
    with pytest.raises(NotFound):
        log(S3KeyRevokeCommand(0, 0, "AKID1"))
    assert restored(log.fsm).s3_keys() == [S3Key("AKID2", "ops", "admin", 78)]


def test_snapshots_carry_every_form_of_attributes(log: Log) -> None:
    forms = [ObjectAttrs(), ObjectAttrs(MD5), RICH] + [ObjectAttrs("e" * n) for n in range(40)]
    for i, attrs in enumerate(forms):
        log(oput(put(f"/f/{i:03d}", fresh(i % 3)), attrs))
    assert {len(pack_attrs(a)) % 32 for a in forms} >= {0}  # the empty tail among them
    copy = restored(log.fsm)
    assert copy.digest() == log.fsm.digest()
    assert [f.attrs for f in copy.list("/f", with_chunks=False)] == forms


def test_a_page_lists_by_string_prefix_after_a_key(log: Log) -> None:
    for name in ("/b/a1", "/b/a2", "/b/a3", "/b/b1", "/b2/x", "/c"):
        log(put(name, fresh(1) if name == "/b/a1" else reuse(1)))
    page, more = log.fsm.page("/b/a", "", 2)
    assert [f.path for f in page] == ["/b/a1", "/b/a2"] and more
    page, more = log.fsm.page("/b/a", "/b/a2", 2)
    assert [f.path for f in page] == ["/b/a3"] and not more
    page, more = log.fsm.page("/b", "/b/a3", 10)
    assert [f.path for f in page] == ["/b/b1", "/b2/x"] and not more
    assert log.fsm.page("/z", "", 5) == ([], False)


def test_a_file_stored_before_etags_matches_its_sha256_as_etag(log: Log) -> None:
    """The gateway shows the SHA-256 hex as the ETag of such a file: If-Match with it matches at apply."""
    old = log(put("/b/old", fresh(1)))  # a bare put, as before ETags: no attributes
    assert old.attrs.etag == ""
    with pytest.raises(Conflict):
        log(oput(put("/b/old", fresh(2)), if_match_etag="0" * 32))
    log(oput(put("/b/old", fresh(2)), if_match_etag=old.sha256))
    assert log.fsm.get("/b/old").chunks[0].hash == h(2)
    log(put("/b/old2", fresh(3)))
    log(put("/p/1", fresh(4)))
    info = log(compose("/b/old2", ["/p/1"], if_match_etag=log.fsm.get("/b/old2").sha256))
    assert info.attrs.parts == (10,)


def test_a_compose_past_the_chunk_limit_is_refused_and_changes_nothing(log: Log) -> None:
    from storg.fsm.objects import MAX_FILE_CHUNKS
    many = MAX_FILE_CHUNKS // 2 + 1
    chunks = tuple(fresh(10_000_000 + i, 1) for i in range(many))
    log(put("/p/big", *chunks))
    before = log.fsm.stats()
    with pytest.raises(InvalidCommand, match="more than"):
        log(compose("/b/huge", ["/p/big", "/p/big"]))
    assert log.fsm.get("/b/huge") is None and log.fsm.stats() == before
    assert log(compose("/b/fine", ["/p/big"])).size == many
