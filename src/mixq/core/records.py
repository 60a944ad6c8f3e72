"""`Record`: a dataclass that reads and writes its plain (YAML / JSON) form.

``to_dict`` and ``from_dict`` are derived from the fields: tuples are written as lists and read
back as tuples, enums as their values, nested records as dicts; unknown keys are rejected with
a suggestion (`mixq.core.validation.check_keys`). A field with ``metadata={"plain": False}``
is neither written nor read (derived state); ``omit`` lists values left out when writing
(``(None,)`` keeps YAML short). Records with a YAML shape of their own (a key that names the
kind, a version header) write their own pair on top of these.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Pair(Record):
    ...     name: str
    ...     sizes: tuple[int, ...] = ()
    >>> Pair("a", (1, 2)).to_dict()
    {'name': 'a', 'sizes': [1, 2]}
    >>> Pair.from_dict({"name": "a", "sizes": [1, 2]}) == Pair("a", (1, 2))
    True
    >>> Pair.from_dict({"nmae": "a"})
    Traceback (most recent call last):
    ...
    mixq.core.errors.ConfigError: unknown key 'nmae' in Pair; did you mean 'name'? ...
"""

from __future__ import annotations

import enum
import functools
import typing
from collections.abc import Hashable, Mapping
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, ClassVar, TypeVar, cast

from mixq.core.errors import ConfigError
from mixq.core.validation import check_keys

__all__ = ["Record", "plain"]

R = TypeVar("R", bound="Record")


def plain(value: Any) -> Any:
    """``value`` as YAML / JSON writes it: records and dataclasses as dicts, enums as values,
    tuples as lists."""
    if isinstance(value, Record):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


class Record:
    """Base of mixq's config-like dataclasses (see the module docstring)."""

    omit: ClassVar[tuple[Any, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in _plain_fields(type(self)):
            value = plain(getattr(self, f.name))
            if not any(value is o or value == o for o in self.omit):
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[R], data: Any, where: str | None = None) -> R:
        names = [f.name for f in _plain_fields(cls)]
        data = check_keys(data, names, where or cls.__name__)
        hints = _hints(cast(Hashable, cls))
        missing = [
            f.name
            for f in _plain_fields(cls)
            if f.default is MISSING and f.default_factory is MISSING and f.name not in data
        ]
        if missing:
            raise ConfigError(f"{where or cls.__name__} needs {', '.join(missing)}")
        return cls(**{k: _read(hints.get(k), v) for k, v in data.items()})


def _plain_fields(cls: type) -> list[Any]:
    return [f for f in fields(cls) if f.metadata.get("plain", True)]


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _read(hint: Any, value: Any) -> Any:
    """``value`` converted to the field's type where the plain form differs."""
    kinds = [hint, *typing.get_args(hint)]
    for kind in kinds:
        origin = typing.get_origin(kind) or kind
        if value is None:
            return None
        if origin is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        if isinstance(origin, type) and issubclass(origin, enum.Enum):
            return _enum(origin, value)
        if isinstance(origin, type) and issubclass(origin, Record) and isinstance(value, Mapping):
            return origin.from_dict(value)
        if origin is dict and isinstance(value, Mapping):
            return dict(value)
    return value


def _enum(kind: type[enum.Enum], value: Any) -> Any:
    """The member for ``value``; an unknown value passes through for the record's own check,
    which names the valid ones."""
    try:
        return kind(value)
    except ValueError:
        return value
