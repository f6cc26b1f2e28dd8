"""The twisted.web site of ``http_listen``: its resources and nothing else.

Routes: ``/`` and ``/ui`` the status page (static HTML, CSS and JS shipped
in the package: no CDN, it works offline); ``/static/*`` those files;
``/api/status`` the JSON the page polls; ``/metrics`` Prometheus text;
``/health`` and ``/ready``.  Any other path is 404, and only GET and HEAD
are served.

Every resource renders on the reactor thread from figures that are O(members)
to read; the one costly rendering (the metrics text) is done in a thread by
:meth:`~storg.server.http.metrics.NodeMetrics.scrape`.  The site is bound to
the node's listener with the node's TLS material when it has a ``tls``
section, so a browser or scraper must present a certificate from the
cluster's CA (any role may read; see README.rst, "Metrics and the status
page").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET

from storg.server.http import health as health_checks
from storg.server.http.metrics import NodeMetrics
from storg.server.http.view import ClusterView

log = Logger(namespace="storg.http")

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"app.js": b"text/javascript; charset=utf-8", "style.css": b"text/css; charset=utf-8",
                "index.html": b"text/html; charset=utf-8"}

SECURITY_HEADERS = {
    b"X-Content-Type-Options": b"nosniff",
    b"Content-Security-Policy": b"default-src 'self'; frame-ancestors 'none'",
    b"Referrer-Policy": b"no-referrer",
}


def _headers(request: Any, content_type: bytes, cache: bool = False) -> None:
    request.setHeader(b"Content-Type", content_type)
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)
    request.setHeader(b"Cache-Control", b"max-age=60" if cache else b"no-store")


class _Leaf(resource.Resource):
    isLeaf = True
    allowedMethods = (b"GET", b"HEAD")


class StaticFile(_Leaf):
    """One file of the page, read once when the site is built (they are a few KiB)."""

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: Any) -> bytes:
        _headers(request, self.content_type, cache=True)
        return self.body


class JSONResource(_Leaf):
    """A JSON body from ``make()``: ``(status, dict)`` or a Deferred of it."""

    def __init__(self, make: Callable[[], Any]) -> None:
        super().__init__()
        self.make = make

    def render_GET(self, request: Any) -> Any:
        return _respond(request, defer.maybeDeferred(self.make), _json_body)


class MetricsResource(_Leaf):
    def __init__(self, metrics: NodeMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> Any:
        return _respond(request, self.metrics.scrape().addCallback(lambda text: (200, text)), _metrics_body)


def _json_body(request: Any, result: Any) -> bytes:
    status, body = result if isinstance(result, tuple) else (200, result)
    request.setResponseCode(status)
    _headers(request, b"application/json")
    return json.dumps(body, sort_keys=True).encode() + b"\n"


def _metrics_body(request: Any, result: tuple[int, bytes]) -> bytes:
    request.setResponseCode(result[0])
    _headers(request, CONTENT_TYPE_LATEST.encode())
    return result[1]


def _respond(request: Any, d: defer.Deferred, encode: Callable[[Any, Any], bytes]) -> Any:
    """Write ``d``'s result with ``encode`` when it fires; a failure is a 500 and a log line."""
    gone = [False]
    request.notifyFinish().addErrback(lambda _: gone.__setitem__(0, True))

    def write(result: Any) -> None:
        if gone[0]:
            return
        body = encode(request, result)
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def failed(failure: Any) -> None:
        log.failure("rendering {path} failed", failure, path=request.path)
        if gone[0]:
            return
        request.setResponseCode(500)
        _headers(request, b"text/plain; charset=utf-8")
        request.write(f"internal error: {failure.getErrorMessage()}\n".encode())
        request.finish()

    d.addCallback(write).addErrback(failed)
    return NOT_DONE_YET


class Root(resource.Resource):
    """``/``: the page; children for the rest."""

    def __init__(self, page: StaticFile) -> None:
        super().__init__()
        self.page = page

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        if path == b"":
            return self.page
        return resource.NoResource()

    def render_GET(self, request: Any) -> bytes:
        return self.page.render_GET(request)


class QuietSite(server.Site):
    """A Site without an access log: a scraper each second would fill the node's log."""

    def log(self, request: Any) -> None:
        pass


def _put(parent: resource.Resource, name: bytes, child: resource.Resource) -> None:
    # Resource implements IResource through zope.interface, which mypy does not see.
    parent.putChild(name, cast(IResource, child))


def build_site(metrics: NodeMetrics, view: ClusterView, node: Any, started: Callable[[], bool]) -> server.Site:
    """The Site for ``http_listen``; read the static files now (start-up, before serving)."""
    files = {name: StaticFile((STATIC / name).read_bytes(), kind) for name, kind in STATIC_FILES.items()}
    root = Root(files["index.html"])
    _put(root, b"ui", files["index.html"])
    static = resource.Resource()
    for name, leaf in files.items():
        _put(static, name.encode(), leaf)
    _put(root, b"static", static)
    api = resource.Resource()
    _put(api, b"status", JSONResource(lambda: (200, view.status())))
    _put(root, b"api", api)
    _put(root, b"metrics", MetricsResource(metrics))
    _put(root, b"health", JSONResource(lambda: health_checks.health(node)))
    _put(root, b"ready", JSONResource(lambda: health_checks.ready(node, started())))
    site = QuietSite(root)
    site.displayTracebacks = False
    site.noisy = False
    return site
