"""A node killed during an S3 upload: the client's retry succeeds, or the upload fails cleanly;
never a partial object.

Two cases on a 3-node cluster of real processes with TLS on, each a boto3
PutObject of 96 MiB whose body is read through a counter, so the kill
lands mid-body:

- the leader is killed (the gateway's node lives): the gateway's cluster
  upload fails, it answers 503, and boto3's retry (the body is seekable)
  succeeds once a new leader is elected; the object is whole;
- the gateway's own node is killed: the connection drops, boto3's retries
  find no one on that port, and the call fails; no object appears on the
  other nodes.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from storg.testing.devcluster import ProcCluster, wait_for
from storg.testing.s3clients import boto3_client, create_key

pytestmark = pytest.mark.process

MIB = 1024 * 1024
SIZE = 96 * MIB
KILL_AFTER = 24 * MIB


class CountingBody(io.BytesIO):
    """A seekable body that sets ``reached`` once ``KILL_AFTER`` bytes have been read (the first time)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reached = threading.Event()

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if self.tell() >= KILL_AFTER:
            self.reached.set()
        return data


@pytest.fixture
def cluster(tmp_path):
    c = ProcCluster.create(tmp_path, size=3, s3=True)
    c.start_all()
    try:
        wait_for(c.leader, 60, "a leader", 0.2)
        yield c
    finally:
        c.close()


def upload_in_thread(s3, body: CountingBody, key: str) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def put() -> None:
        try:
            outcome.append(s3.put_object(Bucket="faults", Key=key, Body=body))
        except (ClientError, BotoCoreError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=put)
    thread.start()
    return thread, outcome


def test_leader_killed_mid_upload_the_retry_succeeds(cluster):
    key = create_key(cluster, "faults", "readwrite")
    leader = cluster.leader()
    gateway_node = next(n for n in ("n1", "n2", "n3") if n != leader)
    s3 = boto3_client(cluster, key, gateway_node, retries={"max_attempts": 8, "mode": "standard"},
                      read_timeout=120)
    s3.create_bucket(Bucket="faults")
    data = os.urandom(SIZE)
    body = CountingBody(data)
    thread, outcome = upload_in_thread(s3, body, "obj")
    assert body.reached.wait(120), "the upload never got going"
    cluster.kill(leader)
    thread.join(300)
    assert not thread.is_alive()
    assert isinstance(outcome[0], dict), outcome
    # The first attempt was cut by the kill (answered 503), and the retry went through.
    assert "S3 PUT /faults/obj: ServiceUnavailable" in cluster.log_text(gateway_node)
    assert outcome[0]["ResponseMetadata"]["RetryAttempts"] >= 1
    assert outcome[0]["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = s3.get_object(Bucket="faults", Key="obj")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_gateway_node_killed_mid_upload_fails_cleanly(cluster):
    key = create_key(cluster, "faults", "readwrite")
    s3 = boto3_client(cluster, key, "n1", retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5)
    s3.create_bucket(Bucket="faults")
    body = CountingBody(os.urandom(SIZE))
    thread, outcome = upload_in_thread(s3, body, "obj")
    assert body.reached.wait(120), "the upload never got going"
    cluster.kill("n1")
    thread.join(300)
    assert not thread.is_alive()
    assert isinstance(outcome[0], (ClientError, BotoCoreError)), outcome
    other = boto3_client(cluster, key, "n2")
    wait_for(lambda: cluster.leader(among=["n2", "n3"]), 60, "a leader among n2 and n3", 0.2)
    with pytest.raises(ClientError) as caught:
        other.head_object(Bucket="faults", Key="obj")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert cluster.storgctl("ls", "/faults/", nodes=["n2", "n3"]).stdout == b""
