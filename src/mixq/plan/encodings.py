"""Encodings: the scale / zero point (or float type) of every quantization point.

What calibration produces and every export consumes. Plain data (lists of floats and ints),
so it saves as JSON / YAML and compares exactly.

Example:
    >>> enc = Encoding("fc", "fc", "activation", "int8", scale=[0.02], zero_point=[-3])
    >>> Encodings({"fc": enc}).to_dict()["fc"]["precision"]
    'int8'
    >>> Encodings.from_dict(Encodings({"fc": enc}).to_dict())["fc"] == enc
    True
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixq.core.errors import ConfigError
from mixq.core.qtypes import qtype
from mixq.core.records import Record

__all__ = ["ENCODINGS_VERSION", "Encoding", "Encodings"]

ENCODINGS_VERSION = 1


@dataclass
class Encoding(Record):
    """One quantization point's encoding.

    Attributes:
        name: the quantization point (see `mixq.plan.points.QuantPoint`).
        tensor: the tensor (activation) or parameter (weight) it applies to.
        kind: ``activation`` or ``weight``.
        precision: a `mixq.core.qtypes` name; float and dynamic precisions (the scale is
            chosen on every call) carry no scale.
        scale / zero_point: one value per tensor, per channel along ``axis``, or per block
            (flattened, row-major, ``block_size`` along ``axis``).
        min / max: the calibrated float range (activations), where known.
        readers: for a conversion, the ops that read it.
        mask_passthrough: values with ``|x| >= MASK_MAGNITUDE`` (attention masks: -inf,
            ``finfo.min``) pass unquantized (`mixq.observers.MASK_MAGNITUDE`); files
            without the key read as False.
    """

    name: str
    tensor: str
    kind: str
    precision: str
    scale: list[float] | None = None
    zero_point: list[int] | None = None
    axis: int | None = None
    block_size: int | None = None
    symmetric: bool = False
    min: float | None = None
    max: float | None = None
    readers: list[str] = field(default_factory=list)
    mask_passthrough: bool = False

    omit = (None, [])

    def __post_init__(self) -> None:
        self.precision = qtype(self.precision).name
        if qtype(self.precision).calibrated and self.scale is None:
            raise ConfigError(f"encoding {self.name!r} ({self.precision}) has no scale")

    @property
    def is_float(self) -> bool:
        return qtype(self.precision).is_floating_point

    @property
    def per_tensor(self) -> bool:
        return self.scale is not None and len(self.scale) == 1 and self.axis is None


@dataclass
class Encodings:
    """Encodings by quantization point name (insertion order is graph order)."""

    items: dict[str, Encoding] = field(default_factory=dict)
    version: int = ENCODINGS_VERSION

    def __getitem__(self, name: str) -> Encoding:
        return self.items[name]

    def __iter__(self) -> Iterator[Encoding]:
        return iter(self.items.values())

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, name: object) -> bool:
        return name in self.items

    def by_tensor(self) -> dict[str, list[Encoding]]:
        """Tensor / parameter name -> its encodings (a conversion adds a second one)."""
        out: dict[str, list[Encoding]] = {}
        for e in self.items.values():
            out.setdefault(e.tensor, []).append(e)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {name: e.to_dict() for name, e in self.items.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Encodings:
        return cls({name: Encoding.from_dict(d, f"encoding {name!r}") for name, d in data.items()})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"mixq_encodings": self.version, **self.to_dict()}, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Encodings:
        data = json.loads(Path(path).read_text())
        if data.pop("mixq_encodings", None) is None:
            raise ConfigError(f"{path} is not a mixq encodings file (no 'mixq_encodings' key)")
        return cls.from_dict(data)
