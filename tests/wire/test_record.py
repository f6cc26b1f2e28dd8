"""storg.wire.record: the frame classes behave as the frozen slotted dataclasses they replaced."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import subprocess
import sys

import pytest

from storg.wire.files import ChunkRef, FileInfo
from storg.wire.record import Record, record, record_fields, replace
from storg.wire.schema import U8, layout


@record
class Point:
    """A docstring kept."""

    x: int
    y: int
    label: str = "p"

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


def test_fields_defaults_and_methods():
    p = Point(1, -2)
    assert (p.x, p.y, p.label) == (1, -2, "p")
    assert Point(1, 2, label="q").label == "q"
    assert Point(x=3, y=4).norm1() == 7
    assert record_fields(Point) == record_fields(p) == ("x", "y", "label")
    assert Point.__doc__ == "A docstring kept."
    assert Point.__match_args__ == ("x", "y", "label")
    assert isinstance(p, Record)
    with pytest.raises(TypeError):
        Point(1)  # y has no default
    with pytest.raises(TypeError):
        Point(1, 2, "a", "extra")


def test_equality_and_hash_are_by_value_and_by_exact_class():
    @record
    class Other:
        x: int
        y: int
        label: str = "p"

    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(1, 3)
    assert Point(1, 2) != Other(1, 2)
    assert Point(1, 2) != (1, 2, "p")
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert len({Point(1, 2), Point(1, 2), Point(2, 1)}) == 2


def test_frozen_and_slotted():
    p = Point(1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.other = 1  # type: ignore[attr-defined]
    assert not hasattr(p, "__dict__")
    assert p.x == 1


def test_repr_names_every_field():
    assert repr(Point(1, 2)) == "Point(x=1, y=2, label='p')"


def test_replace_copy_and_pickle():
    p = Point(1, 2, "a")
    assert replace(p, y=9) == Point(1, 9, "a")
    assert replace(p) == p
    with pytest.raises(TypeError, match="no field"):
        replace(p, z=1)
    assert copy.copy(p) == p and copy.deepcopy(p) == p
    info = FileInfo("/a", 3, "00" * 32, 1, 2, (ChunkRef("11" * 32, 3, ("n1",)),))
    assert pickle.loads(pickle.dumps(info)) == info


def test_a_single_field_and_an_empty_record():
    @record
    class One:
        n: int

    @record
    class Empty:
        pass

    assert One(1) == One(1) != One(2)
    assert hash(One(1)) == hash(One(1))
    assert replace(One(1), n=2) == One(2)
    assert Empty() == Empty() and repr(Empty()) == "Empty()"


def test_post_init_checks_the_built_value():
    @record
    class Positive:
        n: int

        def __post_init__(self) -> None:
            if self.n <= 0:
                raise ValueError(f"not positive: {self.n}")

    assert Positive(3).n == 3
    with pytest.raises(ValueError, match="not positive: 0"):
        Positive(0)
    with pytest.raises(ValueError):
        replace(Positive(3), n=-1)


def test_bad_declarations_are_refused():
    with pytest.raises(TypeError, match="without a default follows"):
        @record
        class Unordered:
            a: int = 1
            b: int

    with pytest.raises(TypeError, match="cannot inherit"):
        @record
        class Child(Point):  # type: ignore[misc]
            z: int = 0

    with pytest.raises(TypeError, match="not a record"):
        @layout(U8)
        @dataclasses.dataclass(frozen=True)
        class NotARecord:
            a: int


def test_storgctl_fast_frames_do_not_import_dataclasses():
    """Why the module exists: the frames a storgctl command needs are built without dataclasses."""
    code = ("import sys, storg.wire.files, storg.wire.messages, storg.wire.admin; "
            "print('dataclasses' in sys.modules, 'inspect' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
