"""``http_listen``: the status page, ``/metrics``, ``/health`` and ``/ready`` of one node.

See docs/architecture.rst, section "Observability".  Everything here reads
the node on the reactor thread; only the text rendering of a scrape runs in
a thread, over values the reactor published.
"""
