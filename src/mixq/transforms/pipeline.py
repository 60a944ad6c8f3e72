"""Transforms in the quantization flow: which ones a call asks for, and running them.

`mixq.quantize(model, x, cfg, transforms=[...], calib=batches)` runs them in two stages:

1. ``float`` transforms (``smooth``, ``equalize``) on a private copy of the float model,
   before the Sim is built, in the order given; the model is captured once and the
   transformed parameters are loaded into the captured module;
2. ``weights`` transforms (``adaround``, ``bias_correct``) on the built Sim's weights, in the
   order given (they need the weight quantizers' grids, not activation ranges, so they run
   before `Sim.calibrate`).

Statistics come from ``calib`` (an iterable of batches), else from the example inputs.
The records land in ``sim.transform_records`` and the resolution report; the resolved
options land in ``sim.plan.transforms``, so a saved plan re-applies them on reload.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> x = torch.randn(32, 8)
    >>> result = apply_transforms(model, x, ["equalize"])
    >>> result.records[0].name, bool(torch.allclose(result.model(x), model(x), atol=1e-5))
    ('equalize', True)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.core.errors import CalibrationError, ConfigError
from mixq.graph.ir import Graph
from mixq.plan.plan import Plan
from mixq.plan.points import quantization_points
from mixq.rules.config import Config
from mixq.rules.resolve import Resolution
from mixq.sim.torch.capture import Captured, capture
from mixq.transforms.base import Transform, TransformContext, TransformRecord, parse_specs
from mixq.transforms.pairs import max_relative_error
from mixq.transforms.stats import run_batches

__all__ = [
    "TransformResult",
    "apply_transforms",
    "apply_weight_transforms",
    "quantize_with_transforms",
    "requested_transforms",
    "split_stages",
]

Spec = str | dict[str, Any]


@dataclass
class TransformResult:
    """A transformed copy of the float model and what each transform changed."""

    model: nn.Module
    records: list[TransformRecord]


def requested_transforms(config: Any, transforms: Iterable[Spec] | None) -> list[Spec]:
    """The transforms a call asks for: the argument, else the config's or the plan's."""
    if transforms is not None:
        return list(transforms)
    source = config
    if isinstance(config, (str, Path)) and str(config).endswith((".yaml", ".yml")):
        source = Plan.load(config) if Plan.is_plan_file(config) else Config.load(config)
    if isinstance(source, dict):
        return list(source.get("transforms") or [])
    return list(getattr(source, "transforms", None) or [])


def _batches(calib: Iterable[Any] | None, example_inputs: Any) -> list[Any]:
    batches = [example_inputs] if calib is None else list(calib)
    if not batches:
        raise CalibrationError("calib is empty: pass at least one batch of model inputs")
    return batches


def _run(ctx: TransformContext, transform: Transform, options: dict[str, Any]) -> TransformRecord:
    if transform.stage == "float":
        ctx.reference = run_batches(ctx.model, ctx.batches[:1])
    record = transform.fn(ctx, **options)
    if transform.stage == "float":
        change = max_relative_error(ctx.reference, run_batches(ctx.model, ctx.batches[:1]))
        record.notes.append(f"float outputs moved by {change:.2g} at most (relative to max |y|)")
    return record


def _float_stage(
    ctx: TransformContext, parsed: list[tuple[Transform, Any]]
) -> list[TransformRecord]:
    return [_run(ctx, t, o) for t, o in parsed if t.stage == "float"]


def _quantized_for_all(graph: Graph, resolution: Resolution) -> set[str]:
    """Activation tensors the plan quantizes for every reader."""
    points = quantization_points(graph, resolution.plan)
    return {p.target for p in points if p.kind == "activation" and not p.readers and not p.is_float}


def apply_transforms(
    model: nn.Module, example_inputs: Any, transforms: Iterable[Spec], calib: Any = None
) -> TransformResult:
    """Apply float transforms to a copy of ``model`` (the model itself is not touched).

    Args:
        model: the float model.
        example_inputs: inputs to capture it with (and the data when ``calib`` is None).
        transforms: names or ``{"name": ..., **options}`` dicts of float transforms.
        calib: calibration batches for the statistics.

    Raises:
        ConfigError: an unknown transform, or a weights transform (it needs a Sim: use
            ``mixq.quantize(..., transforms=[...])``).
    """
    parsed = parse_specs(transforms)
    weights = [t.name for t, _ in parsed if t.stage != "float"]
    if weights:
        raise ConfigError(
            f"{weights} change quantized weights and need a Sim: pass them to "
            "mixq.quantize(model, inputs, config, transforms=[...])"
        )
    copied = copy.deepcopy(model).eval()
    graph = capture(copied, example_inputs).graph
    ctx = TransformContext(copied, graph, _batches(calib, example_inputs))
    records = _float_stage(ctx, parsed)
    return TransformResult(copied, records)


def split_stages(transforms: Iterable[Spec]) -> tuple[list[Spec], list[Spec]]:
    """``transforms`` as (the float ones, the weights ones), each in the order given.

    Example:
        >>> split_stages(["smooth", {"name": "gptq", "damp": 0.1}])
        (['smooth'], [{'name': 'gptq', 'damp': 0.1}])
    """
    specs = list(transforms)
    stages = [t.stage for t, _ in parse_specs(specs)]
    return (
        [s for s, stage in zip(specs, stages, strict=True) if stage == "float"],
        [s for s, stage in zip(specs, stages, strict=True) if stage != "float"],
    )


def apply_weight_transforms(
    sim: Any, model: nn.Module, transforms: Iterable[Spec], calib: Any
) -> list[TransformRecord]:
    """Run weights transforms on ``sim`` (built from ``model``, the float model whose layer
    inputs are the data), in order; returns their records."""
    ctx = TransformContext(model, sim.graph, _batches(calib, None))
    ctx.sim = sim
    return [_run(ctx, t, o) for t, o in parse_specs(transforms) if t.stage == "weights"]


def _load_parameters(captured: Captured, model: nn.Module) -> bool:
    """Copy the model's parameters and buffers into the captured module, by name."""
    target = captured.module.state_dict(keep_vars=True)
    source = model.state_dict()
    if not set(source) <= set(target):
        return False
    with torch.no_grad():
        for name, value in source.items():
            target[name].copy_(value)
    return True


def quantize_with_transforms(
    model: nn.Module,
    example_inputs: Any,
    transforms: Iterable[Spec],
    resolve: Callable[[Graph], Resolution],
    calib: Any = None,
    resolve_before: Callable[[Graph], Resolution] | None = None,
) -> Any:
    """What `mixq.quantize` runs when transforms are asked for; returns the Sim.

    ``resolve`` gives the Sim's plan on the transformed model's graph; ``resolve_before``
    (default: ``resolve``) the plan the transforms consult on the graph before them, which
    lacks the ops they add."""
    from mixq.sim.torch.sim import Sim

    parsed = parse_specs(transforms)
    batches = _batches(calib, example_inputs)
    copied = copy.deepcopy(model).eval()
    captured = capture(copied, example_inputs)
    ctx = TransformContext(copied, captured.graph, batches)
    early = resolve_before or resolve
    ctx.quantized = lambda: _quantized_for_all(captured.graph, early(captured.graph))
    records = _float_stage(ctx, parsed)
    if records and not _load_parameters(captured, copied):
        captured = capture(copied, example_inputs)
    sim: Any = Sim(captured, resolve(captured.graph))
    ctx.sim = sim
    records += [_run(ctx, t, o) for t, o in parsed if t.stage == "weights"]
    sim.plan.transforms = [r.spec() for r in records]
    sim.transform_records = records
    return sim
