"""The files: keys for repair, scrub and garbage collection: defaults, values, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from storg.config import ConfigError, FileTuning, load_config

BASE = {
    "node_id": "n1",
    "data_dir": "data/n1",
    "peer_listen": "127.0.0.1:7001",
    "client_listen": "127.0.0.1:8001",
    "cluster": {"n1": {"peer": "127.0.0.1:7001", "client": "127.0.0.1:8001"}},
}


def load(tmp_path: Path, files: dict):
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(dict(BASE, files=files)))
    return load_config(path)


def test_defaults_when_absent(tmp_path):
    tuning = load(tmp_path, {"replication_factor": 3}).files
    assert tuning == FileTuning()
    assert (tuning.repair_grace_s, tuning.repair_rate_mb_s, tuning.scrub_rate_mb_s) == (600, 50, 20)
    assert tuning.orphan_grace_s == 3600


def test_values_are_read_and_may_be_fractional(tmp_path):
    tuning = load(tmp_path, {"repair_grace_s": 2.5, "repair_rate_mb_s": 10, "repair_interval_s": 0.5,
                             "scrub_rate_mb_s": 1, "scrub_interval_s": 60, "orphan_grace_s": 3,
                             "gc_interval_s": 0.25}).files
    assert tuning.repair_grace_s == 2.5 and tuning.repair_interval_s == 0.5
    assert tuning.scrub_interval_s == 60 and tuning.gc_interval_s == 0.25 and tuning.orphan_grace_s == 3


@pytest.mark.parametrize("key", ["repair_grace_s", "repair_rate_mb_s", "repair_interval_s",
                                 "scrub_rate_mb_s", "scrub_interval_s", "orphan_grace_s", "gc_interval_s"])
@pytest.mark.parametrize("bad", [0, -1, "fast", True, None, float("inf")])
def test_bad_values_are_one_line_errors_naming_the_key(tmp_path, key, bad):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {key: bad})
    text = str(info.value)
    assert f"files.{key}" in text and "\n" not in text and "positive number" in text


def test_an_unknown_files_key_lists_the_new_ones(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, {"repair_speed": 3})
    assert "repair_grace_s" in str(info.value) and "scrub_interval_s" in str(info.value)
