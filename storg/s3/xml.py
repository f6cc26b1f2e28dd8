"""S3's XML: the response documents the gateway sends and the request bodies it reads.

Renderers return the whole body (bytes, UTF-8, S3's namespace
``http://s3.amazonaws.com/doc/2006-03-01/``) with the element names real
clients parse (botocore's service model, rclone, s3cmd).  ETags may be
given quoted or not; they are written quoted, as S3 does.  Times are ISO
8601 with milliseconds (``2009-10-12T17:50:30.000Z``), see :func:`iso8601`.

Parsers read bodies of at most :data:`MAX_BODY` bytes with expat and
refuse a DOCTYPE (and so any entity declaration: no billion laughs, no
external entities), deeper nesting than S3's schemas have, and anything
not well-formed, with ``MalformedXML``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from xml.parsers import expat

from storg.s3.errors import S3Error, malformed_xml
from storg.s3.listing import ListResult
from storg.s3.uri import url_encode_key
from storg.s3.xmltext import document, element, escape

MAX_BODY = 4 * 1024 * 1024
"""The largest request body parsed: a CompleteMultipartUpload of 10,000 parts with checksums fits."""
MAX_DELETE_KEYS = 1000
MAX_DEPTH = 6
OWNER_ID = "storg"
OWNER_NAME = "storg"


def iso8601(seconds: float) -> str:
    """``2009-10-12T17:50:30.000Z`` for epoch ``seconds``."""
    whole = int(seconds)
    millis = int(round((seconds - whole) * 1000))
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def quoted(etag: str) -> str:
    """An ETag in double quotes (once)."""
    return etag if len(etag) >= 2 and etag.startswith('"') and etag.endswith('"') else f'"{etag}"'


def _owner(owner_id: str = OWNER_ID, name: str = OWNER_NAME) -> str:
    return f"<Owner>{element('ID', owner_id)}{element('DisplayName', name)}</Owner>"


def _checksums(values: Iterable[tuple[str, str]], checksum_type: str = "") -> str:
    parts = [element("Checksum" + algo.upper(), value) for algo, value in values]
    if checksum_type and parts:
        parts.append(element("ChecksumType", checksum_type))
    return "".join(parts)


# -- buckets -----------------------------------------------------------------------------------------------------------

def list_buckets(buckets: Iterable[tuple[str, str]], owner_id: str = OWNER_ID, owner_name: str = OWNER_NAME) -> bytes:
    """ListAllMyBucketsResult: ``buckets`` as (name, creation date in ISO 8601, see :func:`iso8601`)."""
    rows = "".join(f"<Bucket>{element('Name', name)}{element('CreationDate', created)}</Bucket>"
                   for name, created in buckets)
    return document("ListAllMyBucketsResult", f"{_owner(owner_id, owner_name)}<Buckets>{rows}</Buckets>")


def location_constraint(region: str) -> bytes:
    """GetBucketLocation's answer; ``""`` is S3's way of saying us-east-1 (boto3 reads it as None)."""
    return document("LocationConstraint", escape(region))


# -- listing -----------------------------------------------------------------------------------------------------------

def list_objects(result: ListResult) -> bytes:
    """ListBucketResult, V2 or V1 as ``result.version`` says, keys url-encoded if it was asked."""
    enc = url_encode_key if result.encoding_type == "url" else (lambda text: text)
    head = [element("Name", result.bucket), element("Prefix", enc(result.prefix))]
    if result.version == 2:
        if result.start_after:
            head.append(element("StartAfter", enc(result.start_after)))
        if result.continuation_token:
            head.append(element("ContinuationToken", result.continuation_token))
        head.append(element("KeyCount", result.key_count))
    else:
        head.append(element("Marker", enc(result.marker)))
        if result.next_marker:
            head.append(element("NextMarker", enc(result.next_marker)))
    head.append(element("MaxKeys", result.max_keys))
    if result.delimiter:
        head.append(element("Delimiter", enc(result.delimiter)))
    if result.encoding_type:
        head.append(element("EncodingType", result.encoding_type))
    head.append(element("IsTruncated", result.truncated))
    if result.version == 2 and result.next_continuation_token:
        head.append(element("NextContinuationToken", result.next_continuation_token))
    owner = _owner() if result.fetch_owner else ""
    for entry in result.entries:
        head.append(f"<Contents>{element('Key', enc(entry.key))}"
                    f"{element('LastModified', iso8601(entry.modified_ns / 1e9))}"
                    f"{element('ETag', quoted(entry.etag))}{element('Size', entry.size)}{owner}"
                    f"{element('StorageClass', 'STANDARD')}</Contents>")
    for common in result.common_prefixes:
        head.append(f"<CommonPrefixes>{element('Prefix', enc(common))}</CommonPrefixes>")
    return document("ListBucketResult", "".join(head))


# -- objects -----------------------------------------------------------------------------------------------------------

def copy_object_result(etag: str, last_modified: str, checksums: Iterable[tuple[str, str]] = ()) -> bytes:
    """CopyObjectResult (``last_modified`` in ISO 8601)."""
    return document("CopyObjectResult", element("ETag", quoted(etag)) + element("LastModified", last_modified)
                    + _checksums(checksums))


def copy_part_result(etag: str, last_modified: str, checksums: Iterable[tuple[str, str]] = ()) -> bytes:
    """CopyPartResult (UploadPartCopy)."""
    return document("CopyPartResult", element("ETag", quoted(etag)) + element("LastModified", last_modified)
                    + _checksums(checksums))


def delete_result(deleted: Iterable[str], errors: Iterable[tuple[str, str, str]] = ()) -> bytes:
    """DeleteResult: ``deleted`` keys (pass none in Quiet mode: S3 lists only the errors then), and
    ``errors`` as (key, code, message)."""
    body = "".join(f"<Deleted>{element('Key', key)}</Deleted>" for key in deleted)
    body += "".join(f"<Error>{element('Key', key)}{element('Code', code)}{element('Message', message)}</Error>"
                    for key, code, message in errors)
    return document("DeleteResult", body)


# -- multipart ---------------------------------------------------------------------------------------------------------

def initiate_multipart_upload(bucket: str, key: str, upload_id: str) -> bytes:
    return document("InitiateMultipartUploadResult",
                    element("Bucket", bucket) + element("Key", key) + element("UploadId", upload_id))


def complete_multipart_upload(location: str, bucket: str, key: str, etag: str,
                              checksums: Iterable[tuple[str, str]] = (), checksum_type: str = "") -> bytes:
    return document("CompleteMultipartUploadResult",
                    element("Location", location) + element("Bucket", bucket) + element("Key", key)
                    + element("ETag", quoted(etag)) + _checksums(checksums, checksum_type))


def list_parts(bucket: str, key: str, upload_id: str,
               parts: Sequence[tuple[int, str, int, str, Iterable[tuple[str, str]]]], *, marker: int = 0,
               max_parts: int = 1000, truncated: bool = False, checksum_algorithm: str = "",
               checksum_type: str = "") -> bytes:
    """ListPartsResult: ``parts`` as (number, etag, size, last modified ISO 8601, checksums)."""
    body = [element("Bucket", bucket), element("Key", key), element("UploadId", upload_id),
            f"<Initiator>{element('ID', OWNER_ID)}{element('DisplayName', OWNER_NAME)}</Initiator>", _owner(),
            element("StorageClass", "STANDARD"), element("PartNumberMarker", marker)]
    if parts:
        body.append(element("NextPartNumberMarker", parts[-1][0]))
    body += [element("MaxParts", max_parts), element("IsTruncated", truncated)]
    if checksum_algorithm:
        body.append(element("ChecksumAlgorithm", checksum_algorithm))
    if checksum_type:
        body.append(element("ChecksumType", checksum_type))
    for number, etag, size, modified, sums in parts:
        body.append(f"<Part>{element('PartNumber', number)}{element('LastModified', modified)}"
                    f"{element('ETag', quoted(etag))}{element('Size', size)}{_checksums(sums)}</Part>")
    return document("ListPartsResult", "".join(body))


def list_multipart_uploads(bucket: str, uploads: Sequence[tuple[str, str, str]], *, prefix: str = "",
                           delimiter: str = "", key_marker: str = "", upload_id_marker: str = "",
                           max_uploads: int = 1000, truncated: bool = False,
                           common_prefixes: Iterable[str] = (), encoding_type: str = "") -> bytes:
    """ListMultipartUploadsResult: ``uploads`` as (key, upload id, initiated ISO 8601), in (key, id) order."""
    enc = url_encode_key if encoding_type == "url" else (lambda text: text)
    body = [element("Bucket", bucket), element("KeyMarker", enc(key_marker)),
            element("UploadIdMarker", upload_id_marker)]
    if truncated and uploads:
        body += [element("NextKeyMarker", enc(uploads[-1][0])), element("NextUploadIdMarker", uploads[-1][1])]
    if encoding_type:
        body.append(element("EncodingType", encoding_type))
    body += [element("Prefix", enc(prefix))]
    if delimiter:
        body.append(element("Delimiter", enc(delimiter)))
    body += [element("MaxUploads", max_uploads), element("IsTruncated", truncated)]
    for key, upload_id, initiated in uploads:
        body.append(f"<Upload>{element('Key', enc(key))}{element('UploadId', upload_id)}"
                    f"<Initiator>{element('ID', OWNER_ID)}{element('DisplayName', OWNER_NAME)}</Initiator>"
                    f"{_owner()}{element('StorageClass', 'STANDARD')}{element('Initiated', initiated)}</Upload>")
    body += [f"<CommonPrefixes>{element('Prefix', enc(p))}</CommonPrefixes>" for p in common_prefixes]
    return document("ListMultipartUploadsResult", "".join(body))


# -- request bodies ----------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Node:
    """An element of a parsed body: its local name (namespace prefix dropped), text and children."""

    tag: str
    text: str = ""
    children: list[Node] = field(default_factory=list)

    def find(self, tag: str) -> Node | None:
        return next((child for child in self.children if child.tag == tag), None)

    def all(self, tag: str) -> list[Node]:
        return [child for child in self.children if child.tag == tag]

    def child_text(self, tag: str, default: str = "") -> str:
        child = self.find(tag)
        return child.text.strip() if child is not None else default


def parse(body: bytes, root: str) -> Node:
    """``body`` as a tree whose root must be ``root``; MalformedXML for anything else."""
    if len(body) > MAX_BODY:
        raise S3Error("MaxMessageLengthExceeded", f"Your request was too big: more than {MAX_BODY} bytes of XML.",
                      400)
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    # Expat calls the text handler once per entity reference: a 4 MiB body of ``&amp;`` is a
    # million calls, and adding each to a growing str took seconds.  Buffered, expat hands
    # text over in large runs (buffer_size bytes at a time).
    parser.buffer_text = True
    parser.buffer_size = 1 << 16
    stack: list[Node] = []
    top: list[Node] = []

    def refuse(*args: object) -> None:
        raise malformed_xml("a DOCTYPE or an entity declaration is not allowed")

    def start(name: str, attrs: dict[str, str]) -> None:
        if len(stack) >= MAX_DEPTH:
            raise malformed_xml(f"the XML is nested deeper than {MAX_DEPTH} levels")
        node = Node(name.rpartition(":")[2])
        if stack:
            stack[-1].children.append(node)
        else:
            top.append(node)
        stack.append(node)

    def end(name: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(body, True)
    except expat.ExpatError as err:
        raise malformed_xml(f"The XML you provided was not well-formed: {err}") from None
    if len(top) != 1 or top[0].tag != root:
        raise malformed_xml(f"the document's root element must be {root}")
    return top[0]


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """A DeleteObjects body: (keys in order, Quiet).  At most 1000 keys, at least one."""
    root = parse(body, "Delete")
    objects = root.all("Object")
    if not objects:
        raise malformed_xml("a Delete request names at least one Object")
    if len(objects) > MAX_DELETE_KEYS:
        raise malformed_xml(f"a Delete request names at most {MAX_DELETE_KEYS} objects, not {len(objects)}")
    keys = []
    for obj in objects:
        key = obj.find("Key")
        if key is None:
            raise malformed_xml("every Object of a Delete request has a Key")
        keys.append(key.text)  # not stripped: a key may begin or end with white space
    quiet = root.child_text("Quiet", "false").lower() == "true"
    return keys, quiet


@dataclass(frozen=True, slots=True)
class CompletedPart:
    """One part a CompleteMultipartUpload names: its number, ETag (unquoted) and any checksums given."""

    part_number: int
    etag: str
    checksums: tuple[tuple[str, str], ...] = ()


def parse_complete_multipart_upload(body: bytes) -> list[CompletedPart]:
    """The parts of a CompleteMultipartUpload body, in the order given (the caller checks the order)."""
    root = parse(body, "CompleteMultipartUpload")
    parts = []
    for node in root.all("Part"):
        number = node.child_text("PartNumber")
        if not number.isdigit():
            raise malformed_xml("every Part has a numeric PartNumber")
        sums = tuple((child.tag[len("Checksum"):].upper(), child.text.strip()) for child in node.children
                     if child.tag.startswith("Checksum") and child.tag != "ChecksumType" and child.text.strip())
        parts.append(CompletedPart(int(number), node.child_text("ETag").strip('"'), sums))
    if not parts:
        raise malformed_xml("a CompleteMultipartUpload names at least one Part")
    return parts


def parse_create_bucket(body: bytes) -> str:
    """The LocationConstraint of a CreateBucket body (``""`` for an empty body or none given)."""
    if not body.strip():
        return ""
    return parse(body, "CreateBucketConfiguration").child_text("LocationConstraint")
