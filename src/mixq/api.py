"""The front door: `quantize` picks the backend, captures, resolves and builds the Sim.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    >>> sim = mixq.quantize(model, (torch.randn(2, 4),), {"default": "int8",
    ...                                                   "ops": {"0": {"activation": "int16"}}})
    >>> sim.plan["0"].output
    ('int16',)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixq.config import Config
from mixq.errors import ConfigError
from mixq.graph.ir import Graph
from mixq.graph.resolve import Resolution, resolve_with_report
from mixq.plan import Plan

__all__ = ["plan_model", "quantize"]

ConfigLike = Config | Plan | dict[str, Any] | tuple[str, str] | str | Path | None


def _resolve(model: Any, graph: Graph, config: ConfigLike, strict: bool) -> Resolution:
    if isinstance(config, Plan):
        return Resolution(_check_plan(graph, config, "the plan"), notes=["plan given as is"])
    if (
        isinstance(config, (str, Path))
        and str(config).endswith((".yaml", ".yml"))
        and Plan.is_plan_file(config)
    ):
        plan = _check_plan(graph, Plan.load(config), str(config))
        return Resolution(plan, notes=[f"plan loaded from {config}"])
    return resolve_with_report(graph, Config.coerce(config).bind(model), strict)


def _check_plan(graph: Graph, plan: Plan, source: str) -> Plan:
    expected = {op.name for op in graph if graph.is_quantizable(op)}
    missing, extra = sorted(expected - set(plan.ops)), sorted(set(plan.ops) - expected)
    if missing or extra:
        raise ConfigError(
            f"{source} does not match this model: ops missing from the plan "
            f"{missing[:5]}, ops in the plan but not in the model {extra[:5]}. "
            "Was it saved for another model or version? Re-run `mixq plan`"
        )
    return plan


def quantize(
    model: Any,
    example_inputs: Any,
    config: ConfigLike = None,
    strict: bool = True,
    transforms: list[str | dict[str, Any]] | None = None,
    calib: Any = None,
) -> Any:
    """Capture ``model``, resolve ``config`` into a Plan and build the simulated model.

    Args:
        model: a ``torch.nn.Module`` (never modified) or a path to an ``.onnx`` file.
        example_inputs: a tensor, a tuple of inputs or a dict of keyword inputs.
        config: a `Config`, a dict, a precision name (``"int8"``), a config YAML, a saved
            plan YAML, or a `Plan`. None means all int8.
        strict: conflicts raise `ConflictError` instead of being adjusted.
        transforms: quantization-friendly transforms, in order: names (``"smooth"``,
            ``"equalize"``, ``"adaround"``, ``"bias_correct"``) or dicts with a ``name`` and
            options (see `mixq.transforms`). None takes them from the config or plan; ``[]``
            applies none. PyTorch models only.
        calib: batches the transforms gather their statistics on (default: the example
            inputs); activation ranges still come from ``sim.calibrate``.

    Returns:
        The `Sim`; call ``sim.calibrate(batches)`` before running it quantized. With
        transforms, ``sim.transform_records`` says what each changed.
    """
    from mixq.transforms.pipeline import quantize_with_transforms, requested_transforms

    specs = requested_transforms(config, transforms)
    is_onnx = isinstance(model, (str, Path)) or type(model).__name__ == "ModelProto"
    if specs and is_onnx:
        raise ConfigError(
            f"transforms {specs} rewrite PyTorch models; quantize the nn.Module, or apply "
            "them before exporting it to ONNX"
        )

    def resolve(graph: Graph) -> Resolution:
        return _resolve(model, graph, config, strict)

    if specs:
        return quantize_with_transforms(model, example_inputs, specs, resolve, calib)
    if is_onnx:
        from mixq.onnx import build_sim

        return build_sim(model, example_inputs, resolve)
    from mixq.torch.capture import capture
    from mixq.torch.sim import Sim

    captured = capture(model, example_inputs)
    return Sim(captured, _resolve(model, captured.graph, config, strict))


def plan_model(
    model_and_inputs: tuple[Any, Any],
    config: ConfigLike,
    target: str | None = None,
    strict: bool = True,
) -> Any:
    """What `mixq plan` runs: resolve ``config`` (with ``target`` overriding its target)."""
    model, inputs = model_and_inputs
    if target is not None:
        config = Config.coerce(config) if not isinstance(config, Plan) else config
        if isinstance(config, Config):
            config.target = target
    return quantize(model, inputs, config, strict=strict)
