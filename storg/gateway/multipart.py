"""Multipart uploads: Create, UploadPart, UploadPartCopy, Complete, Abort, ListParts,
ListMultipartUploads, and the expiry of abandoned uploads.

An upload in progress is a folder ``/.storg-multipart/<upload id>/``: an
empty ``info`` file whose attributes hold the target bucket and key, the
content type, user metadata, checksum algorithm and creation time, and one
file per part (``00001`` .. ``10000``), whose attributes hold the part's
MD5 (its ETag) and checksum.  Complete is one entry of the log
(:meth:`~storg.client.api.StorgClient.compose`): the object is made of the
parts' chunks in order (no byte moves) and the upload's folder goes in the
same step, so the object appears whole or not at all.  Abort is ``rm -r``
of the folder; the parts' chunks are then collected as any deleted file's.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from typing import Any

from storg.client.errors import NotFoundError
from storg.gateway.common import MULTIPART, etag_of, iso_time, object_path, request_attrs, require_bucket
from storg.gateway.handler import READ, WRITE, Response, S3Exchange
from storg.gateway.objects import (
    SMALL_BODY,
    check_copy_source_conditions,
    checksum_headers,
    copy_source,
    put_conditions,
    put_streamed,
)
from storg.s3 import checksums, names, xml
from storg.s3.errors import S3Error
from storg.wire.objects import ObjectAttrs

MAX_PART = 5 * 1024 ** 3
PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")
MIN_PART = 5 * 1024 ** 2
"""Every part but the last must be at least this large (S3's rule, EntityTooSmall)."""


def upload_folder(upload_id: str) -> str:
    """The upload's folder as a prefix (with its trailing ``/``); NoSuchUpload for an id not ours."""
    return names.upload_folder(upload_id) + "/"


def _part_number(ex: S3Exchange) -> int:
    return names.part_number(ex.query.get("partNumber", ""))


async def _upload_info(ex: S3Exchange, upload_id: str) -> Any:
    """The upload's info file, checked against the request's bucket and key; NoSuchUpload if gone."""
    try:
        info, index = await ex.client.stat_at(names.upload_info_path(upload_id))
    except NotFoundError:
        raise S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, "
                      "or the upload may have been aborted or completed.", 404) from None
    ex.index = index
    extra = dict(info.attrs.extra)
    if extra.get("bucket") != ex.bucket or extra.get("key") != ex.key:
        raise S3Error("NoSuchUpload", "The specified upload does not exist.", 404)
    return info


async def create_upload(ex: S3Exchange) -> Response:
    object_path(ex)  # refuse a key that can never be stored now, not at Complete
    await require_bucket(ex)
    algo = ex.header("x-amz-checksum-algorithm").upper()
    if algo and algo not in checksums.ALGORITHMS:
        raise S3Error("InvalidRequest", f"unsupported checksum algorithm {algo}", 400)
    upload_id = names.new_upload_id()
    extra = (("bucket", ex.bucket), ("key", ex.key), ("checksum", algo), ("initiated", str(time.time_ns())))
    attrs = request_attrs(ex, extra=extra)
    stream = ex.client.put_stream(names.upload_info_path(upload_id), size=0, attrs=attrs, if_absent=True)
    info = await stream.finish()
    body = xml.initiate_multipart_upload(ex.bucket, ex.key, upload_id)
    headers = [("x-amz-checksum-algorithm", algo)] if algo else []
    return Response(body=body, headers=headers, index=info.version)


async def upload_part(ex: S3Exchange) -> Response:
    number = _part_number(ex)
    size = ex.decoded_length
    if size is not None and size > MAX_PART:
        raise S3Error("EntityTooLarge", "a part is at most 5 GiB", 400)
    upload_id = ex.query["uploadId"]
    await _upload_info(ex, upload_id)
    if size is not None and size <= SMALL_BODY:
        data = await ex.small_body(SMALL_BODY)
        info = await ex.client.put(io.BytesIO(data), names.part_path(upload_id, number),
                                   attrs=_part_attrs(ex.checksum))
        return Response(headers=[("ETag", etag_of(info)), *checksum_headers(info.attrs)], index=info.version)
    info = await put_streamed(ex, names.part_path(upload_id, number), size, _part_attrs)
    return Response(headers=[("ETag", etag_of(info)), *checksum_headers(info.attrs)], index=info.version)


def _part_attrs(checksum: tuple[str, str] | None) -> ObjectAttrs:
    """A part's attributes: its checksum, if the request gave one (the ETag is the node's MD5)."""
    return ObjectAttrs(checksums=(checksum,) if checksum else ())


