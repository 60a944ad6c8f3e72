"""Small value types shared by configs, setters and plans.

Example:
    >>> Precision.parse(("int8", "int4"))
    Precision(activation='int8', weight='int4')
    >>> Scheme(weight_granularity="per_tensor").weight_granularity.value
    'per_tensor'
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from mixq.core.errors import ConfigError
from mixq.core.records import Record
from mixq.core.validation import check_keys, precision_name, static_weight

__all__ = ["Granularity", "Precision", "PrecisionLike", "Scheme"]


class Granularity(str, Enum):
    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    PER_BLOCK = "per_block"


@dataclass(frozen=True)
class Precision:
    """An (activation, weight) precision pair; None means "leave as it is"."""

    activation: str | None = None
    weight: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "activation", precision_name(self.activation, "activation"))
        object.__setattr__(self, "weight", precision_name(self.weight, "weight", weight=True))

    @classmethod
    def parse(cls, value: Any, where: str = "precision") -> Precision:
        """Accept ``"int8"``, ``("int8", "int4")``, ``{"activation": ..., "weight": ...}``;
        one dynamic name (``"uint8_dynamic"``) gives int8 weights."""
        if isinstance(value, Precision):
            return value
        if isinstance(value, str):
            return cls(value, static_weight(value))
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(value[0], value[1])
        if isinstance(value, dict):
            check_keys(value, cls, where)
            return cls(**value)
        raise ConfigError(
            f"{where}: expected a precision name, an (activation, weight) pair "
            f"or a dict with 'activation' / 'weight', got {value!r}"
        )


PrecisionLike = Precision | str | tuple[str, str] | dict[str, Any]


@dataclass(frozen=True)
class Scheme(Record):
    """How quantizers are parametrised (the same for every op unless a rule says otherwise)."""

    activation_symmetric: bool = False
    weight_symmetric: bool = True
    weight_granularity: Granularity = Granularity.PER_CHANNEL
    weight_block_size: int | None = None
    observer: str = "minmax"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "weight_granularity", Granularity(self.weight_granularity))
        except ValueError:
            valid = [g.value for g in Granularity]
            raise ConfigError(
                f"weight_granularity {self.weight_granularity!r} is not one of {valid}"
            ) from None
        if self.weight_granularity is Granularity.PER_BLOCK and not self.weight_block_size:
            raise ConfigError("weight_granularity 'per_block' needs weight_block_size (e.g. 32)")

    @classmethod
    def from_dict(cls, data: Any, where: str | None = None) -> Scheme:
        return super().from_dict(data or {}, where or "scheme")
