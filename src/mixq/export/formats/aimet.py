"""QNN / AIMET encodings JSON (QNN's ``--quantization_overrides``), versions 0.6.1 and 1.0.0.

Mapping (both versions):

- activation encodings are keyed by tensor name, parameter encodings by parameter name;
  a conversion point (``t@int8``, a second encoding of ``t`` for some readers) is kept
  under its point name, so nothing is dropped; QNN, which keys by tensor, ignores it.
- AIMET's offset is on the unsigned grid ``0 .. 2**bits - 1``:
  ``offset = -zero_point`` for unsigned precisions and ``-(zero_point + 2**(bits-1))`` for
  signed ones (AIMET's own legacy shift by qmin), so ``offset == round(min / scale)``.
- 0.6.1: one dict per channel, ``is_symmetric`` the string ``"True"``/``"False"``,
  ``min``/``max`` the grid's ends; 1.0.0: ``enc_type`` PER_TENSOR / PER_CHANNEL /
  PER_BLOCK (with ``block_size``), ``is_sym`` a bool, scale and offset lists, no min/max.
- float points: ``{"bitwidth": 16, "dtype": "float"}`` (0.6.1) or ``dtype`` FLOAT with
  ``bw`` (1.0.0). Neither version tells fp16 from bf16 (AIMET writes both as 16-bit).
- fp32 islands of the plan (ops kept in float, which have no quantization point) are
  written as 32-bit float activation entries, as QAIRT's npi converter does, and read back
  as precisions, not encodings.

What AIMET cannot hold (the signedness of an asymmetric grid, the channel / block axis,
bf16, the calibrated min/max, a conversion's readers) goes to a top-level ``"mixq"``
section, so mixq reads its own files back exactly; a file without it (from AIMET) is read
with AIMET's conventions: symmetric means signed, channel axis 0, block axis 1, 16-bit
float fp16. Per-block encodings (0.6.1) and fp8 points cannot be written: ValueError.

Example:
    >>> import json
    >>> from mixq.plan.encodings import Encoding, Encodings
    >>> enc = Encodings({"x": Encoding("x", "x", "activation", "uint8", scale=[0.5],
    ...                                zero_point=[114], min=-57.0, max=70.5)})
    >>> entry = json.loads(Aimet061().dump(None, enc, None))["activation_encodings"]["x"]
    >>> entry[0]["offset"], entry[0]["is_symmetric"], entry[0]["min"]
    (-114, 'False', -57.0)
    >>> Aimet061().load(Aimet061().dump(None, enc, None)).encodings == enc
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from mixq.core.errors import ConfigError
from mixq.core.qtypes import qtype
from mixq.export.formats.common import (
    dump_json,
    float_island_tensors,
    load_json,
    split_point_name,
    try_json,
)
from mixq.export.formats.registry import VendorData, register_format
from mixq.graph.ir import Graph
from mixq.plan.encodings import Encoding, Encodings
from mixq.plan.plan import Plan

__all__ = ["Aimet061", "Aimet100"]

_FLOAT_BITS = {"fp16": 16, "bf16": 16, "fp32": 32}
_FLOAT_OF_BITS = {16: "fp16", 32: "fp32"}


@dataclass
class _Raw:
    """One entry as the file holds it, version-neutral."""

    bits: int
    is_float: bool = False
    symmetric: bool = False
    scale: list[float] | None = None
    offset: list[int] | None = None
    enc_type: str = "PER_TENSOR"
    block_size: int | None = None
    min: float | None = None
    max: float | None = None


def _shift(precision: str) -> int:
    q = qtype(precision)
    return 2 ** (q.bits - 1) if q.is_signed else 0


def _raw(e: Encoding, version: str) -> _Raw:
    """The file's view of ``e``; ValueError naming the point if the version cannot hold it."""
    if e.is_float:
        if e.precision not in _FLOAT_BITS:
            raise ValueError(
                f"quantization point {e.name!r} is {e.precision}; AIMET {version} encodings "
                "hold only 16- and 32-bit floats"
            )
        return _Raw(_FLOAT_BITS[e.precision], is_float=True)
    assert e.scale is not None  # Encoding checks that integer points have one
    zero_point = e.zero_point if e.zero_point is not None else [0] * len(e.scale)
    if e.block_size is not None and version == "0.6.1":
        raise ValueError(
            f"quantization point {e.name!r} is per-block (block_size {e.block_size}); AIMET "
            "0.6.1 encodings cannot hold per-block scales: export aimet-1.0.0 instead"
        )
    if not all(math.isfinite(s) for s in e.scale):
        raise ValueError(f"quantization point {e.name!r} has a non-finite scale: recalibrate")
    bits, shift = qtype(e.precision).bits, _shift(e.precision)
    offset = [-(z + shift) for z in zero_point]
    enc_type = "PER_BLOCK" if e.block_size else "PER_TENSOR" if e.per_tensor else "PER_CHANNEL"
    lo = [o * s for o, s in zip(offset, e.scale, strict=True)]
    hi = [(o + 2**bits - 1) * s for o, s in zip(offset, e.scale, strict=True)]
    return _Raw(
        bits, False, e.symmetric, list(e.scale), offset, enc_type, e.block_size, min(lo), max(hi)
    )