def _copy_range(ex: S3Exchange, size: int) -> tuple[int, int] | None:
    header = ex.header("x-amz-copy-source-range").strip()
    if not header:
        return None
    match = re.fullmatch(r"bytes=(\d+)-(\d+)", header)
    if match is None:
        raise S3Error("InvalidArgument", "x-amz-copy-source-range must be bytes=FIRST-LAST", 400)
    first, last = int(match.group(1)), int(match.group(2))
    if first > last or last >= size:
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
    return first, last - first + 1


async def upload_part_copy(ex: S3Exchange) -> Response:
    number = _part_number(ex)
    upload_id = ex.query["uploadId"]
    await _upload_info(ex, upload_id)
    src_bucket, src_key = copy_source(ex)
    src = names.object_path(src_bucket, src_key)
    source, _ = await ex.client.stat_at(src)
    check_copy_source_conditions(ex, source)
    dst = names.part_path(upload_id, number)
    span = _copy_range(ex, source.size)
    if (span is None or span == (0, source.size)) and PLAIN_MD5.fullmatch(source.attrs.etag):
        # The whole of a single-part object: a copy sharing its chunks (its MD5 is the part's ETag).
        index = await ex.client.cp(src, dst, force=True)
        part, _ = await ex.client.stat_at(dst)
    else:
        # A range, or an object whose MD5 is not known (multipart, or stored before ETags): read
        # it and write it as the part, so the node computes the part's MD5 (its ETag).
        offset, length = span if span is not None else (0, source.size)
        stream = ex.client.put_stream(dst, size=length)
        try:
            await ex.client.get_stream(src, stream.write, offset=offset, length=length)
        except BaseException:
            stream.abort()
            raise
        part = await stream.finish()
        index = part.version
    return Response(body=xml.copy_part_result(etag_of(part), iso_time(part.modified_ns)), index=index)


async def _parts(ex: S3Exchange, folder: str, start_after: str = "", limit: int | None = None) -> \
        tuple[list[Any], bool]:
    """The upload's part files (not ``info``) in order, after ``start_after``, at most ``limit``."""
    found: list[Any] = []
    more = True
    while more and (limit is None or len(found) < limit):
        page, index, more = await ex.client.ls_page(folder, start_after=start_after,
                                                    limit=1000 if limit is None else min(1000, limit - len(found) + 1))
        if ex.index is None:
            ex.index = index
        if not page:
            break
        found.extend(info for info in page if names.part_number_of(info.path) is not None)
        start_after = page[-1].path
    if limit is not None and len(found) > limit:
        return found[:limit], True
    return found, more


async def complete_upload(ex: S3Exchange) -> Response:
    upload_id = ex.query["uploadId"]
    if_absent, if_match = put_conditions(ex)
    requested = xml.parse_complete_multipart_upload(await ex.small_body())
    info = await _upload_info(ex, upload_id)
    folder = upload_folder(upload_id)
    if not requested:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate "
                      "against our published schema.", 400)
    numbers = [p.part_number for p in requested]
    if numbers != sorted(set(numbers)):
        raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order.", 400)
    stored = {names.part_number_of(p.path): p for p in (await _parts(ex, folder))[0]}
    chosen = []
    for wanted in requested:
        part = stored.get(wanted.part_number)
        if part is None or (wanted.etag and wanted.etag.strip('"') != etag_of(part).strip('"')):
            raise S3Error("InvalidPart", "One or more of the specified parts could not be found. The part may "
                          "not have been uploaded, or the specified entity tag may not match the part's "
                          "entity tag.", 400)
        chosen.append(part)
    for part in chosen[:-1]:
        if part.size < MIN_PART:
            raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed "
                          "object size.", 400)
    extra = dict(info.attrs.extra)
    md5s = b"".join(bytes.fromhex(p.attrs.etag) for p in chosen)
    etag = f"{hashlib.md5(md5s, usedforsecurity=False).hexdigest()}-{len(chosen)}"
    algo = extra.get("checksum", "")
    sums: tuple[tuple[str, str], ...] = ()
    if algo:
        values = [dict(p.attrs.checksums).get(algo, "") for p in chosen]
        if all(values):
            sums = ((algo, checksums.composite(algo, values)),)
    attrs = ObjectAttrs(etag=etag, content_type=info.attrs.content_type, metadata=info.attrs.metadata,
                        checksums=sums, parts=tuple(p.size for p in chosen))
    done = await ex.client.compose(names.object_path(ex.bucket, ex.key), [p.path for p in chosen], attrs=attrs,
                                   remove=names.upload_folder(upload_id), if_absent=if_absent, if_match_etag=if_match)
    body = xml.complete_multipart_upload(f"/{ex.bucket}/{ex.key}", ex.bucket, ex.key, etag_of(done))
    return Response(body=body, headers=checksum_headers(done.attrs), index=done.version)


