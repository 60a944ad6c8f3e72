"""Precision types: one frozen record per precision, in one registry.

Example:
    >>> from mixq.core.qtypes import qtype
    >>> qtype("int8").qmin, qtype("int8").qmax
    (-128, 127)
    >>> qtype("fp16").is_floating_point
    True
    >>> qtype("dynamic").name, qtype("uint8_dynamic").dynamic
    ('uint8_dynamic', True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["QTYPES", "QType", "higher", "qtype"]


@dataclass(frozen=True)
class QType:
    """A numeric precision a tensor can be quantized or cast to.

    Integer types carry their grid (``qmin``..``qmax``); float types carry the torch
    dtype used to round to them and their largest finite value (saturation bound).

    ``dynamic``: an activation precision whose scale and zero point are chosen on every
    call from the tensor's own min and max (ONNX ``DynamicQuantizeLinear``: uint8, the range
    widened to include 0), so it needs no calibration. ONNX Runtime's CPU provider runs a
    linear reading it as ``DynamicQuantizeLinear`` -> ``MatMulIntegerToFloat``, what its
    ``quantize_dynamic`` writes.
    """

    name: str
    bits: int
    is_floating_point: bool
    qmin: int = 0
    qmax: int = 0
    torch_dtype: torch.dtype | None = None
    max_finite: float = 0.0
    mantissa_bits: int = 0
    dynamic: bool = False

    @property
    def is_signed(self) -> bool:
        return self.is_floating_point or self.qmin < 0

    @property
    def calibrated(self) -> bool:
        """True for integer precisions whose scale comes from a range (calibrated, fixed or
        loaded); float and dynamic precisions need none."""
        return not self.is_floating_point and not self.dynamic

    @property
    def is_identity(self) -> bool:
        """True for fp32: the simulation needs no quantizer for it."""
        return self.name == "fp32"

    @property
    def storage_dtype(self) -> torch.dtype:
        """The torch integer dtype that holds quantized values of this type."""
        if self.is_floating_point:
            raise ValueError(f"{self.name} is a float precision; it has no integer storage")
        return _STORAGE[self.name]

    def rank(self) -> tuple[int, int, int]:
        """Sort key, low to high precision: bits, then integer before float, then mantissa."""
        return (self.bits, int(self.is_floating_point), self.mantissa_bits)

    def __str__(self) -> str:
        return self.name


def _int(name: str, bits: int, signed: bool) -> QType:
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return QType(name, bits, False, qmin=qmin, qmax=qmax, mantissa_bits=bits)


def _float(name: str, bits: int, dtype: torch.dtype, mantissa: int) -> QType:
    return QType(
        name,
        bits,
        True,
        torch_dtype=dtype,
        max_finite=float(torch.finfo(dtype).max),
        mantissa_bits=mantissa,
    )


QTYPES: dict[str, QType] = {
    t.name: t
    for t in (
        _int("int4", 4, True),
        _int("uint4", 4, False),
        _int("int8", 8, True),
        _int("uint8", 8, False),
        QType("uint8_dynamic", 8, False, qmin=0, qmax=255, mantissa_bits=8, dynamic=True),
        _int("int16", 16, True),
        _int("uint16", 16, False),
        _float("fp8_e4m3", 8, torch.float8_e4m3fn, 3),
        _float("fp8_e5m2", 8, torch.float8_e5m2, 2),
        _float("bf16", 16, torch.bfloat16, 7),
        _float("fp16", 16, torch.float16, 10),
        _float("fp32", 32, torch.float32, 23),
    )
}

_STORAGE = {
    "int4": torch.int8,
    "uint4": torch.uint8,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "uint8_dynamic": torch.uint8,
    "int16": torch.int16,
    "uint16": torch.int32,  # torch.uint16 lacks most kernels; int32 holds 0..65535 exactly
}

_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "fp8": "fp8_e4m3",
    "fp8_e4m3fn": "fp8_e4m3",
    "dynamic": "uint8_dynamic",
    "dynamic_uint8": "uint8_dynamic",
}


def qtype(name: str | QType) -> QType:
    """Look a precision up by name (case-insensitive; ``float16`` etc. are accepted).

    Raises:
        ValueError: the name is unknown; the message lists the valid names.
    """
    if isinstance(name, QType):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in QTYPES:
        valid = ", ".join(QTYPES)
        raise ValueError(f"unknown precision {name!r}; valid precisions are: {valid}")
    return QTYPES[key]


def higher(a: str | QType, b: str | QType) -> QType:
    """The higher of two precisions (see `QType.rank`)."""
    qa, qb = qtype(a), qtype(b)
    return qa if qa.rank() >= qb.rank() else qb
