"""Remote file paths: the one normal form every layer agrees on.

storgctl checks a path before sending anything and the server and the
state machine check it again, so all three must apply the very same rules;
they live here.  The normal form is what the namespace stores and ``ls``
prints: ``/``-separated, exactly one leading ``/``, no empty, ``.`` or
``..`` segments (so a path names one file and cannot climb out of a
folder), no NUL (C-string APIs would cut it short), and at most
:data:`MAX_PATH_BYTES` bytes of UTF-8 after the leading ``/`` (a bound on
entry and frame sizes).  4,096 is what an S3 object needs (a 1,024-byte key
below a bucket of up to 63 bytes) with room to spare, and still small
beside every bound that carries a path: STR16 fields (65,535 bytes), the
smallest proposal limit (64 KiB, a move's two paths are 8 KiB), a frame
(8 MiB) and a snapshot's file batch (64 KiB, a longer file goes alone).
"""

from __future__ import annotations

MAX_PATH_BYTES = 4096
"""The longest normal form without its leading ``/``, counted in bytes of UTF-8, not characters."""

ROOT = "/"
"""The prefix that lists everything; it is not a file path itself."""


class InvalidPath(ValueError):
    """A remote path that breaks one of the rules; the message is a one-line reason."""


def normalize_path(text: object) -> str:
    """The normal form of a file path (``"a/b"`` -> ``"/a/b"``), or InvalidPath.

    A leading ``/`` is optional; a second one (``"//a"``), a trailing one
    (``"a/"``) or ``"/"`` alone all make an empty segment, which is refused
    rather than silently collapsed, so two spellings never name one file.
    """
    if not isinstance(text, str):
        raise InvalidPath(f"a path must be text, not {type(text).__name__}")
    if not text:
        raise InvalidPath("the path is empty")
    if "\x00" in text:
        raise InvalidPath("the path contains a NUL character")
    body = text.removeprefix("/")
    for segment in body.split("/"):
        if not segment:
            raise InvalidPath(f"{_shown(text)} has an empty segment (a doubled, leading or trailing '/')")
        if segment in (".", ".."):
            raise InvalidPath(f"{_shown(text)} has a {segment!r} segment")
    normal = "/" + body
    try:
        size = len(normal.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidPath(f"{_shown(text)} is not valid Unicode (lone surrogate)") from None
    if size - 1 > MAX_PATH_BYTES:
        raise InvalidPath(f"the path is {size - 1} bytes of UTF-8 after its leading '/', "
                          f"more than {MAX_PATH_BYTES}")
    return normal


def path_bytes(normal: str) -> int:
    """The length :data:`MAX_PATH_BYTES` limits: bytes of UTF-8 of a normal form after its ``/``."""
    return len(normal.encode("utf-8")) - 1


def normalize_prefix(text: object) -> str:
    """The normal form of an ``ls`` folder prefix: ``""`` or ``"/"`` mean everything (``"/"``).

    Anything else must be a valid path; it names a folder (or a file) and
    matches what is at or below it, see :func:`is_at_or_below`.
    """
    if text == "" or text == ROOT:
        return ROOT
    return normalize_path(text)


def is_at_or_below(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` itself or inside the folder ``prefix``.

    Both must be normal forms.  ``/a`` matches ``/a`` and ``/a/b`` but not
    ``/ab``: prefixes are whole segments, not characters.
    """
    if prefix == ROOT:
        return True
    return path == prefix or path.startswith(prefix + "/")


def _shown(text: str) -> str:
    """The path quoted for a one-line message, shortened when very long."""
    if len(text) > 80:
        text = text[:60] + "..." + text[-17:]
    return repr(text)
