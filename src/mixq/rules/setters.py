"""A Horizon-style setter chain: ordered setters, the first that matches an op decides.

The chain replaces the default as the base precision of the ops it matches; the
Config's rules then apply on top of it (later wins).

Example:
    >>> chain = [ModuleNameSetter({"fc": "int16"}), KindSetter({"softmax": "fp16"})]
    >>> setter_from_dict(chain[1].to_dict()) == chain[1]
    True
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixq.core.errors import ConfigError
from mixq.core.validation import check_keys
from mixq.plan.types import Precision

__all__ = [
    "KindSetter",
    "ModuleNameSetter",
    "SensitivitySetter",
    "Setter",
    "read_sensitivity_table",
    "setter_from_dict",
]

_LOWER_IS_WORSE = {"cosine", "sqnr"}


@dataclass(frozen=True)
class ModuleNameSetter:
    """Precisions by op name or module path (a path covers its sub-tree)."""

    mapping: dict[str, Any]

    __hash__ = None  # type: ignore[assignment]

    def requests(self) -> list[tuple[str, Precision, str]]:
        return [
            (name, Precision.parse(p, f"module_name[{name!r}]"), f"module_name {name!r}")
            for name, p in self.mapping.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"module_name": dict(self.mapping)}


@dataclass(frozen=True)
class KindSetter:
    """Precisions by canonical op kind."""

    mapping: dict[str, Any]

    __hash__ = None  # type: ignore[assignment]

    def requests(self) -> list[tuple[str, Precision, str]]:
        return [
            (f"kind:{k}", Precision.parse(p, f"kind[{k!r}]"), f"kind {k!r}")
            for k, p in self.mapping.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": dict(self.mapping)}


@dataclass(frozen=True)
class SensitivitySetter:
    """Raise the most sensitive ops (top ``ratio`` or ``topk`` of the table) to ``high``.

    As Horizon's setter, the count is taken over the whole table, then only rows of
    ``kind`` (``activation``, ``weight`` or ``both``) are kept, so fewer ops may be raised.
    """

    table: str | list[dict[str, Any]]
    ratio: float | None = None
    topk: int | None = None
    kind: str = "activation"
    high: str = "int16"
    rows: list[dict[str, Any]] = field(default_factory=list, compare=False, repr=False)

    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.topk is None):
            raise ConfigError("sensitivity setter needs exactly one of 'ratio' or 'topk'")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError(f"sensitivity ratio must be in (0, 1], got {self.ratio}")
        if self.kind not in ("activation", "weight", "both"):
            raise ConfigError(
                f"sensitivity kind must be activation, weight or both, not {self.kind!r}"
            )
        object.__setattr__(self, "rows", read_sensitivity_table(self.table))

    def requests(self) -> list[tuple[str, Precision, str]]:
        count = (
            self.topk if self.topk is not None else math.ceil(len(self.rows) * (self.ratio or 1))
        )
        top = self.rows[:count]
        chosen = [r for r in top if self.kind == "both" or r["kind"] == self.kind]
        out = []
        for row in chosen:
            act = self.high if row["kind"] == "activation" else None
            weight = self.high if row["kind"] == "weight" else None
            label = f"sensitivity {row['kind']} rank {self.rows.index(row) + 1}"
            out.append((row["op"], Precision(act, weight), label))
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"sensitivity": self.table, "kind": self.kind, "high": self.high}
        d.update({"ratio": self.ratio} if self.ratio is not None else {"topk": self.topk})
        return d


Setter = ModuleNameSetter | KindSetter | SensitivitySetter


def read_sensitivity_table(source: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of (op, kind, score), most sensitive first, from a CSV / JSON path or a list.

    Scores are "higher is worse" unless a ``metric`` column says cosine or SQNR.
    """
    rows = _load_rows(source)
    for row in rows:
        missing = {"op", "kind", "score"} - set(row)
        if missing:
            raise ConfigError(
                f"sensitivity row {row} lacks {sorted(missing)}; expected "
                "columns op, kind (activation/weight), score"
            )
        row["score"] = float(row["score"])
    metric = str(rows[0].get("metric", "")).lower() if rows else ""
    return sorted(rows, key=lambda r: r["score"], reverse=metric not in _LOWER_IS_WORSE)


def _load_rows(source: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(source, list):
        return [dict(r) for r in source]
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"sensitivity table {path} does not exist")
    if path.suffix == ".csv":
        with path.open() as f:
            return [dict(r) for r in csv.DictReader(f)]
    data = json.loads(path.read_text())
    return list(data["rows"] if isinstance(data, dict) else data)


def setter_from_dict(data: Any) -> Setter:
    """One setter from its YAML form."""
    if not isinstance(data, dict):
        raise ConfigError(f"a setter must be a mapping, got {data!r}")
    if "module_name" in data:
        check_keys(data, {"module_name"}, "module_name setter")
        return ModuleNameSetter(dict(data["module_name"]))
    if "sensitivity" in data:
        check_keys(data, {"sensitivity", "ratio", "topk", "kind", "high"}, "sensitivity setter")
        d = dict(data)
        return SensitivitySetter(table=d.pop("sensitivity"), **d)
    if "kind" in data:
        check_keys(data, {"kind"}, "kind setter")
        return KindSetter(dict(data["kind"]))
    raise ConfigError(f"unknown setter {data!r}; use 'module_name', 'sensitivity' or 'kind'")
