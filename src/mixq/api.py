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

from mixq.analysis.calls import record_calls
from mixq.analysis.check import CheckResult, check_sim
from mixq.core.errors import ConfigError
from mixq.graph.ir import Graph
from mixq.plan.plan import Plan
from mixq.rules.config import Config
from mixq.rules.resolve import Resolution, resolve_with_report

__all__ = ["apply", "check", "plan_model", "quantize"]

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
    is_onnx = _is_onnx(model)
    if specs and is_onnx:
        raise ConfigError(
            f"transforms {specs} rewrite PyTorch models; quantize the nn.Module, or apply "
            "them before exporting it to ONNX"
        )

    def resolve(graph: Graph) -> Resolution:
        return _resolve(model, graph, config, strict)

    if specs:
        # the transforms see the plan on the graph before they add ops; a config may name
        # ops they add (a smoothed linear's), so that first look is lenient
        def before(graph: Graph) -> Resolution:
            return _resolve(model, graph, config, False)

        return quantize_with_transforms(model, example_inputs, specs, resolve, calib, before)
    if is_onnx:
        from mixq.sim.onnx import build_sim

        return build_sim(model, example_inputs, resolve)
    from mixq.sim.torch.capture import capture
    from mixq.sim.torch.sim import Sim

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


def apply(config: ConfigLike, model: Any, example_inputs: Any, strict: bool = True) -> Any:
    """Resolve every request of ``config`` at once against ``model`` and build the Sim
    (AIMET's ``apply()``): the same as ``mixq.quantize(model, example_inputs, config, strict)``.

    Example:
        >>> import torch, mixq
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> cfg = mixq.Config("int8").set_precision("0", activation="int16")
        >>> mixq.apply(cfg, model, (torch.randn(2, 4),)).plan["0"].output
        ('int16',)
    """
    return quantize(model, example_inputs, config, strict=strict)


def check(
    model: Any,
    example_inputs: Any,
    config: ConfigLike = None,
    strict: bool = False,
    out_dir: str | Path | None = None,
) -> CheckResult:
    """Check ``model`` and its ``config`` for what makes quantization go wrong.

    Args:
        model: the float model (a copy is run; the model itself is never changed), or an
            ONNX model (an ``.onnx`` path or a ``ModelProto``): then nothing is recorded,
            every node is listed with one call and the shared / unused sections say they
            do not apply.
        example_inputs: a tensor, a tuple of inputs or a dict of keyword inputs.
        config: anything `quantize` accepts (None means all int8).
        strict: True raises on a target conflict (as `quantize`) instead of reporting it.
        out_dir: if given, `CheckResult.save` writes the report there.

    Returns:
        The `CheckResult` (`mixq.analysis.check`); ``print(result)`` shows the whole report.

    Example:
        >>> import torch
        >>> relu = torch.nn.ReLU()
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), relu, torch.nn.Linear(4, 4), relu)
        >>> result = check(model, torch.randn(2, 4))
        >>> [(r["module"], r["calls"]) for r in result.shared.rows]
        [('1', 2)]
    """
    records = None if _is_onnx(model) else record_calls(model, example_inputs)
    sim = quantize(model, example_inputs, config, strict=strict)
    result = check_sim(model, sim, config, records)
    if out_dir is not None:
        result.save(out_dir)
    return result


def _is_onnx(model: Any) -> bool:
    """An ``.onnx`` path or an ``onnx.ModelProto`` (checked without importing onnx)."""
    if isinstance(model, (str, Path)):
        return str(model).lower().endswith(".onnx")
    return type(model).__name__ == "ModelProto"
