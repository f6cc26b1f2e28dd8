"""Hard state and data_dir identity: atomic replacement, damage, mismatches; no reactor import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from storg.raft.types import HardState
from storg.storage.errors import CorruptionError, IdentityMismatch, StorageError
from storg.storage.hardstate import HardStateStore
from storg.storage.identity import load_or_create


def test_hard_state_round_trip_and_replace(tmp_path: Path) -> None:
    store = HardStateStore(tmp_path)
    assert store.load() is None
    store.save(HardState(3, "node-b", 17))
    store.save(HardState(4, "", 20))
    assert HardStateStore(tmp_path).load() == HardState(4, "", 20)
    assert [p.name for p in tmp_path.iterdir()] == ["hardstate"]


@pytest.mark.parametrize("offset", [0, 4, 6, 13, -1])
def test_damaged_hard_state_is_corruption(tmp_path: Path, offset: int) -> None:
    store = HardStateStore(tmp_path)
    store.save(HardState(9, "a", 5))
    raw = bytearray(store.path.read_bytes())
    raw[offset] ^= 0x01
    store.path.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match="hardstate"):
        store.load()


def test_truncated_hard_state_is_corruption(tmp_path: Path) -> None:
    store = HardStateStore(tmp_path)
    store.save(HardState(9, "a", 5))
    store.path.write_bytes(store.path.read_bytes()[:-2])
    with pytest.raises(CorruptionError):
        store.load()


def test_crash_between_temp_write_and_rename_keeps_old_state(tmp_path: Path) -> None:
    store = HardStateStore(tmp_path)
    store.save(HardState(2, "x", 1))
    (tmp_path / ".hardstate.0123456789ab.tmp").write_bytes(b"half")  # the crash's leftover
    store = HardStateStore(tmp_path)
    assert store.load() == HardState(2, "x", 1)
    assert [p.name for p in tmp_path.iterdir()] == ["hardstate"]


def test_identity_created_once_then_loaded(tmp_path: Path) -> None:
    d = tmp_path / "data"
    first = load_or_create(d, "n1", "c1")
    assert first.created and len(first.instance_id) == 32
    again = load_or_create(d, "n1", "c1")
    assert not again.created
    assert again.instance_id == first.instance_id
    assert json.loads((d / "identity").read_text())["node_id"] == "n1"


def test_identity_mismatch_is_one_clear_line(tmp_path: Path) -> None:
    load_or_create(tmp_path, "n1", "c1")
    with pytest.raises(IdentityMismatch, match="belongs to node 'n1', not 'n2'") as info:
        load_or_create(tmp_path, "n2", "c1")
    assert "\n" not in str(info.value)
    with pytest.raises(IdentityMismatch, match="cluster 'c1'"):
        load_or_create(tmp_path, "n1", "c2")


def test_non_empty_dir_without_identity_is_refused(tmp_path: Path) -> None:
    (tmp_path / "twistd.pid").write_text("123")  # not data: allowed
    (tmp_path / "wal").mkdir()
    with pytest.raises(StorageError, match="no identity"):
        load_or_create(tmp_path, "n1", "c1")


def test_dir_with_only_a_pid_file_gets_an_identity(tmp_path: Path) -> None:
    (tmp_path / "twistd.pid").write_text("123")
    assert load_or_create(tmp_path, "n1", "c1").created


def test_damaged_identity_is_corruption(tmp_path: Path) -> None:
    load_or_create(tmp_path, "n1", "c1")
    (tmp_path / "identity").write_text("{not json")
    with pytest.raises(CorruptionError):
        load_or_create(tmp_path, "n1", "c1")


def test_storage_never_imports_the_reactor() -> None:
    code = ("import sys, storg.storage.wal, storg.storage.snapshot, storg.storage.chunks, "
            "storg.storage.hardstate, storg.storage.identity; "
            "print(sorted(m for m in sys.modules if m.startswith('twisted')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
