"""A loopback HTTP proxy that holds a client certificate, for driving the status page in a browser.

A TLS node's ``http_listen`` asks every client for a certificate from the
cluster's CA.  A headless Chromium can present one only through an NSS
database and a system-wide policy, which a test must not install.  So the
browser test puts this in front of one node: plain HTTP on 127.0.0.1 to
the browser, HTTPS with the admin's (or any role's) certificate to the
node, as an operator's reverse proxy would.  GET only; bodies are small.
"""

from __future__ import annotations

import ssl
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PASSED_HEADERS = ("Content-Type", "Cache-Control", "Content-Security-Policy", "X-Content-Type-Options")


class CertProxy:
    """``http://127.0.0.1:PORT/x`` -> ``https://upstream/x`` with a client certificate."""

    def __init__(self, upstream: str, ca: Path, cert: Path, key: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        self.upstream = upstream
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                try:
                    with urllib.request.urlopen(f"https://{proxy.upstream}{self.path}", context=context,
                                                timeout=5) as r:
                        status, headers, body = r.status, r.headers, r.read()
                except urllib.error.HTTPError as e:
                    status, headers, body = e.code, e.headers, e.read()
                except OSError as e:
                    status, headers, body = 502, None, f"upstream unreachable: {e}".encode()
                self.send_response(status)
                for name in PASSED_HEADERS:
                    if headers is not None and headers.get(name):
                        self.send_header(name, headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="cert-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
