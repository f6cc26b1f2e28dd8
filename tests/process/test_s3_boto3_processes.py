"""The S3 gateway with boto3 as it comes (its default checksums, aws-chunked uploads over HTTPS)
against a 3-node cluster of real ``twistd storg`` processes with TLS on.

Every call goes to n1's gateway unless the test says otherwise; reads on n2
and n3 show that what one gateway wrote every other serves at once
(read-after-write on every node, ``x-storg-index`` at least the write's).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from storg.testing.devcluster import ProcCluster, wait_for
from storg.testing.s3clients import S3Key, boto3_client, create_key

pytestmark = pytest.mark.process

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = ProcCluster.create(tmp_path_factory.mktemp("s3"), size=3, s3=True)
    c.start_all()
    try:
        wait_for(c.leader, 60, "a leader", 0.2)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def key(cluster) -> S3Key:
    return create_key(cluster, "tests", "readwrite")


@pytest.fixture(scope="module")
def s3(cluster, key):
    return boto3_client(cluster, key)


def code_of(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def headers_of(response: dict) -> dict[str, str]:
    return response["ResponseMetadata"]["HTTPHeaders"]


def error(call, *args, **kwargs) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    return code_of(caught.value)


def test_buckets(s3):
    s3.create_bucket(Bucket="buckets-a")
    assert error(s3.create_bucket, Bucket="buckets-a") == ("BucketAlreadyOwnedByYou", 409)
    s3.head_bucket(Bucket="buckets-a")
    assert error(s3.head_bucket, Bucket="no-such-bucket") == ("404", 404)
    assert "buckets-a" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.get_bucket_location(Bucket="buckets-a")["LocationConstraint"] in (None, "")
    s3.put_object(Bucket="buckets-a", Key="k", Body=b"x")
    assert error(s3.delete_bucket, Bucket="buckets-a") == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket="buckets-a", Key="k")
    s3.delete_bucket(Bucket="buckets-a")
    assert "buckets-a" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert error(s3.put_object, Bucket="buckets-a", Key="k", Body=b"x") == ("NoSuchBucket", 404)
    assert error(s3.create_bucket, Bucket="Not_Valid") [1] == 400


def test_put_get_head_delete_with_metadata_on_every_node(cluster, key, s3):
    s3.create_bucket(Bucket="objects")
    body = os.urandom(300_000)
    put = s3.put_object(Bucket="objects", Key="dir/file.bin", Body=body, ContentType="application/x-test",
                        Metadata={"colour": "blue", "mtime": "1700000000"})
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    written = int(headers_of(put)["x-storg-index"])
    for nid in ("n1", "n2", "n3"):
        other = boto3_client(cluster, key, nid)
        got = other.get_object(Bucket="objects", Key="dir/file.bin")
        assert got["Body"].read() == body
        assert got["ETag"] == put["ETag"] and got["ContentType"] == "application/x-test"
        assert got["Metadata"] == {"colour": "blue", "mtime": "1700000000"}
        assert int(headers_of(got)["x-storg-index"]) >= written
        head = other.head_object(Bucket="objects", Key="dir/file.bin")
        assert head["ContentLength"] == len(body) and head["ETag"] == put["ETag"]
    # The file is a file: storgctl sees it (and its ETag) too.
    assert cluster.storgctl("get", "/objects/dir/file.bin", "-").stdout == body
    s3.delete_object(Bucket="objects", Key="dir/file.bin")
    assert error(s3.get_object, Bucket="objects", Key="dir/file.bin") == ("NoSuchKey", 404)
    assert error(s3.head_object, Bucket="objects", Key="dir/file.bin") == ("404", 404)
    s3.delete_object(Bucket="objects", Key="dir/file.bin")  # deleting what is gone: 204 as S3


def test_a_file_put_with_storgctl_is_an_object_with_an_md5_etag(cluster, s3):
    s3.create_bucket(Bucket="from-storgctl")
    assert cluster.storgctl("put", "-", "/from-storgctl/hello.txt", input=b"hello").returncode == 0
    got = s3.get_object(Bucket="from-storgctl", Key="hello.txt")
    assert got["Body"].read() == b"hello" and got["ETag"] == f'"{hashlib.md5(b"hello").hexdigest()}"'


def test_default_checksums_are_validated_stored_and_returned(s3):
    s3.create_bucket(Bucket="checksums")
    body = os.urandom(100_000)
    for algorithm in ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"):
        put = s3.put_object(Bucket="checksums", Key=algorithm, Body=body, ChecksumAlgorithm=algorithm)
        stored = put[f"Checksum{algorithm}"]
        head = s3.head_object(Bucket="checksums", Key=algorithm, ChecksumMode="ENABLED")
        assert head[f"Checksum{algorithm}"] == stored
        got = s3.get_object(Bucket="checksums", Key=algorithm, ChecksumMode="ENABLED")
        assert got["Body"].read() == body and got[f"Checksum{algorithm}"] == stored
        # Never on a range: the checksum is the whole object's.
        part = s3.get_object(Bucket="checksums", Key=algorithm, ChecksumMode="ENABLED", Range="bytes=0-9")
        assert f"Checksum{algorithm}" not in part and part["Body"].read() == body[:10]
    # No checksum mode: no checksum headers.
    assert not any(k.startswith("Checksum") for k in s3.head_object(Bucket="checksums", Key="CRC32"))


def test_a_wrong_checksum_is_refused_and_stores_nothing(s3):
    s3.create_bucket(Bucket="bad-digest")
    assert error(s3.put_object, Bucket="bad-digest", Key="k", Body=b"abc",
                 ChecksumCRC32="AAAAAA==") == ("BadDigest", 400)
    assert error(s3.put_object, Bucket="bad-digest", Key="k", Body=b"abc",
                 ContentMD5="AAAAAAAAAAAAAAAAAAAAAA==") == ("BadDigest", 400)
    assert error(s3.head_object, Bucket="bad-digest", Key="k") == ("404", 404)


def test_ranges(s3):
    s3.create_bucket(Bucket="ranges")
    body = bytes(range(256)) * 4000
    s3.put_object(Bucket="ranges", Key="k", Body=body)
    for header, want in (("bytes=0-0", body[:1]), ("bytes=1000-2999", body[1000:3000]),
                         ("bytes=-10", body[-10:]), ("bytes=1023990-", body[1023990:]),
                         ("bytes=1000000-99999999", body[1000000:])):
        got = s3.get_object(Bucket="ranges", Key="k", Range=header)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206 and got["Body"].read() == want, header
        assert got["ContentRange"].endswith(f"/{len(body)}")
    assert error(s3.get_object, Bucket="ranges", Key="k", Range=f"bytes={len(body)}-") == ("InvalidRange", 416)


def test_conditional_get(s3):
    s3.create_bucket(Bucket="conditional-get")
    put = s3.put_object(Bucket="conditional-get", Key="k", Body=b"v1")
    assert s3.get_object(Bucket="conditional-get", Key="k", IfMatch=put["ETag"])["Body"].read() == b"v1"
    assert error(s3.get_object, Bucket="conditional-get", Key="k", IfMatch='"0000"') == ("PreconditionFailed", 412)
    assert error(s3.get_object, Bucket="conditional-get", Key="k", IfNoneMatch=put["ETag"])[1] == 304


def test_copy_shares_chunks_and_replace_onto_itself_sets_metadata(cluster, s3):
    s3.create_bucket(Bucket="copies")
    body = os.urandom(2 * MIB + 17)
    s3.put_object(Bucket="copies", Key="src", Body=body, Metadata={"a": "1"})
    result = s3.copy_object(Bucket="copies", Key="dst", CopySource={"Bucket": "copies", "Key": "src"})
    assert result["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket="copies", Key="dst")
    assert got["Body"].read() == body and got["Metadata"] == {"a": "1"}
    # No byte copied: the copy refers to the same chunks (storgctl stat lists them).
    src_stat = cluster.storgctl("--json", "stat", "/copies/src").stdout
    dst_stat = cluster.storgctl("--json", "stat", "/copies/dst").stdout
    import json
    assert [c["hash"] for c in json.loads(src_stat)["chunks"]] == [c["hash"] for c in json.loads(dst_stat)["chunks"]]
    s3.copy_object(Bucket="copies", Key="dst", CopySource={"Bucket": "copies", "Key": "dst"},
                   MetadataDirective="REPLACE", Metadata={"mtime": "42"}, ContentType="text/plain")
    head = s3.head_object(Bucket="copies", Key="dst")
    assert head["Metadata"] == {"mtime": "42"} and head["ContentType"] == "text/plain"
    assert head["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert error(s3.copy_object, Bucket="copies", Key="dst",
                 CopySource={"Bucket": "copies", "Key": "dst"}) == ("InvalidRequest", 400)


def test_listing_v2_and_v1_with_delimiters_over_2500_keys(cluster, s3, tmp_path):
    s3.create_bucket(Bucket="many")
    tree = tmp_path / "tree"
    keys = []
    for d in range(26):
        for i in range(100):
            keys.append(f"{chr(97 + d)}/{i:03d}.txt")
    keys += [f"top-{i}" for i in range(10)]
    for k in keys:
        (tree / k).parent.mkdir(parents=True, exist_ok=True)
        (tree / k).write_bytes(k.encode())
    assert cluster.storgctl("put", "-r", str(tree), "/many", timeout=300).returncode == 0
    listed = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="many")
              for o in page.get("Contents", [])]
    assert listed == sorted(keys)
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="many", Delimiter="/",
                                                                PaginationConfig={"PageSize": 7}))
    prefixes = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
    top = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert prefixes == [f"{chr(97 + d)}/" for d in range(26)] and top == sorted(f"top-{i}" for i in range(10))
    v1 = [o["Key"] for page in s3.get_paginator("list_objects").paginate(Bucket="many", Prefix="c/")
          for o in page.get("Contents", [])]
    assert v1 == [f"c/{i:03d}.txt" for i in range(100)]
    v1_delim = list(s3.get_paginator("list_objects").paginate(Bucket="many", Delimiter="/",
                                                             PaginationConfig={"PageSize": 5}))
    assert [p["Prefix"] for page in v1_delim for p in page.get("CommonPrefixes", [])] == prefixes
    after = s3.list_objects_v2(Bucket="many", StartAfter="z/098.txt")
    assert [o["Key"] for o in after["Contents"]][:1] == ["z/099.txt"]
    encoded = s3.list_objects_v2(Bucket="many", Prefix="top-1", EncodingType="url")
    assert [o["Key"] for o in encoded["Contents"]] == ["top-1"]


def test_multipart_upload_list_complete_and_abort(cluster, s3):
    s3.create_bucket(Bucket="multipart")
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(MIB + 3)]
    upload = s3.create_multipart_upload(Bucket="multipart", Key="big", Metadata={"m": "1"})["UploadId"]
    etags = []
    for number, data in enumerate(parts, 1):
        etags.append(s3.upload_part(Bucket="multipart", Key="big", UploadId=upload, PartNumber=number,
                                    Body=data)["ETag"])
    assert etags == [f'"{hashlib.md5(p).hexdigest()}"' for p in parts]
    listed = s3.list_parts(Bucket="multipart", Key="big", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed] == \
        [(i + 1, len(p), etags[i]) for i, p in enumerate(parts)]
    uploads = s3.list_multipart_uploads(Bucket="multipart")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("big", upload)]
    done = s3.complete_multipart_upload(
        Bucket="multipart", Key="big", UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
    whole = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert done["ETag"] == f'"{whole}-3"'
    got = s3.get_object(Bucket="multipart", Key="big")
    assert got["Body"].read() == b"".join(parts) and got["Metadata"] == {"m": "1"}
    assert s3.list_multipart_uploads(Bucket="multipart").get("Uploads", []) == []
    # storgctl get verifies the composite SHA-256 end to end.
    assert cluster.storgctl("get", "/multipart/big", "-", timeout=120).stdout == b"".join(parts)
    # Abort: the upload is gone, its parts with it.
    other = s3.create_multipart_upload(Bucket="multipart", Key="aborted")["UploadId"]
    s3.upload_part(Bucket="multipart", Key="aborted", UploadId=other, PartNumber=1, Body=b"x" * 1000)
    s3.abort_multipart_upload(Bucket="multipart", Key="aborted", UploadId=other)
    assert error(s3.list_parts, Bucket="multipart", Key="aborted", UploadId=other) == ("NoSuchUpload", 404)
    assert error(s3.head_object, Bucket="multipart", Key="aborted") == ("404", 404)
    # A part too small in the middle is refused at Complete; nothing appears.
    small = s3.create_multipart_upload(Bucket="multipart", Key="small")["UploadId"]
    e1 = s3.upload_part(Bucket="multipart", Key="small", UploadId=small, PartNumber=1, Body=b"a")["ETag"]
    e2 = s3.upload_part(Bucket="multipart", Key="small", UploadId=small, PartNumber=2, Body=b"b")["ETag"]
    assert error(s3.complete_multipart_upload, Bucket="multipart", Key="small", UploadId=small,
                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]}) \
        == ("EntityTooSmall", 400)
    assert error(s3.head_object, Bucket="multipart", Key="small") == ("404", 404)


def test_managed_transfer_with_checksums_and_upload_part_copy(s3, tmp_path):
    from boto3.s3.transfer import TransferConfig
    s3.create_bucket(Bucket="managed")
    data = os.urandom(21 * MIB + 5)
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4)
    s3.upload_file(str(local), "managed", "file.bin", Config=config)
    back = tmp_path / "back.bin"
    s3.download_file("managed", "file.bin", str(back), Config=config)
    assert back.read_bytes() == data
    head = s3.head_object(Bucket="managed", Key="file.bin", ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-3"')
    # UploadPartCopy: a whole object, then a range of it.
    upload = s3.create_multipart_upload(Bucket="managed", Key="copied")["UploadId"]
    p1 = s3.upload_part_copy(Bucket="managed", Key="copied", UploadId=upload, PartNumber=1,
                             CopySource={"Bucket": "managed", "Key": "file.bin"})["CopyPartResult"]["ETag"]
    p2 = s3.upload_part_copy(Bucket="managed", Key="copied", UploadId=upload, PartNumber=2,
                             CopySource={"Bucket": "managed", "Key": "file.bin"},
                             CopySourceRange="bytes=100-199")["CopyPartResult"]["ETag"]
    s3.complete_multipart_upload(Bucket="managed", Key="copied", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1},
                                                            {"PartNumber": 2, "ETag": p2}]})
    assert s3.get_object(Bucket="managed", Key="copied")["Body"].read() == data + data[100:200]


def test_delete_objects(s3):
    s3.create_bucket(Bucket="bulk-delete")
    for i in range(30):
        s3.put_object(Bucket="bulk-delete", Key=f"k{i:02d}", Body=b"x")
    result = s3.delete_objects(Bucket="bulk-delete", Delete={"Objects": [{"Key": f"k{i:02d}"} for i in range(20)]
                                                             + [{"Key": "never-was"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == sorted([f"k{i:02d}" for i in range(20)] + ["never-was"])
    assert result.get("Errors", []) == []
    left = [o["Key"] for o in s3.list_objects_v2(Bucket="bulk-delete")["Contents"]]
    assert left == [f"k{i:02d}" for i in range(20, 30)]


def race_once(clients: list, key: str) -> list[object]:
    """Two If-None-Match: * puts of ``key`` let go at once; each one's outcome."""
    barrier = threading.Barrier(len(clients))
    outcomes: list[object] = [None] * len(clients)

    def put(i: int) -> None:
        barrier.wait()
        try:
            clients[i].put_object(Bucket="race", Key=key, Body=f"writer {i}".encode(), IfNoneMatch="*")
            outcomes[i] = "won"
        except ClientError as exc:
            outcomes[i] = code_of(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_conditional_put_race_has_exactly_one_winner(cluster, key, s3):
    s3.create_bucket(Bucket="race")
    clients = [boto3_client(cluster, key, nid) for nid in ("n1", "n2")]
    for round_ in range(5):
        outcomes = race_once(clients, f"lock-{round_}")
        assert sorted(map(str, outcomes)) == sorted(["won", str(("PreconditionFailed", 412))]), outcomes
        winner = outcomes.index("won")
        assert s3.get_object(Bucket="race", Key=f"lock-{round_}")["Body"].read() == f"writer {winner}".encode()
    # If-Match on PUT: only while the ETag is still the one named.
    first = s3.put_object(Bucket="race", Key="cas", Body=b"one")
    s3.put_object(Bucket="race", Key="cas", Body=b"two", IfMatch=first["ETag"])
    assert error(s3.put_object, Bucket="race", Key="cas", Body=b"three", IfMatch=first["ETag"]) \
        == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket="race", Key="cas")["Body"].read() == b"two"


