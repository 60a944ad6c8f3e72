"""Parsing helpers for target profile data: keys, precision names, numbers, files.

Example:
    >>> precision_names(["int8", "float16", "int8"], "activations")
    ('int8', 'fp16')
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mixq.errors import ConfigError
from mixq.qtypes import qtype

__all__ = [
    "check_keys",
    "looks_like_path",
    "note_list",
    "positive_number",
    "precision_names",
    "read_yaml",
    "version_number",
]


def check_keys(data: Any, allowed: Sequence[str], where: str) -> Mapping[str, Any]:
    """Return ``data`` if it is a mapping whose keys are all in ``allowed``.

    Raises:
        ConfigError: not a mapping, or a key is unknown; the message suggests the closest
            allowed key and lists them all.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}: {data!r}")
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown key {key!r} in {where}{hint} (allowed keys: {', '.join(allowed)})"
            )
    return data


def precision_names(value: Any, where: str) -> tuple[str, ...]:
    """Canonical precision names from a name or a list of names, in order, without repeats.

    Raises:
        ConfigError: a name is not a precision, or ``value`` is not a name or a list.
    """
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of precision names, got {value!r}")
    names: list[str] = []
    for item in value:
        try:
            name = qtype(item).name
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        if name not in names:
            names.append(name)
    return tuple(names)


def positive_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{where} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    return float(value)


def note_list(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(n, str) for n in value):
        raise ConfigError(f"target profile {name!r} notes must be a list of strings")
    return tuple(value)


def version_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} version must be an integer, got {value!r}")
    return value


def looks_like_path(value: str | Path) -> bool:
    text = str(value)
    return (
        isinstance(value, Path)
        or text.endswith((".yaml", ".yml"))
        or "/" in text
        or os.sep in text
        or Path(text).is_file()
    )


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"target profile file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"target profile file {path} is not valid YAML: {e}") from None
