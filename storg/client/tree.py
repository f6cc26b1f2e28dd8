"""Whole trees over one client: ``put -r`` and ``get -r``, many files in flight at once.

One :class:`~storg.client.api.StorgClient` keeps one connection per node
and pipelines requests on it, so a tree of ten thousand small files is
``jobs`` transfers in flight on the leader's connection, not ten
thousand connections or processes.  Small files travel in batches
(storg.wire.batch): up to 512 files or 1 MiB per request, a batch of puts
one log entry, which is what makes a tree of small files fast (an entry
and three frames per file cost the leader about a millisecond each).
Each large file is an ordinary put or get with its own session
(:class:`~storg.client.api.SessionPool`), and each batch one session, so
each is retry-safe on its own, a get writes through an
:class:`~storg.client.download.AtomicFile` (never a partial local file),
and a failed file does not stop the others: the report lists it, and the
caller's exit status is that of the worst failure.  Running the same
command again after a failure (or a node killed midway) completes the tree:
a put of a file already there replaces it with the same bytes.

Walking the local tree runs in a thread (a ``stat`` per file); symlinks and
special files (sockets, FIFOs, devices) are skipped with a warning, as
rsync does without ``-l``: following a symlink could leave the tree or loop.
There are no empty folders in the namespace (a folder is a prefix of file
paths), so an empty local folder is not sent.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from storg.client.download import AtomicFile
from storg.client.errors import LocalError
from storg.net.errors import IntegrityError, NotFoundError
from storg.node.executor import reactor_pool
from storg.paths import ROOT, InvalidPath, normalize_path, normalize_prefix
from storg.wire.batch import MAX_BATCH_BYTES, MAX_BATCH_FILES, BatchFile

if TYPE_CHECKING:
    from storg.client.api import StorgClient

DEFAULT_JOBS = 16
"""Transfers in flight at once (a single file or a batch): enough to hide a round trip, few enough to stay fair."""

BATCH_FILE_MAX = 4096
"""Files up to this size are put in batches: the node's inline size (storg.server.files.upload.INLINE_MAX)."""

BATCHES_IN_FLIGHT = 4
"""Batches in flight at once, whatever ``jobs`` says: four of 1 MiB keep the leader's pipeline full.

More only queue up: sixty-four batches of a megabyte each in flight made a
100,000-file ``put -r`` time out waiting behind each other."""

BATCH_GET_MAX = 64 * 1024
"""Files up to this size are read in batches (a node reads such a file whole, at once)."""

TreeProgress = Callable[[int, int, int, int], None]
"""``progress(files_done, files_total, bytes_done, bytes_total)``."""


@dataclass
class TreeReport:
    """What a tree transfer did: files and bytes moved, skipped entries, failures."""

    files: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, BaseException]] = field(default_factory=list)


@dataclass(frozen=True)
class _Item:
    local: str
    remote: str
    size: int


def walk_local(root: str, remote: str) -> tuple[list[_Item], list[tuple[str, str]], list[tuple[str, BaseException]]]:
    """Regular files below ``root`` with their remote paths (sorted), what was skipped and why, bad names.

    Blocking (a stat per entry): run it in a thread.
    """
    base = normalize_prefix(remote)
    items: list[_Item] = []
    skipped: list[tuple[str, str]] = []
    bad: list[tuple[str, BaseException]] = []

    def failed(exc: OSError) -> None:
        bad.append((exc.filename or root, LocalError(f"cannot read {exc.filename}: {exc.strerror or exc}")))

    for folder, dirs, files in os.walk(root, onerror=failed, followlinks=False):
        dirs.sort()
        for name in list(dirs):
            full = os.path.join(folder, name)
            if os.path.islink(full):
                skipped.append((full, "a symlink"))
                dirs.remove(name)
        for name in sorted(files):
            full = os.path.join(folder, name)
            try:
                st = os.lstat(full)
            except OSError as exc:
                bad.append((full, LocalError(f"cannot read {full}: {exc.strerror or exc}")))
                continue
            if stat.S_ISLNK(st.st_mode):
                skipped.append((full, "a symlink"))
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append((full, "not a regular file"))
                continue
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            try:
                path = normalize_path(rel if base == ROOT else f"{base}/{rel}")
            except InvalidPath as exc:
                bad.append((full, exc))
                continue
            items.append(_Item(full, path, st.st_size))
    return items, skipped, bad