def test_wrong_secret_expired_url_and_roles_are_refused(cluster, key, s3):
    import ssl
    import urllib.error
    import urllib.request
    s3.create_bucket(Bucket="auth")
    s3.put_object(Bucket="auth", Key="k", Body=b"secret data")
    wrong = boto3_client(cluster, type(key)(key.key_id, key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B"),
                                             key.role))
    assert error(wrong.get_object, Bucket="auth", Key="k") == ("SignatureDoesNotMatch", 403)
    unknown = boto3_client(cluster, type(key)("AKIDNOTAKEY000000000", "x" * 40, "readwrite"))
    assert error(unknown.get_object, Bucket="auth", Key="k") == ("InvalidAccessKeyId", 403)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "auth", "Key": "k"}, ExpiresIn=1)
    context = ssl.create_default_context(cafile=str(cluster.certs / "ca.pem"))
    deadline = time.monotonic() + 30
    status = 200
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, context=context).read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            body = exc.read()
            break
        time.sleep(0.2)  # polling (deadline above) for the URL's expiry, which is the point of this check
    assert status == 403 and b"<Code>AccessDenied</Code>" in body and b"<RequestId>" in body, body
    readonly = boto3_client(cluster, create_key(cluster, "reader", "readonly"))
    assert readonly.get_object(Bucket="auth", Key="k")["Body"].read() == b"secret data"
    assert error(readonly.put_object, Bucket="auth", Key="k2", Body=b"x") == ("AccessDenied", 403)
    assert error(readonly.delete_object, Bucket="auth", Key="k") == ("AccessDenied", 403)


