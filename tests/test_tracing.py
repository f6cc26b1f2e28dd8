"""``STORG_TRACE``: off by default; on, two processes' lines land in one file and sort into one timeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from storg import tracing

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from storg import tracing
tracing.set_name(sys.argv[1])
tracing.mark("hop.start", "put 1")
tracing.mark("hop.end", "put 1")
print(tracing.ON)
"""


def run(env: dict[str, str], name: str) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT, name], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.strip()


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STORG_TRACE"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_off_by_default_writes_nothing(tmp_path: Path) -> None:
    env = clean_env()
    assert run(env, "n1") == "False"
    assert list(tmp_path.iterdir()) == []


def test_two_processes_write_one_timeline(tmp_path: Path) -> None:
    path = tmp_path / "trace.log"
    env = dict(clean_env(), STORG_TRACE=str(path))
    assert run(env, "n1") == "True"
    assert run(env, "client") == "True"
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    whos = [line.split(" ")[2] for line in lines]
    assert whos == ["n1", "n1", "client", "client"]
    rows = tracing.timeline(list(reversed(lines)))  # sorted by time whatever the order read
    assert [row.split()[5] for row in rows] == ["hop.start", "hop.end", "hop.start", "hop.end"]
    assert rows[0].split()[0] == "0.000"
    assert all(float(row.split()[0]) >= 0 for row in rows)
    assert rows[0].split()[3:5] == ["n1", "MainThread"]
    assert rows[-1].endswith("put 1")


def test_the_command_line_prints_the_timeline(tmp_path: Path) -> None:
    path = tmp_path / "trace.log"
    env = dict(clean_env(), STORG_TRACE=str(path))
    run(env, "n2")
    out = subprocess.run([sys.executable, "-m", "storg.tracing", str(path)], env=clean_env(),
                         capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert len(out) == 2
    assert "n2" in out[0] and "hop.start" in out[0] and "hop.end" in out[1]