def _decode(name: str, kind: str, raw: _Raw, side: dict[str, Any]) -> Encoding:
    """The Encoding an entry stands for; ``side`` (the mixq section) overrides fields."""
    tensor = name if kind == "weight" else split_point_name(name)[0]
    if raw.is_float:
        if raw.bits not in _FLOAT_OF_BITS:
            raise ConfigError(f"encoding {name!r}: a {raw.bits}-bit float is not supported")
        fields = asdict(Encoding(name, tensor, kind, _FLOAT_OF_BITS[raw.bits]))
        return Encoding(**{**fields, **side})
    if raw.scale is None or raw.offset is None:
        raise ConfigError(f"encoding {name!r} has no scale / offset")
    signed_name = f"{'' if raw.symmetric else 'u'}int{raw.bits}"
    precision = side.get("precision", signed_name)
    shift = _shift(precision)
    axis = {"PER_TENSOR": None, "PER_CHANNEL": 0, "PER_BLOCK": 1}.get(raw.enc_type, -1)
    if axis == -1:
        raise ConfigError(f"encoding {name!r}: enc_type {raw.enc_type!r} is not supported")
    zero_point = [-o - shift for o in raw.offset]
    plain = Encoding(name, tensor, kind, precision, raw.scale, zero_point, axis, raw.block_size)
    fields = {**asdict(plain), "symmetric": raw.symmetric, "min": raw.min, "max": raw.max}
    return Encoding(**{**fields, **side})


def _side(e: Encoding, raw: _Raw) -> dict[str, Any]:
    """The fields of ``e`` that ``raw`` (the entry as read back) does not give back."""
    side = (
        {"precision": e.precision}
        if e.precision != _decode(e.name, e.kind, raw, {}).precision
        else {}
    )
    plain = asdict(_decode(e.name, e.kind, raw, side))
    side.update({k: v for k, v in asdict(e).items() if plain[k] != v})
    return side


def _islands(plan: Plan | None, graph: Graph | None, encodings: Encodings) -> list[str]:
    """fp32 output tensors of the plan that no encoding covers (QNN must keep them float)."""
    if plan is None or graph is None:
        return []
    covered = {e.tensor for e in encodings if e.kind == "activation" and not e.readers}
    inputs = set(graph.inputs)
    return [t for t in float_island_tensors(plan, graph) if t not in covered | inputs]


class _Aimet:
    """Shared by both versions; a subclass says how one entry is spelt."""

    version = ""
    suffix = ".encodings"
    needs: tuple[str, ...] = ("encodings",)
    uses = ("encodings", "plan", "graph")  # the plan and graph give the fp32 islands

    def entry(self, name: str, raw: _Raw) -> Any:
        raise NotImplementedError

    def parse(self, name: str, value: Any) -> _Raw:
        raise NotImplementedError

    def sections(self, data: dict[str, Any], key: str) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def pack(self, items: list[tuple[str, Any]]) -> Any:
        raise NotImplementedError

    def dump(self, plan: Plan | None, encodings: Encodings | None, graph: Graph | None) -> str:
        assert encodings is not None
        acts: list[tuple[str, Any]] = []
        params: list[tuple[str, Any]] = []
        side: dict[str, dict[str, Any]] = {}
        for e in encodings:
            entry = self.entry(e.name, _raw(e, self.version))
            (params if e.kind == "weight" else acts).append((e.name, entry))
            diff = _side(e, self.parse(e.name, entry))
            if diff:
                side[e.name] = diff
        for t in _islands(plan, graph, encodings):
            acts.append((t, self.entry(t, _Raw(32, is_float=True))))
        data = {
            "version": self.version,
            "activation_encodings": self.pack(acts),
            "param_encodings": self.pack(params),
            "mixq": {"version": 1, "points": side},
        }
        return dump_json(data) + "\n"

    def load(self, text: str) -> VendorData:
        data = load_json(text, f"an AIMET {self.version} encodings file")
        if not isinstance(data, dict):
            raise ConfigError(f"an AIMET {self.version} encodings file is a JSON object")
        mixq = data.get("mixq")
        side = (mixq or {}).get("points", {})
        out = VendorData(encodings=Encodings())
        assert out.encodings is not None
        for key, kind in (("activation_encodings", "activation"), ("param_encodings", "weight")):
            for name, value in self.sections(data, key):
                try:
                    raw = self.parse(name, value)
                except (KeyError, TypeError, ValueError) as e:
                    raise ConfigError(f"AIMET {self.version} encoding {name!r}: bad {e}") from e
                if raw.is_float and raw.bits == 32 and kind == "activation" and name not in side:
                    out.precisions[f"tensor:{name}"] = "fp32"
                else:
                    out.encodings.items[name] = _decode(name, kind, raw, side.get(name, {}))
        if mixq is None:
            out.notes.append(
                "no mixq section: read with AIMET's conventions (symmetric = signed grid, "
                "channel axis 0, block axis 1, 16-bit float = fp16, min/max of the grid)"
            )
        return out


