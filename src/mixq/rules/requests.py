"""The requests a Config holds, in the order they were made (later wins).

- `Request`: a precision on a target (op name, module sub-tree, class, kind, glob,
  regex, tensor; see `mixq.graph.match`), as AIMET's ``set_precision``;
- `ModelIORequest`: the precision of model inputs / outputs by position (None = leave);
- `PrecisionModeRequest`: an Ascend ``--precision_mode`` over the whole model, with
  trust / block / gray lists, ``keep_dtype`` entries and ``modify_mixlist`` edits.

Each reads from and writes to a plain dict (the YAML form) and rejects unknown keys.

Example:
    >>> rule_from_dict({"target": "fc", "activation": "int16"})
    Request(target='fc', activation='int16', weight=None, params=None)
    >>> rule_from_dict({"model_output": ["fp32"]}).precisions
    ('fp32',)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mixq.core.errors import ConfigError
from mixq.core.records import Record
from mixq.core.validation import check_keys, precision_name

__all__ = ["ModelIORequest", "PrecisionModeRequest", "Request", "Rule", "rule_from_dict"]


@dataclass(frozen=True)
class Request(Record):
    """A precision request on ``target``; ``params`` sets single weights by role."""

    target: str
    activation: str | None = None
    weight: str | None = None
    params: dict[str, str] | None = None

    def __post_init__(self) -> None:
        where = f"request on {self.target!r}"
        object.__setattr__(self, "activation", precision_name(self.activation, where))
        object.__setattr__(self, "weight", precision_name(self.weight, where, weight=True))
        if self.params is not None:
            params = {
                k: precision_name(v, f"{where}, param {k!r}", weight=True)
                for k, v in self.params.items()
            }
            object.__setattr__(self, "params", params)

    omit = (None,)
    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class ModelIORequest:
    """Precisions of the model inputs (``which="input"``) or outputs, by position."""

    which: str
    precisions: tuple[str | None, ...]

    def __post_init__(self) -> None:
        if self.which not in ("input", "output"):
            raise ConfigError(f"model IO request must be 'input' or 'output', not {self.which!r}")
        names = tuple(precision_name(p, f"model {self.which}") for p in self.precisions)
        object.__setattr__(self, "precisions", names)

    def to_dict(self) -> dict[str, Any]:
        return {f"model_{self.which}": list(self.precisions)}


@dataclass(frozen=True)
class PrecisionModeRequest:
    """An Ascend precision mode (v1 or v2 name) with its op lists.

    ``trust`` / ``block`` / ``gray`` take op kinds (canonical or Ascend OpTypes) and move
    them to the white / black / gray list; ``keep_dtype`` takes op names and
    ``OpType::Kind`` entries; ``modify_mixlist`` is the parsed JSON of ATC's file.
    """

    mode: str
    trust: tuple[str, ...] = ()
    block: tuple[str, ...] = ()
    gray: tuple[str, ...] = ()
    keep_dtype: tuple[str, ...] = ()
    modify_mixlist: dict[str, dict[str, list[str]]] | None = None

    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for name in ("trust", "block", "gray", "keep_dtype"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"precision_mode": self.mode}
        for name in ("trust", "block", "gray", "keep_dtype"):
            if getattr(self, name):
                d[name] = list(getattr(self, name))
        if self.modify_mixlist is not None:
            d["modify_mixlist"] = self.modify_mixlist
        return d


Rule = Request | ModelIORequest | PrecisionModeRequest


def rule_from_dict(data: Any) -> Rule:
    """One rule from its YAML form; the keys tell which kind it is."""
    if not isinstance(data, dict):
        raise ConfigError(f"a rule must be a mapping, got {data!r}")
    if "precision_mode" in data:
        check_keys(
            data,
            {"precision_mode", "trust", "block", "gray", "keep_dtype", "modify_mixlist"},
            "precision_mode rule",
        )
        d = dict(data)
        return PrecisionModeRequest(mode=d.pop("precision_mode"), **d)
    for which in ("input", "output"):
        if f"model_{which}" in data:
            check_keys(data, {f"model_{which}"}, f"model_{which} rule")
            return ModelIORequest(which, tuple(data[f"model_{which}"]))
    check_keys(data, [f.name for f in fields(Request)], "rule")
    if "target" not in data:
        raise ConfigError(
            f"rule {data!r} needs a 'target' (or 'model_input', 'model_output', 'precision_mode')"
        )
    return Request.from_dict(data, "rule")
