"""A measured latency table: how long the runtime takes per op kind and precision, on the
machine it was measured on (`mixq.targets.timing.profile_target` measures it).

Each (kind, precision) entry is a line fitted to one-op models of several sizes, timed in
the runtime: ``fixed`` microseconds per call plus ``per_unit`` nanoseconds per unit of work
(a multiply-accumulate for conv / linear / matmul / attention, an output element for every
other kind, as `mixq.plan.cost.OpStats` counts them). ``convert`` is the time per element of
a conversion to a precision (a QuantizeLinear, a DynamicQuantizeLinear under ``dynamic``, or
a Cast to a float type). An op runs the
kernel of the precision its inputs arrive in: ``int8`` when they arrive in 8-bit integers
and the runtime has an integer kernel for the kind; ``fp16`` for fp16 / bf16; else ``fp32``
(a 16-bit integer op is a float op between a DequantizeLinear and a QuantizeLinear, whose
cost the conversions carry). A kind the table lacks takes its ``elementwise`` entry; data
movement costs nothing when the runtime makes it a view (reshape, squeeze, ...), else the
``transpose`` entry (a copy of its output); ``call_us`` is paid once per model run.

Example:
    >>> t = LatencyTable({"linear": {"fp32": (5.0, 0.5), "int8": (8.0, 0.25)}},
    ...                  {"int8": 0.2})
    >>> t.op_us("linear", "int8", 1000), t.op_us("reshape", "fp32", 1000)
    (8.25, 0.0)
    >>> LatencyTable.from_dict(t.to_dict()) == t
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mixq.core.errors import ConfigError
from mixq.core.qtypes import qtype
from mixq.graph.kinds import is_data_movement

__all__ = ["LatencyTable", "kernel_precision"]

FALLBACK_KIND = "elementwise"
COPY_KIND = "transpose"
# kinds timed as another: the same kernel family, the same unit of work
ALIASES = {"conv_transpose": "conv", "attention": "matmul", "batch_norm": FALLBACK_KIND}
# data movement that costs nothing in the runtime (a view, or an op it removes); the rest of
# data movement (transpose, expand, slice, gather, pad, ...) copies its output elements
FREE = frozenset(
    {"reshape", "flatten", "squeeze", "unsqueeze", "getitem", "contiguous", "clone", "dropout",
     "identity", "alias", "detach"}
)  # fmt: skip


def kernel_precision(precisions: tuple[str, ...] | list[str], integer: bool) -> str:
    """The kernel an op runs given the precisions its inputs (and weights) arrive in:
    ``int8`` (8-bit or narrower integers, where ``integer`` kernels exist), ``fp16`` (a
    16-bit float anywhere) or ``fp32``.

    Example:
        >>> kernel_precision(("uint8", "int4"), integer=True), kernel_precision(("int16",), True)
        ('int8', 'fp32')
    """
    types = [qtype(p) for p in precisions] or [qtype("fp32")]
    if any(t.is_floating_point and not t.is_identity and t.bits == 16 for t in types):
        return "fp16"
    narrow = all(not t.is_floating_point and t.bits <= 8 for t in types)
    return "int8" if integer and narrow else "fp32"


@dataclass(frozen=True)
class LatencyTable:
    """Measured op and conversion times (see the module docstring).

    Attributes:
        ops: kind -> kernel precision -> (fixed µs, ns per unit of work).
        convert: precision -> ns per element converted to it.
        runtime: what ran the measurements (runtime, version, provider, threads).
        machine: where (processor, cores).
        call_us: the fixed cost of one run of a model (a session call), once per model.
    """

    ops: dict[str, dict[str, tuple[float, float]]]
    convert: dict[str, float]
    runtime: str = ""
    machine: str = ""
    notes: list[str] = field(default_factory=list)
    call_us: float = 0.0

    __hash__ = None  # type: ignore[assignment]

    def op_us(self, kind: str, precision: str, work: float) -> float:
        """Predicted microseconds of one op of ``kind`` running the ``precision`` kernel."""
        if kind in FREE:
            return 0.0
        if is_data_movement(kind):
            kind = COPY_KIND
        entry = self.ops.get(ALIASES.get(kind, kind)) or self.ops.get(FALLBACK_KIND) or {}
        line = entry.get(precision) or entry.get("fp32")
        if line is None:
            return 0.0
        fixed, per_unit = line
        return fixed + per_unit * work / 1000.0

    def convert_us(self, precision: str, elements: float) -> float:
        """Predicted microseconds of converting ``elements`` values to ``precision``."""
        t = qtype(precision)
        if t.is_identity or (t.is_floating_point and t.bits == 32):
            return 0.0
        key = "fp16" if t.is_floating_point else ("int8" if t.bits <= 8 else "int16")
        per_element = self.convert.get(key, self.convert.get("int8", 0.0))
        if t.dynamic:  # a table measured before dynamic entries: its range pass, as much again
            per_element = self.convert.get("dynamic", 2 * per_element)
        return per_element * elements / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "machine": self.machine,
            "notes": list(self.notes),
            "call_us": round(self.call_us, 4),
            "ops": {
                k: {p: [round(a, 4), round(b, 6)] for p, (a, b) in v.items()}
                for k, v in self.ops.items()
            },
            "convert": {k: round(v, 6) for k, v in self.convert.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "latency") -> LatencyTable:
        """Build from `to_dict`'s shape.

        Raises:
            ConfigError: not shaped like that (names what and where).
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("ops"), Mapping):
            raise ConfigError(
                f"{where} must be a mapping with 'ops' (kind -> precision -> "
                "[fixed_us, ns_per_unit]) and 'convert'"
            )
        ops: dict[str, dict[str, tuple[float, float]]] = {}
        for kind, entry in data["ops"].items():
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{where}.ops[{kind!r}] must map precisions to [fixed, slope]")
            ops[str(kind)] = {
                str(p): _line(v, f"{where}.ops[{kind!r}][{p!r}]") for p, v in entry.items()
            }
        convert = data.get("convert") or {}
        if not isinstance(convert, Mapping):
            raise ConfigError(f"{where}.convert must map precisions to ns per element")
        return cls(
            ops,
            {str(k): _number(v, f"{where}.convert[{k!r}]") for k, v in convert.items()},
            str(data.get("runtime") or ""),
            str(data.get("machine") or ""),
            [str(n) for n in data.get("notes") or []],
            _number(data.get("call_us", 0.0), f"{where}.call_us"),
        )


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{where} must be a number >= 0, got {value!r}")
    return float(value)


def _line(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{where} must be [fixed_us, ns_per_unit], got {value!r}")
    return _number(value[0], where), _number(value[1], where)