@register_format("aimet-0.6.1")
class Aimet061(_Aimet):
    """QNN / AIMET encodings 0.6.1: per-tensor dicts, one per channel; is_symmetric a string."""

    version = "0.6.1"

    def entry(self, name: str, raw: _Raw) -> Any:
        if raw.is_float:
            return [{"bitwidth": raw.bits, "dtype": "float"}]
        assert raw.scale is not None and raw.offset is not None
        top = 2**raw.bits - 1
        return [
            {
                "bitwidth": raw.bits,
                "dtype": "int",
                "is_symmetric": str(raw.symmetric),
                "min": o * s,
                "max": (o + top) * s,
                "scale": s,
                "offset": o,
            }
            for s, o in zip(raw.scale, raw.offset, strict=True)
        ]

    def parse(self, name: str, value: Any) -> _Raw:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"0.6.1 encoding {name!r} must be a non-empty list of dicts")
        first = value[0]
        if first.get("dtype") == "float":
            return _Raw(int(first["bitwidth"]), is_float=True)
        return _Raw(
            int(first["bitwidth"]),
            symmetric=str(first.get("is_symmetric")) == "True",
            scale=[float(d["scale"]) for d in value],
            offset=[int(d["offset"]) for d in value],
            enc_type="PER_CHANNEL" if len(value) > 1 else "PER_TENSOR",
            min=min(float(d["min"]) for d in value) if "min" in first else None,
            max=max(float(d["max"]) for d in value) if "max" in first else None,
        )

    def sections(self, data: dict[str, Any], key: str) -> list[tuple[str, Any]]:
        return list((data.get(key) or {}).items())

    def pack(self, items: list[tuple[str, Any]]) -> Any:
        return dict(items)

    def sniff(self, text: str) -> bool:
        data = try_json(text)
        return (
            isinstance(data, dict)
            and isinstance(data.get("activation_encodings", data.get("param_encodings")), dict)
            and data.get("version", "0.6.1") == "0.6.1"
        )


@register_format("aimet-1.0.0")
class Aimet100(_Aimet):
    """QNN / AIMET encodings 1.0.0: lists of named entries; PER_TENSOR/CHANNEL/BLOCK."""

    version = "1.0.0"

    def entry(self, name: str, raw: _Raw) -> Any:
        if raw.is_float:
            return {"name": name, "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": raw.bits}
        out = {
            "name": name,
            "dtype": "INT",
            "enc_type": raw.enc_type,
            "bw": raw.bits,
            "is_sym": raw.symmetric,
            "scale": raw.scale,
            "offset": raw.offset,
        }
        if raw.block_size is not None:
            out["block_size"] = raw.block_size
        return out

    def parse(self, name: str, value: Any) -> _Raw:
        if not isinstance(value, dict):
            raise ConfigError(f"1.0.0 encoding {name!r} must be a dict")
        if value.get("dtype") == "FLOAT":
            return _Raw(int(value["bw"]), is_float=True)
        return _Raw(
            int(value["bw"]),
            symmetric=bool(value.get("is_sym", False)),
            scale=[float(s) for s in value["scale"]],
            offset=[int(o) for o in value["offset"]],
            enc_type=str(value.get("enc_type", "PER_TENSOR")),
            block_size=value.get("block_size"),
        )

    def sections(self, data: dict[str, Any], key: str) -> list[tuple[str, Any]]:
        return [(str(d["name"]), d) for d in data.get(key) or []]

    def pack(self, items: list[tuple[str, Any]]) -> Any:
        return [value for _, value in items]

    def sniff(self, text: str) -> bool:
        data = try_json(text)
        return isinstance(data, dict) and data.get("version") == "1.0.0"
