"""S3 errors: one exception type and the AWS error document.

Every refusal in :mod:`storg.s3` is an :class:`S3Error` carrying the AWS
error code clients switch on (``NoSuchKey``, ``SignatureDoesNotMatch``...),
the HTTP status and a message written for a person.  The gateway turns any
of them into the response with :func:`render_error`, so a bad request is
answered the way S3 answers it and never as a 500.
"""

from __future__ import annotations

from storg.s3.xmltext import XML_DECLARATION, element


class S3Error(Exception):
    """A request S3 would refuse.

    ``details`` are extra elements of the error document, in order (AWS adds
    some: ``Key``, ``BucketName``, ``RequestTime``/``ServerTime`` for a
    skewed clock, ``ActualObjectSize`` for a bad range...).  ``headers`` are
    response headers the refusal needs (none usually).
    """

    def __init__(self, code: str, message: str, status: int, resource: str = "", *,
                 details: tuple[tuple[str, str], ...] = (),
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.resource = resource
        self.details = details
        self.headers = headers


def render_error(err: S3Error, resource: str, request_id: str) -> bytes:
    """The error document S3 sends (no namespace on ``<Error>``, as S3 does).

    ``resource`` is the request's path; the error's own, when it has one,
    wins (a DeleteObjects entry names its key, say).
    """
    parts = [element("Code", err.code), element("Message", err.message)]
    parts.extend(element(name, value) for name, value in err.details)
    parts.append(element("Resource", err.resource or resource))
    parts.append(element("RequestId", request_id))
    return f"{XML_DECLARATION}<Error>{''.join(parts)}</Error>".encode()


# The refusals raised from more than one place, so that the code and the
# status are written once.

def access_denied(message: str = "Access Denied") -> S3Error:
    return S3Error("AccessDenied", message, 403)


def invalid_argument(message: str, name: str = "", value: str = "") -> S3Error:
    details = (("ArgumentName", name), ("ArgumentValue", value)) if name else ()
    return S3Error("InvalidArgument", message, 400, details=details)


def invalid_request(message: str) -> S3Error:
    return S3Error("InvalidRequest", message, 400)


def malformed_xml(message: str = "The XML you provided was not well-formed or did not validate "
                                 "against our published schema") -> S3Error:
    return S3Error("MalformedXML", message, 400)


def incomplete_body(message: str = "You did not provide the number of bytes specified by the "
                                   "Content-Length HTTP header") -> S3Error:
    return S3Error("IncompleteBody", message, 400)
