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




def crt_sign(method: str, path: str, query: str = "", headers: tuple[tuple[str, str], ...] = (),
             body_value: str = "", presign: int = 0, region: str = "us-west-2") -> tuple[str, str, list]:
    """A request signed by awscrt's signer (aws-c-auth: the C SigV4 of the AWS CRT clients), S3 settings.

    ``path`` and ``query`` go on the wire as given (already escaped).
    Returns (raw path, raw query, header list) as the server receives them.
    """
    import datetime

    from awscrt import auth, http

    from storg.s3.sigv4 import EMPTY_SHA256

    target = path + (f"?{query}" if query else "")
    request = http.HttpRequest(method, target, http.HttpHeaders([("host", "127.0.0.1:9000"), *headers]))
    config = auth.AwsSigningConfig(
        algorithm=auth.AwsSigningAlgorithm.V4,
        signature_type=(auth.AwsSignatureType.HTTP_REQUEST_QUERY_PARAMS if presign
                        else auth.AwsSignatureType.HTTP_REQUEST_HEADERS),
        credentials_provider=auth.AwsCredentialsProvider.new_static(ACCESS_KEY, SECRET),
        region=region, service="s3", date=datetime.datetime.now(datetime.UTC),
        use_double_uri_encode=False, should_normalize_uri_path=False,  # S3's settings
        signed_body_value=body_value or (auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD if presign else EMPTY_SHA256),
        signed_body_header_type=(auth.AwsSignedBodyHeaderType.NONE if presign
                                 else auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256),
        expiration_in_seconds=presign or None)
    auth.aws_sign_request(request, config).result()
    raw_path, _, raw_query = request.path.partition("?")
    return raw_path, raw_query, [(name.lower(), value) for name, value in request.headers]
