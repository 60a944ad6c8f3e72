"""What one op kind supports on a target, and the steps that move an op towards it.

Example:
    >>> conv = KindSupport(("int8", "int16"), ("int8", "int16"), (("int16", "int16"),))
    >>> conv.runs("int16", "int8"), conv.runs("int16", "int16")
    (True, False)
    >>> nearest("fp16", conv.activations)
    ('int16', 'next lower')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar, cast

from mixq.core.errors import ConfigError
from mixq.core.qtypes import QTYPES, qtype
from mixq.core.validation import check_keys, positive_number, precision_names

__all__ = [
    "KindSupport",
    "OpPrecisions",
    "checked_cost",
    "forbidden_pairs",
    "lower",
    "lower_activation",
    "lower_weight",
    "nearest",
    "note_list",
    "pair_side",
    "replaced",
    "unique",
]


class OpPrecisions(Protocol):
    """What a target checks of one op: its kind and precisions. A `mixq.plan.OpPlan` is one;
    repairs return a copy made with `dataclasses.replace`, so the op must be a dataclass."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def input(self) -> tuple[str, ...]: ...
    @property
    def output(self) -> tuple[str, ...]: ...
    @property
    def weight(self) -> dict[str, str]: ...
    @property
    def rule(self) -> str: ...


OpT = TypeVar("OpT", bound=OpPrecisions)


def replaced(op: OpT, **changes: Any) -> OpT:
    """A copy of ``op`` with ``changes`` (ops are frozen dataclasses)."""
    return cast(OpT, replace(cast(Any, op), **changes))


def nearest(wanted: str, allowed: Iterable[str]) -> tuple[str, str]:
    """The allowed precision closest to ``wanted`` by `QType.rank`, and which way it moved.

    Same rank first (int8 for uint8), then the next higher precision, then the next lower;
    ties keep the order of ``allowed``.
    """
    rank = qtype(wanted).rank()
    ranked = [(qtype(p).rank(), p) for p in allowed]
    same = [p for r, p in ranked if r == rank]
    above = [p for r, p in sorted((x for x in ranked if x[0] > rank), key=lambda x: x[0])]
    below = lower(wanted, allowed)
    if same:
        return same[0], "same width"
    if above:
        return above[0], "next higher"
    if below:
        return below[0], "next lower"
    raise ConfigError(f"no precision to replace {wanted!r} with: the allowed list is empty")


def lower(wanted: str, allowed: Iterable[str]) -> list[str]:
    """Allowed precisions below ``wanted`` by rank, nearest first."""
    rank = qtype(wanted).rank()
    below = [(qtype(p).rank(), p) for p in allowed if qtype(p).rank() < rank]
    return [p for _, p in sorted(below, key=lambda x: x[0], reverse=True)]


def _pair(value: Any, activations: tuple[str, ...], weights: tuple[str, ...]) -> tuple[str, str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"forbid_pairs: expected [activation, weight], got {value!r}")
    act, weight = (precision_names(v, "forbid_pairs")[0] for v in value)
    for side, name, allowed in (("activation", act, activations), ("weight", weight, weights)):
        if name not in allowed:
            raise ConfigError(
                f"forbid_pairs: pair [{act}, {weight}] names {side} {name}, which is not in "
                f"the allowed {side}s {list(allowed)}; allow it or drop the pair"
            )
    return act, weight