def test_every_answer_has_a_request_id_and_errors_are_aws_xml(s3):
    s3.create_bucket(Bucket="shapes")
    ok = s3.put_object(Bucket="shapes", Key="k", Body=b"x")
    assert len(headers_of(ok)["x-amz-request-id"]) >= 16
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket="shapes", Key="missing")
    response = caught.value.response
    assert response["Error"]["Code"] == "NoSuchKey" and response["Error"]["Message"]
    assert response["ResponseMetadata"]["RequestId"] == headers_of(response)["x-amz-request-id"]
    assert "x-storg-index" in headers_of(response)


def test_large_object_streams(s3, tmp_path):
    s3.create_bucket(Bucket="large")
    data = io.BytesIO(os.urandom(64 * MIB))
    s3.put_object(Bucket="large", Key="one", Body=data)
    got = s3.get_object(Bucket="large", Key="one")["Body"]
    digest = hashlib.md5()
    while chunk := got.read(MIB):
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.md5(data.getvalue()).hexdigest()


def test_many_clients_at_once(cluster, key):
    clients = [boto3_client(cluster, key, nid) for nid in ("n1", "n2", "n3")]
    clients[0].create_bucket(Bucket="parallel")

    def work(i: int) -> bytes:
        s3 = clients[i % 3]
        s3.put_object(Bucket="parallel", Key=f"k{i}", Body=str(i).encode() * 100)
        return s3.get_object(Bucket="parallel", Key=f"k{i}")["Body"].read()

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(work, range(64))) == [str(i).encode() * 100 for i in range(64)]


