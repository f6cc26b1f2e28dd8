"""Whole trees over one client: ``put -r`` and ``get -r``, many files in flight at once.

One :class:`~storg.client.api.StorgClient` keeps one connection per node
and pipelines requests on it, so a tree of ten thousand small files is
``jobs`` puts (or gets) in flight on the leader's connection, not ten
thousand connections or processes.  Each file is an ordinary put or get
with its own session (:class:`~storg.client.api.SessionPool`), so each is
retry-safe on its own, a get writes through an
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
import os
import stat
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from storg.client.errors import LocalError
from storg.node.executor import reactor_pool
from storg.paths import ROOT, InvalidPath, normalize_path, normalize_prefix

if TYPE_CHECKING:
    from storg.client.api import StorgClient

DEFAULT_JOBS = 16
"""Files in flight at once: enough to hide a round trip per small file, few enough to stay fair."""

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
    """Store every regular file below ``localdir`` under the folder ``remote``; see the module docstring."""
    if not os.path.isdir(localdir):
        raise LocalError(f"{localdir} is not a folder")
    items, skipped, bad = await reactor_pool(client.reactor)(walk_local, localdir, remote)
    report = TreeReport(skipped=skipped, failed=list(bad))
    total = sum(i.size for i in items)

    async def one(item: _Item) -> None:
        try:
            await client.put(item.local, item.remote)
        except Exception as exc:  # noqa: BLE001 -- one file's failure is reported, the rest go on
            report.failed.append((item.local, exc))
            return
        report.files += 1
        report.bytes += item.size
        if progress is not None:
            progress(report.files, len(items), report.bytes, total)

    if progress is not None:
        progress(0, len(items), 0, total)
    await _run_all([functools.partial(one, item) for item in items], jobs)
    return report


async def get_tree(client: StorgClient, remote: str, localdir: str, *, jobs: int = DEFAULT_JOBS,
                   stale: bool = False, progress: TreeProgress | None = None) -> TreeReport:
    """Fetch every file at or below the folder ``remote`` into ``localdir`` (created if missing).

    A file's local path is its remote path below ``remote``; the file at
    ``remote`` itself (if any) gets its last segment as name.  Each file is
    written to a temporary file and renamed into place once verified.
    """
    prefix = normalize_prefix(remote)
    files = await client.ls(prefix, stale=stale)
    report = TreeReport()
    total = sum(f.size for f in files)
    run = reactor_pool(client.reactor)

    async def one(path: str, size: int) -> None:
        rel = path.rsplit("/", 1)[-1] if path == prefix else path[len(prefix):].lstrip("/")
        target = os.path.join(localdir, *rel.split("/"))
        try:
            await run(_make_parent, target)
            await client.get(path, target, stale=stale)
        except Exception as exc:  # noqa: BLE001 -- one file's failure is reported, the rest go on
            report.failed.append((path, exc))
            return
        report.files += 1
        report.bytes += size
        if progress is not None:
            progress(report.files, len(files), report.bytes, total)

    if progress is not None:
        progress(0, len(files), 0, total)
    await _run_all([functools.partial(one, f.path, f.size) for f in files], jobs)
    return report


def _make_parent(target: str) -> None:
    try:
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    except OSError as exc:
        raise LocalError(f"cannot create the folder of {target}: {exc.strerror or exc}") from None


async def _run_all(tasks: list[Callable[[], Coroutine[Any, Any, None]]], jobs: int) -> None:
    """Run the coroutine factories ``tasks`` with at most ``jobs`` in flight."""
    limit = defer.DeferredSemaphore(max(1, jobs))

    def start(task: Callable[[], Coroutine[Any, Any, None]]) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(task())

    await defer.gatherResults([limit.run(start, task) for task in tasks], consumeErrors=True)