async def put_tree(client: StorgClient, localdir: str, remote: str, *, jobs: int = DEFAULT_JOBS,
                   progress: TreeProgress | None = None) -> TreeReport:
    """Store every regular file below ``localdir`` under the folder ``remote``; see the module docstring.

    Small files (up to the inline size) go in batches, each one entry
    (:meth:`StorgClient.put_batch`); the others one put each.
    """
    if not os.path.isdir(localdir):
        raise LocalError(f"{localdir} is not a folder")
    run = reactor_pool(client.reactor)
    items, skipped, bad = await run(walk_local, localdir, remote)
    report = TreeReport(skipped=skipped, failed=list(bad))
    total = sum(i.size for i in items)

    def done(files: int, size: int) -> None:
        report.files += files
        report.bytes += size
        if progress is not None:
            progress(report.files, len(items), report.bytes, total)

    async def one(item: _Item) -> None:
        try:
            await client.put(item.local, item.remote)
        except Exception as exc:  # noqa: BLE001 -- one file's failure is reported, the rest go on
            report.failed.append((item.local, exc))
            return
        done(1, item.size)

    async def batch(group: list[_Item]) -> None:
        read, grown, unreadable = await run(_read_batch, group)
        report.failed.extend(unreadable)
        for item in grown:  # grew past the inline size since the walk: an ordinary put
            await one(item)
        if not read:
            return
        try:
            await client.put_batch(tuple(f for _, f in read))
        except Exception as exc:  # noqa: BLE001 -- the batch's files are reported, the rest go on
            report.failed.extend((item.local, exc) for item, _ in read)
            return
        done(len(read), sum(len(f.data) for _, f in read))

    if progress is not None:
        progress(0, len(items), 0, total)
    small = [i for i in items if i.size <= BATCH_FILE_MAX]
    large = [i for i in items if i.size > BATCH_FILE_MAX]
    await defer.gatherResults([
        defer.Deferred.fromCoroutine(_run_all([functools.partial(batch, group) for group in _groups(small)],
                                              min(jobs, BATCHES_IN_FLIGHT))),
        defer.Deferred.fromCoroutine(_run_all([functools.partial(one, item) for item in large], jobs)),
    ], consumeErrors=True)
    return report


def _groups(items: list[_Item]) -> list[list[_Item]]:
    """``items`` cut into consecutive batches of at most MAX_BATCH_FILES files and MAX_BATCH_BYTES bytes."""
    groups: list[list[_Item]] = []
    current: list[_Item] = []
    size = 0
    for item in items:
        if current and (len(current) >= MAX_BATCH_FILES or size + item.size > MAX_BATCH_BYTES):
            groups.append(current)
            current, size = [], 0
        current.append(item)
        size += item.size
    if current:
        groups.append(current)
    return groups


def _read_batch(group: list[_Item]) -> tuple[list[tuple[_Item, BatchFile]], list[_Item],
                                             list[tuple[str, BaseException]]]:
    """Read and hash a batch's files (blocking: run it in a thread).

    Returns the files read (each with its batch entry), the files that grew past the inline size since the
    walk (for an ordinary put) and those that could not be read.
    """
    files: list[tuple[_Item, BatchFile]] = []
    grown: list[_Item] = []
    bad: list[tuple[str, BaseException]] = []
    for item in group:
        try:
            with open(item.local, "rb") as f:
                data = f.read(BATCH_FILE_MAX + 1)
        except OSError as exc:
            bad.append((item.local, LocalError(f"cannot read {item.local}: {exc.strerror or exc}")))
            continue
        if len(data) > BATCH_FILE_MAX:
            grown.append(item)
            continue
        files.append((item, BatchFile(item.remote, data, hashlib.sha256(data).hexdigest())))
    return files, grown, bad


