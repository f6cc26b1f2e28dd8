"""The frame modules load on demand: ``import storg.wire`` stays cheap, and every frame still decodes."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import storg.wire
from storg.wire import CODEC, FRAME_MODULES


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_import_of_storg_wire_imports_no_frame_module() -> None:
    out = _run("import json, sys, storg.wire; "
               "print(json.dumps([m for m in sys.modules if m.startswith('storg.wire.')]))")
    loaded = set(json.loads(out))
    assert loaded.isdisjoint(FRAME_MODULES)


def test_a_frame_of_a_module_not_imported_yet_decodes_in_a_fresh_process() -> None:
    # Encoded here (where the module is loaded); decoded by a process that imported only storg.wire.
    from storg.wire.files import StatRequest
    body = CODEC.encode(StatRequest(7, "/a/b", True))
    out = _run("import sys, storg.wire; "
               f"print(repr(storg.wire.CODEC.decode(bytes.fromhex({body.hex()!r}))))")
    assert out.strip() == repr(StatRequest(7, "/a/b", True))


def test_every_storg_wire_module_that_registers_frames_is_listed() -> None:
    """A new frame module missing from FRAME_MODULES would leave its frames undecodable in a process
    that never imported it: every module of the package that touches CODEC.register must be listed."""
    registering = set()
    for info in pkgutil.iter_modules(storg.wire.__path__):
        name = f"storg.wire.{info.name}"
        source = open(f"{storg.wire.__path__[0]}/{info.name}.py").read()
        if "register_struct(CODEC" in source or "CODEC.register" in source:
            registering.add(name)
    assert registering == set(FRAME_MODULES)


def test_unknown_type_bytes_are_still_refused_after_loading() -> None:
    from storg.wire import CodecError
    with pytest.raises(CodecError, match="unknown message type 255"):
        CODEC.decode(bytes((1, 255)))