def peak_rss_mib(cluster: ProcCluster, nid: str) -> float:
    proc = cluster.nodes[nid].proc
    assert proc is not None
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


BIG_MIB = int(os.environ.get("STORG_S3_BIG_MB", "1024"))
"""The single PutObject of the memory check (1 GiB; STORG_S3_BIG_MB=5120 for S3's largest)."""


def test_a_large_put_and_get_keep_every_node_under_200_mib(cluster, s3, tmp_path):
    s3.create_bucket(Bucket="huge")
    local = tmp_path / "huge.bin"
    digest = hashlib.sha256()
    block = os.urandom(MIB)
    with open(local, "wb") as f:
        for i in range(BIG_MIB):
            piece = i.to_bytes(8, "big") + block[8:]
            f.write(piece)
            digest.update(piece)
    with open(local, "rb") as f:
        s3.put_object(Bucket="huge", Key="one-put", Body=f)  # one PUT, streamed (aws-chunked)
    got = s3.get_object(Bucket="huge", Key="one-put")["Body"]
    back = hashlib.sha256()
    while chunk := got.read(4 * MIB):
        back.update(chunk)
    assert back.hexdigest() == digest.hexdigest()
    peaks = {nid: peak_rss_mib(cluster, nid) for nid in cluster.nodes}
    assert all(peak < 200 for peak in peaks.values()), peaks
