"""The gateway on a real single-node cluster in this process (TLS on), driven by boto3 in a thread.

The quick loop's end-to-end check: a NodeService with ``s3_listen`` and the
GatewayService the daemon would add, an access key made through the client
library (as ``storgctl s3 key create`` does), and boto3 as it comes.  What
is checked here is what needs the node's insides: the key table read in
process (a revoked key is refused from its entry on), the expiry of
abandoned multipart uploads, and that a refused upload leaves no file.
The real-client matrix is in tests/process/test_s3_*.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
import zlib
from pathlib import Path

import pytest
import pytest_twisted
import yaml
from botocore.exceptions import ClientError
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from storg.client.api import StorgClient
from storg.client.errors import NotFoundError
from storg.config import load_config
from storg.gateway.multipart import expire_uploads
from storg.gateway.service import GatewayService
from storg.net.certs import init_dir
from storg.net.credentials import TLSCredentials
from storg.net.local_pipe import PipeEnd
from storg.server.service import NodeService
from storg.testing.devcluster import free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def _wait(condition, what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


class Node:
    def __init__(self, service: NodeService, gateway: GatewayService, certs: Path, s3_port: int) -> None:
        self.service = service
        self.gateway = gateway
        self.certs = certs
        self.endpoint = f"https://127.0.0.1:{s3_port}"
        self.admin = StorgClient([str(service.config.client_listen)], reactor=reactor,
                                 tls=TLSCredentials(certs / "ca.pem", certs / "admin.pem", certs / "admin-key.pem"))

    def boto3(self, key_id: str, secret: str):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key_id,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            verify=str(self.certs / "ca.pem"),
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


@pytest_twisted.async_yield_fixture
async def node(tmp_path: Path):
    certs = tmp_path / "certs"
    init_dir(str(certs), ["n1"])
    peer, client, s3_port = free_port(), free_port(), free_port()
    path = tmp_path / "n1.yaml"
    path.write_text(yaml.safe_dump({
        "node_id": "n1", "data_dir": "data", "peer_listen": f"127.0.0.1:{peer}",
        "client_listen": f"127.0.0.1:{client}", "s3_listen": f"127.0.0.1:{s3_port}",
        "cluster": {"n1": {"peer": f"127.0.0.1:{peer}", "client": f"127.0.0.1:{client}"}},
        "tls": {"ca": "certs/ca.pem", "cert": "certs/n1.pem", "key": "certs/n1-key.pem"},
        "s3": {"multipart_expiry_s": 3600},
    }))
    service = NodeService(load_config(path), reactor)
    gateway = GatewayService(service, reactor)
    gateway.setServiceParent(service)
    service.startService()
    n = Node(service, gateway, certs, s3_port)
    try:
        await _wait(lambda: service.node is not None and service.node.is_leader(), "self-election")
        yield n
    finally:
        n.admin.close()
        await service.stopService()


def code_of(call, *args, **kwargs) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    return caught.value.response["Error"]["Code"]


@pytest_twisted.ensureDeferred
async def test_round_trip_and_a_revoked_key(node):
    key_id, secret = await node.admin.s3_key_create("alice", "readwrite")
    s3 = node.boto3(key_id, secret)
    body = b"hello from boto3 " * 1000

    def work() -> dict:
        s3.create_bucket(Bucket="round-trip")
        put = s3.put_object(Bucket="round-trip", Key="dir/k", Body=body, Metadata={"x": "1"})
        got = s3.get_object(Bucket="round-trip", Key="dir/k")
        return {"put": put, "body": got["Body"].read(), "meta": got["Metadata"],
                "index": int(got["ResponseMetadata"]["HTTPHeaders"]["x-storg-index"])}

    done = await deferToThread(work)
    assert done["put"]["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert done["body"] == body and done["meta"] == {"x": "1"}
    info = await node.admin.stat("/round-trip/dir/k")
    assert info.attrs.etag == hashlib.md5(body).hexdigest() and done["index"] >= info.version
    await node.admin.s3_key_revoke(key_id)
    assert await deferToThread(code_of, s3.get_object, Bucket="round-trip", Key="dir/k") == "InvalidAccessKeyId"


@pytest_twisted.ensureDeferred
async def test_the_gateway_reaches_its_own_node_through_memory_with_the_nodes_identity(node):
    """No loopback TLS hop inside the process: the gateway's connection to its node is a pipe,
    counted by the client port like any connection, and the port knows it is the node itself."""
    key_id, secret = await node.admin.s3_key_create("dave", "readwrite")
    s3 = node.boto3(key_id, secret)

    def work() -> bytes:
        s3.create_bucket(Bucket="piped")
        s3.put_object(Bucket="piped", Key="k", Body=b"through memory")
        return s3.get_object(Bucket="piped", Key="k")["Body"].read()

    assert await deferToThread(work) == b"through memory"
    own = str(node.service.config.client_listen)
    assert isinstance(node.gateway.client._connections[own].transport, PipeEnd)
    piped = [c for c in node.service.client_port.connections if isinstance(c.transport, PipeEnd)]
    assert len(piped) == 1
    assert piped[0].identity is not None and piped[0].identity.name == "n1" and piped[0].identity.is_node


@pytest_twisted.ensureDeferred
async def test_a_large_put_with_its_checksum_in_the_trailer_is_one_entry(node):
    key_id, secret = await node.admin.s3_key_create("erin", "readwrite")
    s3 = node.boto3(key_id, secret)
    body = os.urandom(3 * 1024 * 1024 + 5)  # past SMALL_BODY: streamed into the cluster as it arrives
    sent: list[dict] = []
    s3.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers)))
    await deferToThread(s3.create_bucket, Bucket="trailer")
    await node.admin.put(io.BytesIO(b"settle"), "/trailer/settle")  # every earlier entry is applied now
    before = node.service.node.applied_index
    put = await deferToThread(s3.put_object, Bucket="trailer", Key="big", Body=body)
    headers = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in sent[-1].items()}
    assert headers.get("x-amz-trailer") == "x-amz-checksum-crc32", headers  # boto3 sends it after the body
    crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    assert put["ChecksumCRC32"] == crc
    info = await node.admin.stat("/trailer/big")
    assert info.attrs.checksums == (("CRC32", crc),) and info.attrs.etag == hashlib.md5(body).hexdigest()
    assert node.service.node.applied_index == before + 1 == info.version  # the put's entry, no second write


@pytest_twisted.ensureDeferred
async def test_a_refused_upload_leaves_nothing(node):
    key_id, secret = await node.admin.s3_key_create("bob", "readwrite")
    s3 = node.boto3(key_id, secret)

    def work() -> list[str]:
        s3.create_bucket(Bucket="refused")
        return [code_of(s3.put_object, Bucket="refused", Key="k", Body=b"x" * 100_000, ChecksumSHA256="A" * 43 + "="),
                code_of(s3.put_object, Bucket="refused", Key="a//b", Body=b"x")]

    assert await deferToThread(work) == ["BadDigest", "InvalidArgument"]
    with pytest.raises(NotFoundError):
        await node.admin.stat("/refused/k")


@pytest_twisted.ensureDeferred
async def test_abandoned_uploads_expire(node):
    key_id, secret = await node.admin.s3_key_create("carol", "readwrite")
    s3 = node.boto3(key_id, secret)

    def start() -> str:
        s3.create_bucket(Bucket="expiry")
        upload = s3.create_multipart_upload(Bucket="expiry", Key="k")["UploadId"]
        s3.upload_part(Bucket="expiry", Key="k", UploadId=upload, PartNumber=1, Body=b"part")
        return upload

    upload = await deferToThread(start)
    assert await node.gateway.expire_now() == 0  # an hour is not up
    # An hour and a second later (the clock given, not waited for): it goes, parts and all.
    removed = await expire_uploads(node.gateway.client, time.time_ns() + 3601 * 10**9, 3600)
    assert removed == 1
    assert await deferToThread(code_of, s3.list_parts, Bucket="expiry", Key="k", UploadId=upload) == "NoSuchUpload"
    assert [f.path for f in await node.admin.ls("/.storg-multipart")] == []