async def abort_upload(ex: S3Exchange) -> Response:
    upload_id = ex.query["uploadId"]
    await _upload_info(ex, upload_id)
    index = await ex.client.rm_tree(names.upload_folder(upload_id))
    return Response(204, index=index)


async def list_parts(ex: S3Exchange) -> Response:
    upload_id = ex.query["uploadId"]
    info = await _upload_info(ex, upload_id)
    folder = upload_folder(upload_id)
    marker = ex.query.get("part-number-marker", "")
    if marker and not marker.isdigit():
        raise S3Error("InvalidArgument", "part-number-marker must be a number", 400)
    max_parts = ex.query.get("max-parts", "1000")
    if not max_parts.isdigit():
        raise S3Error("InvalidArgument", "max-parts must be a number", 400)
    limit = min(int(max_parts), 1000)
    start_after = names.part_path(upload_id, int(marker)) if marker and int(marker) > 0 else ""
    parts, truncated = await _parts(ex, folder, start_after, limit)
    rows = [(names.part_number_of(p.path) or 0, etag_of(p), p.size, iso_time(p.modified_ns),
             tuple(p.attrs.checksums)) for p in parts]  # _parts keeps only part files: never 0
    algo = dict(info.attrs.extra).get("checksum", "")
    body = xml.list_parts(ex.bucket, ex.key, upload_id, rows, marker=int(marker or 0), max_parts=limit,
                          truncated=truncated, checksum_algorithm=algo)
    return Response(body=body)


async def uploads(client: Any, bucket: str | None = None, seen: Any = None) -> Any:
    """Every upload in progress (of ``bucket``, if given): (upload id, its info file).

    ``seen(index)`` is told the read index of each page.  Parts sort before
    ``info`` in an upload's folder, so a page that ends among an upload's
    parts is followed from just before its ``info``: never every part.
    """
    start_after = ""
    while True:
        page, index, more = await client.ls_page(MULTIPART, start_after=start_after, limit=100)
        if seen is not None:
            seen(index)
        for info in page:
            upload_id, _, name = info.path[len(MULTIPART):].partition("/")
            if name == "info" and (bucket is None or dict(info.attrs.extra).get("bucket") == bucket):
                yield upload_id, info
        if not page or not more:
            return
        last_id, _, name = page[-1].path[len(MULTIPART):].partition("/")
        start_after = page[-1].path if name == "info" else f"{MULTIPART}{last_id}/99999"


async def list_uploads(ex: S3Exchange) -> Response:
    await require_bucket(ex)
    prefix = ex.query.get("prefix", "")
    key_marker = ex.query.get("key-marker", "")
    id_marker = ex.query.get("upload-id-marker", "")
    max_uploads = ex.query.get("max-uploads", "1000")
    if not max_uploads.isdigit():
        raise S3Error("InvalidArgument", "max-uploads must be a number", 400)
    limit = min(int(max_uploads), 1000)
    rows: list[tuple[str, str, str]] = []
    def seen(index: int) -> None:
        if ex.index is None:
            ex.index = index

    async for upload_id, info in uploads(ex.client, ex.bucket, seen):
        key = dict(info.attrs.extra).get("key", "")
        if key.startswith(prefix) and (key, upload_id) > (key_marker, id_marker):
            initiated = int(dict(info.attrs.extra).get("initiated", "0") or 0)
            rows.append((key, upload_id, iso_time(initiated)))
    rows.sort()
    truncated = len(rows) > limit
    rows = rows[:limit]
    body = xml.list_multipart_uploads(ex.bucket, rows, prefix=prefix, key_marker=key_marker,
                                      upload_id_marker=id_marker, max_uploads=limit, truncated=truncated)
    return Response(body=body)


OPERATIONS = {
    "CreateMultipartUpload": (WRITE, create_upload),
    "UploadPart": (WRITE, upload_part),
    "UploadPartCopy": (WRITE, upload_part_copy),
    "CompleteMultipartUpload": (WRITE, complete_upload),
    "AbortMultipartUpload": (WRITE, abort_upload),
    "ListParts": (READ, list_parts),
    "ListMultipartUploads": (READ, list_uploads),
}


async def expire_uploads(client: Any, now_ns: int, max_age_s: float) -> int:
    """Remove every upload created more than ``max_age_s`` before ``now_ns``; returns how many.

    Each goes as an abort does (``rm -r`` of its folder, one entry), so its
    parts' chunks are collected like any deleted file's.
    """
    removed = 0
    async for upload_id, info in uploads(client):
        extra = dict(info.attrs.extra)
        initiated = int(extra.get("initiated", "") or info.modified_ns)
        if now_ns - initiated > max_age_s * 1e9:
            try:
                await client.rm_tree(names.upload_folder(upload_id))
            except NotFoundError:
                continue  # completed or aborted meanwhile
            removed += 1
    return removed
