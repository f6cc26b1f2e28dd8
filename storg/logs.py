"""``log: {format: json}``: one JSON object per line, the node id on every event, repeats summarised.

twistd writes a text log by default.  A node whose config says
``log: {format: json}`` gives twistd's application an
:class:`~twisted.logger.ILogObserver` component instead (the documented
way for an application to choose its observer: twistd uses it in place of
its own), built by :func:`json_observer`: twisted.logger's JSON format
(``eventAsJSON``: the format string, its fields, level, namespace, time),
one event per line (no record separator), each with ``"log_node": ID`` and
``"text"``, the formatted message.  ``log_node``, not ``node``: many of
storg's own events have a ``node`` field of their own, which names a peer
as often as this node, and must reach the log as it was logged.

The text log (no ``log`` section, or ``format: text``) is twistd's own
observer, built the way twistd builds it (:func:`text_observer`), behind the
same :class:`Summarizer`.

Repeated warnings are rate-limited by :class:`Summarizer`: a warning (or
error) like one already written in the last ``window`` seconds (same
namespace and text, digits aside: the same peer down, the same refused
source with another source port) is counted, not written; the next one
after the window carries ``log_repeated``, how many were held back, and
:meth:`Summarizer.flush` (a timer the service starts) writes a summary
event for any still held.  Info events always pass: they are not repeated
by design.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, eventAsJSON, formatEvent
from zope.interface import implementer

WINDOW = 60.0
MAX_KEYS = 1024
_DIGITS = re.compile(r"\d+")
_LOUD = (LogLevel.warn, LogLevel.error, LogLevel.critical)


def _key(event: dict[str, Any]) -> tuple[str, str]:
    text = formatEvent(event) if event.get("log_format") is not None else ""
    return str(event.get("log_namespace", "")), _DIGITS.sub("#", text)[:200]


@implementer(ILogObserver)
class Summarizer:
    """Adds the node id, holds back repeats of a warning within ``window`` seconds, forwards the rest."""

    def __init__(self, node_id: str, inner: Callable[[dict[str, Any]], None], *, window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self.node_id = node_id
        self.inner = inner
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._seen: dict[tuple[str, str], list[Any]] = {}
        """key -> [first time in this window, repeats held back, last event held back]."""

    def __call__(self, event: dict[str, Any]) -> None:
        event = dict(event, log_node=self.node_id)
        if event.get("log_level") in _LOUD:
            key = _key(event)
            now = self.clock()
            state = self._seen.get(key)
            if state is not None and now - state[0] < self.window:
                state[1] += 1
                state[2] = event
                return
            if state is not None and state[1]:
                event["log_repeated"] = state[1]
            if len(self._seen) >= self.max_keys:
                self.flush(force=True)
            self._seen[key] = [now, 0, None]
        self.inner(event)

    def flush(self, force: bool = False) -> None:
        """Write a summary for each warning held back whose window has ended (all, if ``force``)."""
        now = self.clock()
        for key, (first, repeats, last) in list(self._seen.items()):
            if not force and now - first < self.window:
                continue
            del self._seen[key]
            if repeats and last is not None:
                summary = dict(last, log_repeated=repeats,
                               log_format="(repeated {log_repeated} times in {log_window:.0f} s) " +
                               str(last.get("log_format", "")),
                               log_window=now - first)
                self.inner(summary)


def json_writer(out: IO[str]) -> Callable[[dict[str, Any]], None]:
    """One event as one JSON line on ``out``, flushed (a crash must not eat the last lines).

    Each line carries ``text``, the formatted message, beside twisted.logger's
    fields: what a log search shows, without re-implementing its formatting.
    """

    def write(event: dict[str, Any]) -> None:
        event = dict(event, text=formatEvent(event))
        try:
            line = eventAsJSON(event)
        except Exception:  # an unserializable field: keep the event, as text
            line = eventAsJSON({"log_level": event.get("log_level"), "log_namespace": event.get("log_namespace"),
                                "log_node": event.get("log_node"), "log_format": "{text}",
                                "text": formatEvent(event), "log_time": event.get("log_time")})
        out.write(line + "\n")
        out.flush()

    return write


def text_observer(node_id: str, twistd_options: Any) -> Summarizer | None:
    """twistd's own text observer (its ``--logfile``, stdout with ``-n``, SIGUSR1 rotation),
    behind a :class:`Summarizer`: the text log unchanged, repeated warnings summarised.

    Built by twistd's ``UnixAppLogger`` from twistd's options, exactly as
    twistd would build it.  None (twistd then logs as it always does) when
    that is not possible: not run by twistd, ``--syslog`` (a legacy
    observer), ``--logger`` (the operator chose), or a twistd whose
    internals differ.
    """
    if twistd_options is None or twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    try:
        from twisted.scripts._twistd_unix import UnixAppLogger
        inner = UnixAppLogger(twistd_options)._getLogObserver()
    except Exception:  # not twistd's unix runner, or its internals moved: keep its default
        return None
    if not ILogObserver.providedBy(inner):
        return None
    return Summarizer(node_id, inner)


def json_observer(node_id: str, path: str | None = None) -> Summarizer:
    """The observer of ``log: {format: json}``: to ``path`` (appended), else the real stdout.

    Call it before twistd starts logging: it keeps the stdout of that moment,
    since twistd then redirects ``sys.stdout`` into the log itself.
    """
    out: IO[str] = open(path, "a", encoding="utf-8") if path else sys.stdout  # noqa: SIM115 (lives as long as the process)
    return Summarizer(node_id, json_writer(out))
