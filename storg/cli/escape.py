"""Paths made safe to print on a terminal, reversibly.

A remote path may hold any character but NUL (``storg.paths``), so a file
named ``"a\\x1b]0;owned\\x07"`` or ``"report\\nfake line"`` would, printed
as it is by ``storgctl ls``, retitle the terminal, move the cursor, or
forge lines of the listing.  :func:`escape_path` writes such characters as
backslash escapes, in the notation of Python and C string literals:

* ``\\\\`` for a backslash itself, so the escaping is reversible: a name
  that really contains the four characters ``\\x1b`` prints as ``\\\\x1b``
  and cannot be mistaken for one holding ESC;
* ``\\n``, ``\\t``, ``\\r`` for newline, tab and carriage return;
* ``\\xNN`` (two lowercase hex digits) for every other control character
  below U+0100: C0 (U+0001-U+001F), DEL (U+007F) and C1 (U+0080-U+009F),
  which terminals obey;
* ``\\uNNNN`` (``\\UNNNNNNNN`` above U+FFFF) for the invisible characters
  that reorder or hide text: Unicode's format characters (category Cf:
  bidirectional overrides such as U+202E, zero-width spaces and joiners,
  U+FEFF) and the line and paragraph separators U+2028 and U+2029.

Everything else, letters of any script included, is printed as it is.
:func:`unescape_path` inverts it exactly.  ``--json`` output is not
escaped: JSON has escapes of its own (``json.dumps`` writes every control
character as ``\\uNNNN``).
"""

from __future__ import annotations

import re
import unicodedata

_SHORT = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_UNSHORT = {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def _needs_escape(ch: str) -> bool:
    if ch in _SHORT:
        return True
    code = ord(ch)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return True
    return code > 0x9F and unicodedata.category(ch) in ("Cf", "Zl", "Zp", "Cc")


def _escape_char(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


# Everything ASCII-printable but the backslash: the fast path, one regex scan.
_PLAIN = re.compile(r"[ -\[\]-~]*")


def escape_path(path: str) -> str:
    """``path`` with backslashes and terminal-unsafe characters written as escapes."""
    if _PLAIN.fullmatch(path):
        return path
    return "".join(_escape_char(ch) if _needs_escape(ch) else ch for ch in path)


_ESCAPE = re.compile(r"\\(?:([\\ntr])|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")


def unescape_path(text: str) -> str:
    """The path :func:`escape_path` printed as ``text``; ValueError for a stray backslash."""
    out: list[str] = []
    pos = 0
    for match in _ESCAPE.finditer(text):
        if "\\" in text[pos:match.start()]:
            raise ValueError(f"stray backslash at offset {text.index(chr(92), pos)} of {text!r}")
        out.append(text[pos:match.start()])
        short, *hexes = match.groups()
        out.append(_UNSHORT[short] if short else chr(int(next(h for h in hexes if h), 16)))
        pos = match.end()
    if "\\" in text[pos:]:
        raise ValueError(f"stray backslash at offset {text.index(chr(92), pos)} of {text!r}")
    out.append(text[pos:])
    return "".join(out)


def escape_controls(text: str) -> str:
    """Control and invisible characters of free text (an error message) as escapes.

    Unlike :func:`escape_path` a backslash is left as it is: a message is
    read by people, not parsed back, and local file names in it may hold
    backslashes that doubling would only obscure.
    """
    if _PLAIN.fullmatch(text.replace("\\", "")):
        return text
    return "".join(_escape_char(ch) if ch != "\\" and _needs_escape(ch) else ch for ch in text)