async def get_tree(client: StorgClient, remote: str, localdir: str, *, jobs: int = DEFAULT_JOBS,
                   stale: bool = False, progress: TreeProgress | None = None) -> TreeReport:
    """Fetch every file at or below the folder ``remote`` into ``localdir`` (created if missing).

    A file's local path is its remote path below ``remote``; the file at
    ``remote`` itself (if any) gets its last segment as name.  Each file is
    written to a temporary file and renamed into place once verified.
    Small files are read in batches (:meth:`StorgClient.get_batch`), the
    others, and any a batch left out, one get each.
    """
    prefix = normalize_prefix(remote)
    files = await client.ls(prefix, stale=stale)
    report = TreeReport()
    total = sum(f.size for f in files)
    run = reactor_pool(client.reactor)
    sizes = {f.path: f.size for f in files}

    def target_of(path: str) -> str:
        rel = path.rsplit("/", 1)[-1] if path == prefix else path[len(prefix):].lstrip("/")
        return os.path.join(localdir, *rel.split("/"))

    def done(count: int, size: int) -> None:
        report.files += count
        report.bytes += size
        if progress is not None:
            progress(report.files, len(files), report.bytes, total)

    async def one(path: str) -> None:
        target = target_of(path)
        try:
            await run(_make_parent, target)
            await client.get(path, target, stale=stale)
        except Exception as exc:  # noqa: BLE001 -- one file's failure is reported, the rest go on
            report.failed.append((path, exc))
            return
        done(1, sizes[path])

    async def batch(paths: list[str]) -> None:
        try:
            reply = await client.get_batch(tuple(paths), stale=stale)
        except Exception as exc:  # noqa: BLE001 -- the batch's files are reported, the rest go on
            report.failed.extend((path, exc) for path in paths)
            return
        written, failed = await run(_write_batch, [(f, target_of(f.path)) for f in reply.files])
        report.failed.extend(failed)
        report.failed.extend((path, NotFoundError(f"{path} was removed during the get")) for path in reply.missing)
        done(len(written), sum(len(f.data) for f in written))
        for path in reply.left:
            await one(path)

    if progress is not None:
        progress(0, len(files), 0, total)
    small = [f for f in files if f.size <= BATCH_GET_MAX]
    large = [f for f in files if f.size > BATCH_GET_MAX]
    groups = _groups([_Item("", f.path, f.size) for f in small])
    await defer.gatherResults([
        defer.Deferred.fromCoroutine(_run_all([functools.partial(batch, [i.remote for i in group])
                                               for group in groups], min(jobs, BATCHES_IN_FLIGHT))),
        defer.Deferred.fromCoroutine(_run_all([functools.partial(one, f.path) for f in large], jobs)),
    ], consumeErrors=True)
    return report


def _write_batch(files: list[tuple[BatchFile, str]]) -> tuple[list[BatchFile], list[tuple[str, BaseException]]]:
    """Check each file's SHA-256 and write it atomically (blocking: run it in a thread).

    Each file goes through an :class:`AtomicFile` (a temporary name, fsync,
    rename), as a single get's does, so no partial file is ever left; a file
    that does not hash to what the node holds is not written at all.
    """
    written: list[BatchFile] = []
    failed: list[tuple[str, BaseException]] = []
    for f, target in files:
        digest = hashlib.sha256(f.data).hexdigest()
        if digest != f.sha256:
            failed.append((f.path, IntegrityError(f"{f.path}: SHA-256 mismatch (got {digest}, expected {f.sha256})")))
            continue
        try:
            _make_parent(target)
            out = AtomicFile(target)
            try:
                out.f.write(f.data)
            except OSError as exc:
                out.discard()
                raise LocalError(f"cannot write {target}: {exc.strerror or exc}") from None
            out.commit()
        except LocalError as exc:
            failed.append((f.path, exc))
            continue
        written.append(f)
    return written, failed


def _make_parent(target: str) -> None:
    try:
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    except OSError as exc:
        raise LocalError(f"cannot create the folder of {target}: {exc.strerror or exc}") from None


async def _run_all(tasks: list[functools.partial[Coroutine[Any, Any, None]]], jobs: int) -> None:
    """Run the coroutine factories ``tasks`` with at most ``jobs`` in flight."""
    limit = defer.DeferredSemaphore(max(1, jobs))

    def start(task: functools.partial[Coroutine[Any, Any, None]]) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(task())

    await defer.gatherResults([limit.run(start, task) for task in tasks], consumeErrors=True)
