"""Frozen, slotted value classes for frames, cheap to build at import.

Every frame type of :mod:`storg.wire` is a small immutable value: fields
in order, compared and hashed by value, never changed once built.
``@dataclass(frozen=True, slots=True)`` gives that, but at a price paid on
every start of every process: it compiles five or six functions per class
and builds each class twice, about 0.7 ms a class on this project's hosts.
The wire defines about ninety frame types, and storgctl's fast commands
import a third of them, plus :mod:`dataclasses` and :mod:`inspect`: a
quarter of a 100 ms budget (issue 17) before the first byte is sent.

:func:`record` makes the same kind of class for a tenth of that: the
methods that need not know the fields by name (``__repr__``, ``__eq__``,
``__hash__``, the frozen ``__setattr__``, pickling) live once in
:class:`Record` and read the fields through one ``operator.attrgetter``;
only ``__init__``, which runs for every decoded frame, is generated per
class, as a dataclass's is.  What differs from a dataclass: no
``dataclasses.fields``/``replace`` (use :func:`record_fields` and
:func:`replace`), no inheritance between records, defaults must be
immutable values (there is no ``field(default_factory=...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, ClassVar, TypeVar, dataclass_transform

__all__ = ["Record", "record", "record_fields", "replace"]

_R = TypeVar("_R")

_MISSING = object()


def _frozen(obj: object, name: str) -> Exception:
    # dataclasses' own error, so code that catches it (or AttributeError) still does;
    # imported only on this rare path, never at start-up.
    from dataclasses import FrozenInstanceError

    return FrozenInstanceError(f"cannot assign to field {name!r} of {type(obj).__name__}")


class Record:
    """The shared methods of every :func:`record` class: by-value equality, hashing, repr, frozen."""

    __slots__ = ()
    __record_fields__: ClassVar[tuple[str, ...]] = ()
    _record_values: ClassVar[Callable[..., tuple[Any, ...]]]

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_fields__)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._record_values(self) == self._record_values(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._record_values(self))

    def __setattr__(self, name: str, value: Any) -> None:
        raise _frozen(self, name)

    def __delattr__(self, name: str) -> None:
        raise _frozen(self, name)

    # copy and pickle: the default would restore slots with setattr, which is refused.
    def __getstate__(self) -> tuple[Any, ...]:
        return self._record_values(self)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__record_fields__, state, strict=True):
            object.__setattr__(self, name, value)


@dataclass_transform(frozen_default=True)
def record(cls: type[_R]) -> type[_R]:
    """Class decorator: ``cls``'s annotated fields, in order, as a frozen slotted value class.

    A field with a class-level value has that value as its default; as in
    a dataclass, fields with defaults come after those without, and a
    ``__post_init__`` method runs once the fields are set.
    """
    if cls.__bases__ != (object,):
        raise TypeError(f"{cls.__name__}: a record cannot inherit (it has bases {cls.__bases__})")
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    seen_default = False
    for name in names:
        if name in defaults:
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__name__}: field {name!r} without a default follows one with a default")
    namespace = {key: value for key, value in cls.__dict__.items()
                 if key not in defaults and key not in ("__dict__", "__weakref__")}
    namespace["__slots__"] = names
    namespace["__record_fields__"] = names
    namespace["__match_args__"] = names
    if len(names) == 1:
        one = attrgetter(names[0])
        namespace["_record_values"] = staticmethod(lambda obj: (one(obj),))
    elif names:
        namespace["_record_values"] = staticmethod(attrgetter(*names))
    else:
        namespace["_record_values"] = staticmethod(lambda obj: ())
    built = type(cls.__name__, (Record,), namespace)
    built.__init__ = _make_init(names, defaults, cls.__qualname__,  # type: ignore[misc]
                                "__post_init__" in namespace)
    return built


def _make_init(names: tuple[str, ...], defaults: dict[str, Any], qualname: str,
               post_init: bool) -> Callable[..., None]:
    """``__init__(self, a, b, c=<default>)`` that sets each slot, compiled once for the class,
    then calls ``__post_init__`` (checks that refuse a bad value) if the class has one."""
    params = ["self"] + [f"{name}=_d_{name}" if name in defaults else name for name in names]
    body = [f"    _set(self, {name!r}, {name})" for name in names]
    if post_init:
        body.append("    self.__post_init__()")
    body = body or ["    pass"]
    source = f"def __init__({', '.join(params)}):\n" + "\n".join(body) + "\n"
    scope: dict[str, Any] = {"_set": object.__setattr__}
    scope.update({f"_d_{name}": value for name, value in defaults.items()})
    exec(source, scope)  # noqa: S102 - our own field names, checked identifiers by the class statement
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{qualname}.__init__"
    return init


def record_fields(cls_or_obj: Any) -> tuple[str, ...]:
    """The field names of a record class (or instance), in order."""
    names: tuple[str, ...] = cls_or_obj.__record_fields__
    return names


def replace(obj: _R, **changes: Any) -> _R:
    """A copy of the record ``obj`` with ``changes`` to some fields (as ``dataclasses.replace``)."""
    unknown = set(changes).difference(obj.__record_fields__)  # type: ignore[attr-defined]
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {', '.join(sorted(unknown))}")
    values = [changes.get(name, _MISSING) for name in obj.__record_fields__]  # type: ignore[attr-defined]
    current = obj._record_values(obj)  # type: ignore[attr-defined]
    return type(obj)(*[now if new is _MISSING else new for new, now in zip(values, current, strict=True)])
