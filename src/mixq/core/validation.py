"""Checking user input: unknown keys, precision names, numbers, YAML files.

Every config-like record (configs, requests, setters, target profiles, transforms) validates
with these, so a misspelled key is an error with a suggestion everywhere, never a silent no-op.

Example:
    >>> check_keys({"activation": "int8"}, {"activation", "weight"}, "ops.fc")
    {'activation': 'int8'}
    >>> check_keys({"activaton": "int8"}, {"activation", "weight"}, "ops.fc")
    Traceback (most recent call last):
    ...
    mixq.core.errors.ConfigError: unknown key 'activaton' in ops.fc; did you mean ...
    >>> precision_names(["int8", "float16", "int8"], "activations")
    ('int8', 'fp16')
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from mixq.core.errors import ConfigError
from mixq.core.qtypes import qtype

__all__ = [
    "check_keys",
    "looks_like_path",
    "positive_number",
    "precision_name",
    "precision_names",
    "read_yaml",
    "version_number",
]


def check_keys(data: Any, allowed: Iterable[str] | type, where: str) -> Mapping[str, Any]:
    """Return ``data`` if it is a mapping whose keys are all in ``allowed`` (names, or a
    dataclass whose fields are the names).

    Raises:
        ConfigError: not a mapping, or a key is unknown; the message suggests the closest
            allowed key and lists them all.
    """
    if isinstance(allowed, type) and is_dataclass(allowed):
        names = [f.name for f in fields(allowed)]
    else:
        names = list(allowed)  # type: ignore[arg-type]
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}: {data!r}")
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown key {key!r} in {where}{hint} (allowed keys: {', '.join(sorted(names))})"
            )
    return data


def precision_name(value: Any, where: str, weight: bool = False) -> str | None:
    """The canonical name of one precision (None stays None); a ``weight`` 's is never
    dynamic (weights are constants: their scale is chosen once)."""
    if value is None:
        return None
    try:
        t = qtype(value)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    if t.dynamic and weight:
        raise ConfigError(
            f"{where}: {t.name} chooses its scale on every call, which only an activation "
            "needs; give weights a static precision (int8 is the fast pair with it)"
        )
    return t.name


def static_weight(precision: str) -> str:
    """The weight precision that goes with an activation precision named alone: itself,
    or int8 for a dynamic one (ORT's fast pair: u8 activations, s8 weights)."""
    try:
        return "int8" if qtype(precision).dynamic else precision
    except ValueError:
        return precision  # the caller's check names the unknown precision


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
        name = precision_name(item, where)
        if name not in names:
            names.append(name)  # type: ignore[arg-type]
    return tuple(names)


def positive_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{where} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    return float(value)


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


def read_yaml(path: str | Path, what: str = "file", mapping: bool = True) -> Any:
    """Load a YAML file; a missing file, invalid YAML or (with ``mapping``) anything but a
    mapping at the top is a `ConfigError` naming ``what``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from None
    if mapping and not isinstance(data, dict):
        raise ConfigError(f"{what} {path} does not hold a YAML mapping")
    return data
