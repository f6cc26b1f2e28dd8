"""The ``limits:`` section: defaults, overrides, and one clear line per bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from storg import config as config_module
from storg.config import MAX_PROPOSAL_LIMIT, MIN_PROPOSAL_LIMIT, ConfigError, LimitTuning, load_config
from storg.wire import MAX_FRAME_BYTES

BASE = {
    "node_id": "n1",
    "data_dir": "data/n1",
    "peer_listen": "127.0.0.1:7001",
    "client_listen": "127.0.0.1:8001",
    "cluster": {"n1": {"peer": "127.0.0.1:7001", "client": "127.0.0.1:8001"}},
}


def load(tmp_path: Path, limits: object) -> LimitTuning:
    path = tmp_path / "node.yaml"
    doc = dict(BASE)
    if limits is not None:
        doc["limits"] = limits
    path.write_text(yaml.safe_dump(doc))
    return load_config(path).limits


def error(tmp_path: Path, limits: object) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, limits)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(tmp_path / "node.yaml"))
    return text


def test_defaults_when_the_section_is_absent(tmp_path: Path) -> None:
    limits = load(tmp_path, None)
    assert limits == LimitTuning()
    assert limits.max_client_connections == 512
    assert limits.max_peer_connections == 64
    assert limits.idle_timeout_s == 300.0
    assert limits.max_requests_in_flight == 256
    assert limits.max_uploads_per_connection == 32
    assert limits.max_proposal_bytes == 4 * 1024 * 1024
    assert limits.snapshot_resume_grace_s == 10.0


def test_every_key_can_be_set(tmp_path: Path) -> None:
    limits = load(tmp_path, {
        "max_client_connections": 3, "max_peer_connections": 4, "idle_timeout_s": 1.5,
        "max_requests_in_flight": 5, "max_uploads_per_connection": 6, "max_proposal_bytes": 70000,
        "snapshot_resume_grace_s": 0.5,
    })
    assert limits == LimitTuning(3, 4, 1.5, 5, 6, 70000, 0.5)


@pytest.mark.parametrize("limits, key, words", [
    ({"max_connections": 3}, "limits.max_connections", "unknown key"),
    ({"max_client_connections": 0}, "limits.max_client_connections", "positive integer"),
    ({"max_peer_connections": 2.5}, "limits.max_peer_connections", "positive integer"),
    ({"idle_timeout_s": -1}, "limits.idle_timeout_s", "positive number"),
    ({"max_requests_in_flight": True}, "limits.max_requests_in_flight", "positive integer"),
    ({"max_uploads_per_connection": "8"}, "limits.max_uploads_per_connection", "positive integer"),
    ({"max_proposal_bytes": MAX_PROPOSAL_LIMIT + 1}, "limits.max_proposal_bytes", "within"),
    ({"max_proposal_bytes": MIN_PROPOSAL_LIMIT - 1}, "limits.max_proposal_bytes", "within"),
    ({"snapshot_resume_grace_s": 0}, "limits.snapshot_resume_grace_s", "positive number"),
    ([1, 2], "limits", "must be a mapping"),
])
def test_bad_values_are_one_line_naming_the_key(tmp_path: Path, limits: object, key: str,
                                                words: str) -> None:
    text = error(tmp_path, limits)
    assert f": {key}: " in text and words in text, text


def test_the_proposal_limit_bounds_are_inclusive(tmp_path: Path) -> None:
    for value in (MIN_PROPOSAL_LIMIT, MAX_PROPOSAL_LIMIT):
        assert load(tmp_path, {"max_proposal_bytes": value}).max_proposal_bytes == value


def test_the_nodes_own_commands_fit_the_smallest_proposal_limit() -> None:
    from storg.paths import MAX_PATH_BYTES
    from storg.server.files.garbage import COLLECT_BATCH
    from storg.server.files.upload import INLINE_MAX
    from storg.wire import CODEC
    from storg.wire.chunks import CollectChunksCommand, PutInlineCommand

    collect = CollectChunksCommand(tuple(f"{k:064x}" for k in range(COLLECT_BATCH)))
    assert len(CODEC.encode(collect)) <= MIN_PROPOSAL_LIMIT
    path = "/" + "p" * MAX_PATH_BYTES
    inline = PutInlineCommand(2**63, 2**63, 2**63, path, b"x" * INLINE_MAX, ("n" * 64,) * 5)
    assert len(CODEC.encode(inline)) <= MIN_PROPOSAL_LIMIT
    from storg.wire.tree import ConditionalPutCommand, CopyCommand, MoveCommand
    other = "/" + "q" * MAX_PATH_BYTES
    assert len(CODEC.encode(MoveCommand(2**63, 2**63, 2**63, path, other, True))) <= MIN_PROPOSAL_LIMIT
    assert len(CODEC.encode(CopyCommand(2**63, 2**63, 2**63, path, other, True, True))) <= MIN_PROPOSAL_LIMIT
    wrapped = ConditionalPutCommand(False, "ab" * 32, CODEC.encode(inline))
    assert len(CODEC.encode(wrapped)) <= MIN_PROPOSAL_LIMIT


def test_config_frame_limit_matches_the_codec() -> None:
    # config sits below wire and cannot import it; this keeps the two equal.
    assert config_module.FRAME_LIMIT == MAX_FRAME_BYTES
