"""A partial snapshot upload whose connection dropped is deleted unless resumed within the grace."""

from __future__ import annotations

from twisted.internet.task import Clock

from storg.server.snapshots.data import SnapshotWriteLock
from storg.server.snapshots.receiver import SnapshotReceiver
from storg.wire.snapshots import SnapshotEnd, SnapshotOffset, SnapshotStored

from tests.snapshots.test_snapshot_frames import DATA, Follower, run_inline, send_parts, start


class ClockedFollower(Follower):
    def __init__(self, tmp_path, grace: float = 10.0) -> None:
        super().__init__(tmp_path)
        self.clock = Clock()
        self.receiver = SnapshotReceiver(self.receiver.node, self.store, run_inline, SnapshotWriteLock(),
                                         max_part=4096, reactor=self.clock, resume_grace=grace)
        self.snap_dir = tmp_path / "f" / "snap"

    def files(self) -> list[str]:
        return sorted(p.name for p in self.snap_dir.iterdir()) if self.snap_dir.exists() else []


def test_a_dropped_upload_is_deleted_after_the_grace(tmp_path) -> None:
    f = ClockedFollower(tmp_path)
    conn = f.connect()
    stream, frames = start(f, conn)
    send_parts(f, stream, DATA[:3000])
    assert f.files(), "the partial file is on disk"
    conn.close()
    f.pump()
    f.clock.advance(9.9)
    assert f.files() and f.receiver._partial is not None, "kept for a resume"
    f.clock.advance(0.2)
    assert f.files() == [], "deleted: nobody resumed it"
    assert f.receiver._partial is None

    # The receiver still takes a whole snapshot afterwards.
    stream2, frames2 = start(f, f.connect())
    assert frames2 == [SnapshotOffset(stream2.request_id, 0)]
    send_parts(f, stream2, DATA)
    stream2.send(SnapshotEnd(stream2.request_id))
    f.pump()
    assert isinstance(frames2[-1], SnapshotStored)
    assert not f.clock.getDelayedCalls()


def test_a_resume_within_the_grace_keeps_the_file_and_cancels_the_deletion(tmp_path) -> None:
    f = ClockedFollower(tmp_path)
    conn = f.connect()
    stream, frames = start(f, conn)
    send_parts(f, stream, DATA[:3000])
    conn.close()
    f.pump()
    f.clock.advance(5)
    stream2, frames2 = start(f, f.connect())
    assert frames2 == [SnapshotOffset(stream2.request_id, 3000)]
    f.clock.advance(60)
    assert f.receiver._partial is not None, "owned again: not deleted"
    send_parts(f, stream2, DATA, start_at=3000)
    stream2.send(SnapshotEnd(stream2.request_id))
    f.pump()
    assert isinstance(frames2[-1], SnapshotStored)
    assert not f.clock.getDelayedCalls()


def test_the_grace_running_out_during_a_write_deletes_after_the_write(tmp_path) -> None:
    f = ClockedFollower(tmp_path, grace=1.0)
    conn = f.connect()
    stream, frames = start(f, conn)
    send_parts(f, stream, DATA[:1000])
    partial = f.receiver._partial
    conn.close()
    f.pump()
    partial.busy = True  # as if a part's write were still running in its thread
    f.clock.advance(1.0)
    assert f.receiver._partial is partial and partial.expired
    partial.busy = False
    f.receiver._expire(partial)
    assert f.receiver._partial is None and f.files() == []
