"""Helpers for the S3 protocol tests: requests signed by botocore's own signers.

botocore is the reference client here: what its ``S3SigV4Auth`` and
``S3SigV4QueryAuth`` produce is what boto3 and the aws CLI send, so
``authenticate`` must accept it byte for byte.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY = "AKIDSTORGEXAMPLE0001"
SECRET = "s3cr3t/K7MDENG+bPxRfiCYEXAMPLEKEY"


def lookup(key: str) -> str | None:
    return SECRET if key == ACCESS_KEY else None


class _FixedPayload(S3SigV4Auth):
    """botocore's S3 signer with the payload mode given (it sets the header from payload())."""

    fixed = ""

    def payload(self, request):
        return self.fixed


class Signed:
    """A request as the wire carries it: method, raw path, raw query, header list, body."""

    def __init__(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> None:
        parts = urlsplit(url)
        self.method = method
        self.path = parts.path
        self.query = parts.query
        self.headers = headers
        self.body = body

    def replace_header(self, name: str, value: str) -> list[tuple[str, str]]:
        return [(n, value if n == name else v) for n, v in self.headers]


def sign(method: str = "PUT", key: str = "bucket/some key", *, body: bytes = b"hello", query: str = "",
         headers: dict[str, str] | None = None, region: str = "us-east-1", presign: int = 0,
         secret: str = SECRET, url_path: str | None = None, https: bool = False,
         content_sha256: str = "") -> Signed:
    """A request signed by botocore: the path is the key quoted as botocore quotes it (safe='/~').

    ``content_sha256`` sets the payload mode botocore signs (it picks one
    itself otherwise: the body's hash over http).
    """
    path = url_path if url_path is not None else "/" + quote(key, safe="/~")
    scheme = "https" if https else "http"
    url = f"{scheme}://127.0.0.1:9000{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    credentials = Credentials(ACCESS_KEY, secret)
    if presign:
        S3SigV4QueryAuth(credentials, "s3", region, expires=presign).add_auth(request)
    else:
        signer = _FixedPayload(credentials, "s3", region) if content_sha256 else S3SigV4Auth(credentials, "s3", region)
        signer.fixed = content_sha256
        signer.add_auth(request)
    prepared = request.prepare()
    wire = [("host", "127.0.0.1:9000")]
    wire += [(name.lower(), value if isinstance(value, str) else value.decode()) for name, value in
             prepared.headers.items()]
    return Signed(method, prepared.url, wire, body)


