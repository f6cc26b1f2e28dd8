"""Run a body through boto3's own response parser: what a real client makes of our XML.

A boto3 client whose ``before-send`` hook answers every request with the
given status, headers and body, so nothing leaves the process; the call's
return value (or the ClientError it raises) is what boto3 parsed.
"""

from __future__ import annotations

import boto3
from botocore.awsrequest import AWSResponse
from botocore.config import Config


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **kwargs):
        yield self._body

    def read(self, *args, **kwargs):
        body, self._body = self._body, b""
        return body


def client_answering(body: bytes, status: int = 200, headers: dict[str, str] | None = None):
    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9", aws_access_key_id="AKID",
                          aws_secret_access_key="secret", region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    sent = []

    def before_send(request, **kwargs):
        sent.append(request)
        return AWSResponse(request.url, status, dict(headers or {}), _Raw(body))

    client.meta.events.register("before-send", before_send)
    client.sent = sent
    return client
