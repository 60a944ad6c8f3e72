"""The transform registry, the context a transform runs in and the record it returns.

A transform is a function registered under a name with the stage it belongs to:

- ``float`` transforms (``smooth``, ``equalize``) rewrite a copy of the float model so that
  its tensors are easier to quantize while its outputs stay equal up to float rounding;
- ``weights`` transforms (``adaround``, ``bias_correct``) change the Sim's float weights or
  biases so that the *quantized* model is closer to the float one (they need the Sim's weight
  quantizers, so they run after it is built).

Each returns a `TransformRecord`: the options it resolved (what the Plan stores so that the
export and a reload reproduce it) and one row per layer it changed.

Example:
    >>> @register_transform("noop_example")
    ... def noop(ctx: TransformContext) -> TransformRecord:
    ...     return TransformRecord("noop_example")
    >>> [(t.name, opts) for t, opts in parse_specs(["noop_example"])]
    [('noop_example', {})]
    >>> del TRANSFORMS["noop_example"]
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mixq.core.errors import ConfigError
from mixq.core.table import Table
from mixq.core.validation import check_keys
from mixq.graph.ir import Graph

__all__ = [
    "STAGES",
    "TRANSFORMS",
    "Transform",
    "TransformContext",
    "TransformRecord",
    "parse_specs",
    "register_transform",
]

STAGES = ("float", "weights")


@dataclass
class TransformRecord:
    """What one transform did.

    Attributes:
        name: the transform's registered name.
        options: the options it ran with, resolved (e.g. the alpha chosen per layer); the
            Plan stores ``{"name": name, **options}`` and re-running with them reproduces it.
        layers: one row per layer (or pair of layers) it changed, with its measurements.
        notes: sentences for the resolution report (layers skipped and why, exactness).
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        """The Plan's entry for this transform."""
        return {"name": self.name, **self.options}

    def table(self) -> Table:
        return Table([dict(r) for r in self.layers], title=f"transform {self.name}")

    def report_lines(self) -> list[str]:
        """Lines of the resolution report's "Transforms:" section."""
        lines = [f"  {self.name}: {len(self.layers)} layer(s) changed"]
        lines += [f"    {n}" for n in self.notes]
        for row in self.layers:
            cells = ", ".join(f"{k} {_fmt(v)}" for k, v in row.items() if k != "layer")
            lines.append(f"    {row.get('layer', '?')}: {cells}")
        return lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


@dataclass
class TransformContext:
    """What a transform reads and changes.

    Attributes:
        model: the float model, a private copy that float transforms change in place.
        graph: its captured Graph (op kinds, module paths, tensors between ops).
        batches: calibration batches (input tuples, tensors or keyword dicts).
        sim: the Sim, for ``weights`` transforms (None while float transforms run).
        reference: the model's outputs on ``batches[:1]`` before the running transform
            (what a float transform must keep; set by the pipeline).
        quantized: what gives the activation tensors the plan quantizes for every reader
            (a full-integer target), resolved only when a transform asks (`quantized_tensors`);
            None when no plan is known (`apply_transforms`).
    """

    model: nn.Module
    graph: Graph
    batches: list[Any]
    sim: Any = None
    reference: list[Any] = field(default_factory=list)
    quantized: Callable[[], set[str]] | None = None

    def quantized_tensors(self) -> set[str] | None:
        """Tensors quantized for every reader under the plan, or None if unknown."""
        return None if self.quantized is None else self.quantized()


@dataclass(frozen=True)
class Transform:
    name: str
    stage: str
    fn: Callable[..., TransformRecord]

    def options(self) -> set[str]:
        """The keyword options the transform accepts."""
        return set(list(inspect.signature(self.fn).parameters)[1:])


TRANSFORMS: dict[str, Transform] = {}


def register_transform(
    name: str, stage: str = "float"
) -> Callable[[Callable[..., TransformRecord]], Callable[..., TransformRecord]]:
    """Register ``fn(ctx, **options) -> TransformRecord`` under ``name``.

    Args:
        name: what users write in ``transforms=[...]`` and in the YAML config.
        stage: ``"float"`` (runs on the float model before capture into the Sim) or
            ``"weights"`` (runs on the built Sim's weights).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")

    def wrap(fn: Callable[..., TransformRecord]) -> Callable[..., TransformRecord]:
        TRANSFORMS[name] = Transform(name, stage, fn)
        return fn

    return wrap


def _lookup(name: str) -> Transform:
    if name not in TRANSFORMS:
        close = difflib.get_close_matches(name, sorted(TRANSFORMS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown transform {name!r}{hint} (known: {sorted(TRANSFORMS)})")
    return TRANSFORMS[name]


def parse_specs(specs: Iterable[str | dict[str, Any]]) -> list[tuple[Transform, dict[str, Any]]]:
    """Turn ``["smooth", {"name": "adaround", "iterations": 100}]`` into (transform, options).

    Raises:
        ConfigError: an unknown transform or option (the closest valid name is suggested).
    """
    parsed = []
    for spec in specs:
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(
                f"a transform is a name or a dict with a 'name' key and options, got {spec!r}"
            )
        transform = _lookup(str(spec["name"]))
        options = {k: v for k, v in spec.items() if k != "name"}
        check_keys(options, transform.options(), f"transform {transform.name!r}")
        parsed.append((transform, options))
    return parsed
