"""ls replies stay within a frame even with 4 KiB paths and large attributes (issue 18)."""

from __future__ import annotations

from storg.server.files.service import LS_PAGE, within_frame
from storg.wire import CODEC, MAX_FRAME_BYTES
from storg.wire.files import FileInfo, LsReply
from storg.wire.objects import ObjectAttrs


def test_a_page_of_the_longest_paths_and_large_attributes_is_cut_into_frames_that_fit() -> None:
    attrs = ObjectAttrs("ab" * 16, "application/octet-stream", tuple((f"k{i}", "v" * 200) for i in range(10)))
    files = [FileInfo("/" + "é" * 2047 + f"{i:02d}"[-2:], 1, "00" * 32, 1, 1, (), attrs) for i in range(LS_PAGE)]
    runs = within_frame(files)
    assert len(runs) > 1 and [f for run in runs for f in run] == files
    for run in runs:
        assert len(CODEC.encode(LsReply(1, run, True, 5))) < MAX_FRAME_BYTES
    plain = [FileInfo(f"/b/{i}", 1, "00" * 32, 1, 1) for i in range(LS_PAGE)]
    assert within_frame(plain) == [tuple(plain)]
    assert within_frame([]) == [()]


def test_four_byte_characters_in_the_attributes_are_counted_as_four_bytes() -> None:
    """A content type of astral characters (4 bytes each in UTF-8) must not make a run's frame overflow."""
    wide = ObjectAttrs("e", "\U0001F600" * 16_383)
    files = [FileInfo(f"/b/{i}", 1, "00" * 32, 1, 1, (), wide) for i in range(300)]
    for run in within_frame(files):
        assert len(CODEC.encode(LsReply(1, run, True, 5))) < MAX_FRAME_BYTES