@dataclass(frozen=True)
class KindSupport:
    """What one op kind (or a target's default) can run.

    Attributes:
        activations: precisions allowed for the op's input and output activations.
        weights: precisions allowed for its weights (unused by ops without weights).
        forbid_pairs: (activation, weight) pairs the target cannot run together. The
            activation side is the op's inputs, or its outputs when it reads no float
            activation (an embedding reads integer indices).

    Example:
        >>> KindSupport(["int8", "float16"], ["int8"]).activations
        ('int8', 'fp16')
    """

    activations: tuple[str, ...]
    weights: tuple[str, ...]
    forbid_pairs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        acts = precision_names(self.activations, "activations")
        weights = precision_names(self.weights, "weights")
        if not acts or not weights:
            raise ConfigError("activations and weights each need at least one precision")
        if isinstance(self.forbid_pairs, str) or not isinstance(self.forbid_pairs, (list, tuple)):
            raise ConfigError(f"forbid_pairs: expected a list of pairs, got {self.forbid_pairs!r}")
        pairs = tuple(dict.fromkeys(_pair(p, acts, weights) for p in self.forbid_pairs))
        object.__setattr__(self, "activations", acts)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "forbid_pairs", pairs)

    def runs(self, activation: str, weight: str) -> bool:
        """True if both precisions are allowed and not a forbidden pair."""
        return (
            activation in self.activations
            and weight in self.weights
            and (activation, weight) not in self.forbid_pairs
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "activations": list(self.activations),
            "weights": list(self.weights),
            "forbid_pairs": [list(p) for p in self.forbid_pairs],
        }

    @classmethod
    def from_dict(
        cls, data: Any, where: str = "kind support", default: KindSupport | None = None
    ) -> KindSupport:
        """Build from a mapping; with ``default``, a missing list is taken from it.

        ``forbid_pairs`` is never inherited: each kind lists its own.

        Raises:
            ConfigError: unknown key, invalid precision name, or a missing list without a
                default; the message names ``where``.
        """
        data = check_keys(data, ("activations", "weights", "forbid_pairs"), where)
        fallback = default.to_dict() if default else {}
        missing = [k for k in ("activations", "weights") if k not in data and k not in fallback]
        if missing:
            raise ConfigError(f"{where} needs {' and '.join(repr(k) for k in missing)}")
        try:
            return cls(
                activations=data.get("activations", fallback.get("activations")),
                weights=data.get("weights", fallback.get("weights")),
                forbid_pairs=data.get("forbid_pairs") or (),
            )
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def pair_side(op: OpPrecisions) -> tuple[str, ...]:
    """The activations a forbidden pair is about: the inputs, else (embedding) the outputs."""
    return op.input or op.output


def forbidden_pairs(op: OpPrecisions, s: KindSupport) -> list[tuple[str, str]]:
    pairs = [(a, w) for a in unique(pair_side(op)) for w in unique(op.weight.values())]
    return [p for p in pairs if p in s.forbid_pairs]


def lower_weight(op: OpT, s: KindSupport, weight: str) -> tuple[OpT, str] | None:
    """``op`` with ``weight`` lowered to the nearest precision no activation forbids."""
    for w in lower(weight, s.weights):
        if all((a, w) not in s.forbid_pairs for a in pair_side(op)):
            new = {r: w if p == weight else p for r, p in op.weight.items()}
            return replaced(op, weight=new), f"weight {weight} -> {w}"
    return None


def lower_activation(op: OpT, s: KindSupport, act: str) -> tuple[OpT, str] | None:
    """``op`` with ``act`` lowered (on the pair side) to the nearest precision no weight forbids."""
    for a in lower(act, s.activations):
        if all((a, w) not in s.forbid_pairs for w in op.weight.values()):
            side = tuple(a if p == act else p for p in pair_side(op))
            new = replaced(op, input=side) if op.input else replaced(op, output=side)
            return new, f"activation {act} -> {a}"
    return None


def note_list(value: Any, name: str) -> tuple[str, ...]:
    """A profile's notes as a tuple of strings (one string is one note)."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(n, str) for n in value):
        raise ConfigError(f"target profile {name!r} notes must be a list of strings")
    return tuple(value)


def checked_cost(cost: Any, allowed: set[str], name: str) -> dict[str, float]:
    """A profile's relative cost per precision, checked: numbers > 0, one for every
    precision the profile allows."""
    where = f"target profile {name!r} cost"
    if not isinstance(cost, Mapping):
        raise ConfigError(f"{where} must map precision names to numbers, got {cost!r}")
    checked = {
        precision_names(k, where)[0]: positive_number(v, f"{where}[{k!r}]") for k, v in cost.items()
    }
    missing = [p for p in QTYPES if p in allowed and p not in checked]
    if missing:
        raise ConfigError(
            f"{where} has no entry for {', '.join(missing)}, which the profile allows; "
            f"add e.g. '{missing[0]}: 1.0' under cost"
        )
    return checked
