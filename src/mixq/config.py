"""What the user asks for: a default precision, ordered per-op requests and a scheme.

A `Config` is data: it round-trips through `to_dict` / `from_dict` (and YAML), carries a
``version`` and rejects unknown keys. `mixq.graph.resolve` turns it into a `Plan`.

Example:
    >>> cfg = Config(default="int8")
    >>> cfg.set_precision("fc", activation="int16").rules[0].activation
    'int16'
    >>> Config.from_dict({"default": {"activation": "int8", "weight": "int4"}}).default.weight
    'int4'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from mixq.errors import ConfigError
from mixq.qtypes import qtype

__all__ = [
    "CONFIG_VERSION",
    "Config",
    "Granularity",
    "Precision",
    "PrecisionLike",
    "Request",
    "Scheme",
]

CONFIG_VERSION = 1


class Granularity(str, Enum):
    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    PER_BLOCK = "per_block"


def _check_keys(data: dict[str, Any], cls: type, where: str) -> None:
    allowed = {f.name for f in fields(cls)}
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} in {where}; allowed keys are {sorted(allowed)}"
        )


def _precision_name(value: Any, where: str) -> str | None:
    if value is None:
        return None
    try:
        return qtype(value).name
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


@dataclass(frozen=True)
class Precision:
    """An (activation, weight) precision pair; None means "leave as it is"."""

    activation: str | None = None
    weight: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "activation", _precision_name(self.activation, "activation"))
        object.__setattr__(self, "weight", _precision_name(self.weight, "weight"))

    @classmethod
    def parse(cls, value: Any, where: str = "precision") -> Precision:
        """Accept ``"int8"``, ``("int8", "int4")``, ``{"activation": ..., "weight": ...}``."""
        if isinstance(value, Precision):
            return value
        if isinstance(value, str):
            return cls(value, value)
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(value[0], value[1])
        if isinstance(value, dict):
            _check_keys(value, cls, where)
            return cls(**value)
        raise ConfigError(
            f"{where}: expected a precision name, an (activation, weight) pair "
            f"or a dict with 'activation' / 'weight', got {value!r}"
        )


@dataclass(frozen=True)
class Request:
    """One precision request on ``target`` (an op name); later requests win."""

    target: str
    activation: str | None = None
    weight: str | None = None

    def __post_init__(self) -> None:
        where = f"request on {self.target!r}"
        object.__setattr__(self, "activation", _precision_name(self.activation, where))
        object.__setattr__(self, "weight", _precision_name(self.weight, where))


@dataclass(frozen=True)
class Scheme:
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


PrecisionLike = Precision | str | tuple[str, str] | dict[str, Any]


@dataclass(init=False)
class Config:
    """A default precision plus ordered requests; resolved into a Plan by `mixq.quantize`.

    Args:
        default: the precision of every op no request names: ``"int8"``, a pair
            ``("int8", "int4")`` (activation, weight) or a dict.
        rules: requests, applied in order (later wins); `set_precision` appends one.
        scheme: how quantizers are parametrised.
        target: name of the deployment target profile.
    """

    default: Precision
    rules: list[Request]
    scheme: Scheme
    target: str
    version: int

    def __init__(
        self,
        default: PrecisionLike = "int8",
        rules: list[Request] | None = None,
        scheme: Scheme | None = None,
        target: str = "generic",
        version: int = CONFIG_VERSION,
    ) -> None:
        self.default = Precision.parse(default, "default")
        self.rules = list(rules or [])
        self.scheme = scheme or Scheme()
        self.target = target
        self.version = version
        if self.default.activation is None or self.default.weight is None:
            raise ConfigError(
                "the default precision needs both an activation and a weight "
                f"precision, got {self.default}"
            )

    def set_precision(
        self, target: str, activation: str | None = None, weight: str | None = None
    ) -> Config:
        """Request a precision for ``target``; a later request on the same op wins."""
        self.rules.append(Request(target, activation, weight))
        return self

    def to_dict(self) -> dict[str, Any]:
        scheme = asdict(self.scheme)
        scheme["weight_granularity"] = self.scheme.weight_granularity.value
        return {
            "version": self.version,
            "target": self.target,
            "default": asdict(self.default),
            "rules": [asdict(r) for r in self.rules],
            "scheme": scheme,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a dict; ``ops: {name: precision}`` is shorthand for exact-name rules."""
        allowed = {"version", "target", "default", "rules", "ops", "scheme"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(
                f"unknown key(s) {sorted(unknown)} in config; allowed keys are {sorted(allowed)}"
            )
        version = int(data.get("version", CONFIG_VERSION))
        if version > CONFIG_VERSION:
            raise ConfigError(
                f"config version {version} is newer than this mixq understands "
                f"({CONFIG_VERSION}); upgrade mixq"
            )
        rules = [_parse_rule(r) for r in data.get("rules", [])]
        for name, value in (data.get("ops") or {}).items():
            p = Precision.parse(value, f"ops[{name!r}]")
            rules.append(Request(name, p.activation, p.weight))
        scheme = data.get("scheme") or {}
        _check_keys(scheme, Scheme, "scheme")
        return cls(
            default=Precision.parse(data.get("default", "int8"), "default"),
            rules=rules,
            scheme=Scheme(**scheme),
            target=str(data.get("target", "generic")),
            version=version,
        )

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_dict(_read_yaml(path))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    @classmethod
    def coerce(cls, value: Config | dict[str, Any] | tuple[str, str] | str | Path | None) -> Config:
        """A Config from a Config, a dict, a precision name or pair, or a YAML path."""
        if value is None:
            return cls()
        if isinstance(value, Config):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, (tuple, list)):
            return cls(default=(value[0], value[1]))
        if isinstance(value, Path) or str(value).endswith((".yaml", ".yml")):
            return cls.load(value)
        return cls(default=str(value))


def _parse_rule(data: Any) -> Request:
    if not isinstance(data, dict):
        raise ConfigError(f"a rule must be a mapping with 'target', got {data!r}")
    _check_keys(data, Request, "rule")
    if "target" not in data:
        raise ConfigError(f"rule {data!r} has no 'target'")
    return Request(**data)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a YAML mapping")
    return data
