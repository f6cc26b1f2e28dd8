"""Small durable-file helpers shared by every store.

The rules they encode: a new or renamed file is durable only once its
directory is fsynced too; a file replaced in place is written under a
temporary name, fsynced, then renamed, so a crash leaves the old or the new
contents, never a mixture.  Every ``OSError`` leaves as a
:class:`~storg.storage.errors.StorageError` with a readable message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from storg.storage.errors import DiskFullError, StorageError

TMP_SUFFIX = ".tmp"
"""Every temporary file ends with this, so a restart can find and remove them."""

_FULL = {errno.ENOSPC, errno.EDQUOT}


def storage_error(action: str, e: OSError) -> StorageError:
    """The StorageError (DiskFullError for ENOSPC/EDQUOT) saying ``action`` failed."""
    where = f" ({e.filename})" if e.filename else ""
    cls = DiskFullError if e.errno in _FULL else StorageError
    return cls(f"{action}: {e.strerror or e}{where}")


@contextlib.contextmanager
def disk_errors(action: str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into a StorageError saying what failed."""
    try:
        yield
    except OSError as e:
        raise storage_error(action, e) from e


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make creations, renames and deletions inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte; ``os.write`` may write less than asked."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def temp_path(final: Path) -> Path:
    """A unique temporary name beside ``final`` (same directory, same file system).

    Unique so that two threads writing the same final name never share a
    temporary file; the rename decides which one wins.
    """
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")


def atomic_write(path: str | os.PathLike[str], data: bytes | Iterable[bytes], *,
                 tmp_dir: Path | None = None, what: str | None = None) -> None:
    """Replace ``path`` with ``data`` (bytes, or parts written in order): temp file, fsync,
    rename, directory fsync.

    ``tmp_dir``: where the temporary file goes (same file system), when not
    beside ``path`` (the chunk store keeps its temporaries in ``tmp/``, which
    its listing skips).  ``what``: the error message's subject.
    """
    final = Path(path)
    tmp = temp_path(final if tmp_dir is None else tmp_dir / final.name)
    with disk_errors(what or f"cannot write {final}"):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                for part in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
                    write_all(fd, part)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(final.parent)


def remove_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a crash left in ``directory``; return them.

    Only names made by :func:`temp_path` (or ending in ``.tmp``) are touched.
    """
    removed = []
    d = Path(directory)
    with disk_errors(f"cannot clean temporary files in {d}"):
        for p in d.iterdir():
            if p.name.endswith(TMP_SUFFIX) and p.is_file():
                p.unlink()
                removed.append(p)
        if removed:
            fsync_dir(d)
    return removed


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) durably if missing; return it as a Path."""
    d = Path(path)
    with disk_errors(f"cannot create directory {d}"):
        if not d.is_dir():
            missing = []
            p = d
            while not p.exists():
                missing.append(p)
                p = p.parent
            # 0700: only the node's user may enter; the umask may only narrow it.
            for m in reversed(missing):
                m.mkdir(mode=0o700, exist_ok=True)
            # Each new directory entry lives in its parent: fsync them all.
            for m in reversed(missing):
                fsync_dir(m.parent)
    return d


def secure_data_dir(path: str | os.PathLike[str]) -> Path:
    """Create the data_dir 0700, or tighten an existing one to 0700; refuse one others can write.

    A data_dir that another user can write to can be swapped under the
    node (a planted log, a replaced chunk), and one other users can enter
    exposes every file in it whatever the files' own modes, so the node
    narrows it to 0700 (older versions made it 0755) and refuses to start
    in a folder group or others may write to, rather than guess who did.
    """
    d = ensure_dir(path)
    with disk_errors(f"cannot check the mode of {d}"):
        st = d.stat()
        if st.st_mode & 0o022:
            raise StorageError(f"data_dir {d} is writable by other users (mode {st.st_mode & 0o777:04o}); "
                               f"chmod 700 {d}")
        if st.st_mode & 0o777 != 0o700:
            os.chmod(d, 0o700)
    return d


def read_optional(path: str | os.PathLike[str]) -> bytes | None:
    """The whole contents of a small file, or None if it does not exist."""
    with disk_errors(f"cannot read {path}"):
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None
