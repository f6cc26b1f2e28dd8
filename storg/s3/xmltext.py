"""The smallest XML writer S3's documents need: escaped text in elements.

The response documents are flat and few (see :mod:`storg.s3.xml`), so they
are written as strings rather than built as trees.  Text is escaped here
and nowhere else: ``&``, ``<``, ``>``, quotes, and the control characters
XML 1.0 cannot carry literally, which S3 keys may contain (AWS writes them
as numeric references too; a client that cannot parse those should ask for
``encoding-type=url``, as boto3 always does).
"""

from __future__ import annotations

import re

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"

_SPECIAL = re.compile("[&<>\"'\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
_NAMED = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}


def _reference(match: re.Match[str]) -> str:
    char = match.group(0)
    return _NAMED.get(char) or f"&#x{ord(char):X};"


def escape(text: str) -> str:
    """``text`` safe inside an element or a double-quoted attribute."""
    return _SPECIAL.sub(_reference, text)


def element(name: str, text: str | int | bool) -> str:
    """``<name>text</name>``; booleans as S3 writes them (``true``/``false``)."""
    if isinstance(text, bool):
        value = "true" if text else "false"
    else:
        value = escape(str(text))
    return f"<{name}>{value}</{name}>"


def document(root: str, body: str, *, namespace: bool = True) -> bytes:
    """A whole response: the declaration, then ``root`` (in S3's namespace) around ``body``."""
    attrs = f' xmlns="{S3_NAMESPACE}"' if namespace else ""
    return f"{XML_DECLARATION}<{root}{attrs}>{body}</{root}>".encode()
