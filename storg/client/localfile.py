"""Local files of a get: :class:`AtomicFile`, so a get never leaves a partial local file.

On its own (no Twisted) so that both drivers of the client protocol, the
Twisted one and storgctl's blocking one, write their local files alike.
"""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO

from storg.client.errors import LocalError


class AtomicFile:
    """A file written under a temporary name in the target's folder, renamed at the end.

    Readers of ``target`` see the old file or the whole new one; a failed
    get leaves the old file untouched and no partial file behind.
    """

    def __init__(self, target: str | os.PathLike) -> None:
        target = os.fspath(target)
        if os.path.isdir(target):
            raise LocalError(f"{target} is a directory")
        self.target = target
        folder = os.path.dirname(os.path.abspath(target))
        try:
            fd, self.temp = tempfile.mkstemp(
                dir=folder, prefix="." + os.path.basename(target) + ".", suffix=".storg-part")
        except OSError as exc:
            raise LocalError(f"cannot write in {folder}: {exc.strerror or exc}") from None
        self.f: BinaryIO = os.fdopen(fd, "w+b")
        self.finished = False

    def commit(self) -> None:
        """Make the content durable, then give it the target's name (mode as a new file's)."""
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.temp, 0o666 & ~umask)
            os.replace(self.temp, self.target)
        except OSError as exc:
            self.discard()
            raise LocalError(f"cannot write {self.target}: {exc.strerror or exc}") from None
        self.finished = True

    def discard(self) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            self.f.close()
        except OSError:
            pass
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass
