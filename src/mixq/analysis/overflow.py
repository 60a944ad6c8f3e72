"""Float precisions that overflow: tensors beyond fp16 / bf16's range, and NaN the Sim makes.

fp16 and bf16 round a value beyond their largest finite value (65504 for fp16) to inf; inf
times a mask's 0, or inf - inf in a norm, is then NaN. `find_overflows` names every tensor
the plan runs in fp16 / bf16 (op outputs, weights, model inputs) whose values on one run of
the float model exceed that range; mask sentinels (``|x| >= MASK_MAGNITUDE``: -inf,
``finfo(float32).min``) are deliberate and left out. `first_nan` names the first tensor, in
graph order, that holds NaN in a Sim run where the float run has none. `mixq.check` and the
advisor report both.

Example:
    >>> import torch, mixq
    >>> from mixq.sim.torch.runner import make_runner
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False)).eval()
    >>> _ = torch.nn.init.constant_(model[0].weight, 1e5)
    >>> x = torch.ones(1, 2)
    >>> sim = mixq.quantize(model, (x,), "fp16")
    >>> [(o.tensor, o.precision, o.hi) for o in find_overflows(sim, make_runner(sim), x)]
    [('0', 'fp16', 200000.0), ('0.weight', 'fp16', 100000.0)]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mixq.core.qtypes import qtype
from mixq.graph.kinds import is_data_movement
from mixq.observers.base import MASK_MAGNITUDE
from mixq.sim.protocol import SimLike
from mixq.sim.torch.runner import make_runner

__all__ = [
    "OVERFLOWING",
    "NanSource",
    "Overflow",
    "check_overflow",
    "data_range",
    "find_overflows",
    "first_nan",
]

# Float precisions whose overflow gives inf (fp8 saturates to its largest value instead).
OVERFLOWING = ("fp16", "bf16")


@dataclass(frozen=True)
class Overflow:
    """A tensor the plan runs in ``precision`` whose data range ``[lo, hi]`` exceeds it;
    ``role`` is ``activation``, ``weight`` or ``input``."""

    tensor: str
    op: str
    precision: str
    lo: float
    hi: float
    role: str = "activation"

    @property
    def issue(self) -> str:
        big = qtype(self.precision).max_finite
        return (
            f"range [{self.lo:.4g}, {self.hi:.4g}] exceeds {self.precision}'s finite range "
            f"+-{big:.5g}: it overflows to inf (then inf * 0 or inf - inf is NaN)"
        )

    @property
    def advice(self) -> str:
        other = "int16 / bf16" if self.precision == "fp16" else "int16"
        if self.role == "input":
            return f"keep the input fp32: Config.set_model_input_precision(['fp32']) (or {other})"
        role = "weight" if self.role == "weight" else "activation"
        return (
            f"keep it fp32: set_precision({self.op!r}, {role}='fp32') (or {other}, whose "
            "range covers it)"
        )


@dataclass(frozen=True)
class NanSource:
    """The first tensor of a Sim run holding NaN where the float run has none: ``count`` of
    its values, the op making it, that op's inputs already inf in the Sim (``inf_inputs``),
    whether those were mask sentinels in float (``mask``) and the ops to keep in fp32
    (``keep``: their producers and the op, since an fp16 op converts an fp32 input to fp16)."""

    tensor: str
    op: str
    precision: str
    count: int
    inf_inputs: tuple[str, ...] = ()
    mask: bool = False
    keep: tuple[str, ...] = ()

    @property
    def issue(self) -> str:
        fed = f", fed inf by {', '.join(self.inf_inputs)}" if self.inf_inputs else ""
        return (
            f"the Sim's output holds NaN where the float model's does not; the first NaN "
            f"({self.count} values) is made here, in {self.precision}{fed}"
        )

    @property
    def advice(self) -> str:
        keep = " and ".join(repr(op) for op in self.keep or (self.op,))
        fp32 = f"keep {keep} fp32 (set_precision(op, activation='fp32'))"
        if self.mask:
            return (
                "a mask's finfo(float32).min became -inf, and a fully masked row's softmax "
                f"is NaN: {fp32}, or build the mask with finfo({self.precision}).min (the "
                "exported file clamps the constant to the largest finite value)"
            )
        return f"a value beyond the range became inf: {fp32}"


def data_range(t: torch.Tensor) -> tuple[float, float] | None:
    """(min, max) of ``t`` without mask sentinels and NaN (None when nothing is left).

    Example:
        >>> data_range(torch.tensor([-2.0, 5.0, float("-inf"), -3.4e38]))
        (-2.0, 5.0)
    """
    t = t.detach()
    values = t[(t.abs() < MASK_MAGNITUDE)] if t.is_floating_point() else t.new_empty(0)
    if not values.numel():
        return None
    return float(values.min()), float(values.max())


def find_overflows(sim: SimLike, runner: Any, batch: Any, run: Any = None) -> list[Overflow]:
    """Tensors planned in fp16 / bf16 whose float values on ``batch`` exceed that type.

    Args:
        sim: the Sim (calibrated or not: its quantizers are switched off for the run).
        runner: `mixq.sim.torch.runner.make_runner` of ``sim``.
        batch: one batch of model inputs.
        run: the float run of ``batch`` if there is one already (``runner.run(batch, ())``).
    """
    if not any(p in OVERFLOWING for p in _precisions(sim)):
        return []
    run = runner.run(batch, enabled=()) if run is None else run
    weights: dict[str, torch.Tensor] | None = None
    found = []
    for tensor, op, precision, role in _planned(sim):
        if role == "weight":
            weights = _weights(sim) if weights is None else weights
            value = weights.get(tensor)
        else:
            value = runner.value(run, tensor) if tensor in sim.value_nodes else None
        span = None if value is None else data_range(value)
        if span is not None and max(-span[0], span[1]) > qtype(precision).max_finite:
            found.append(Overflow(tensor, op, precision, *span, role=role))
    return found


def first_nan(sim: SimLike, runner: Any, float_run: Any, sim_run: Any) -> NanSource | None:
    """The first tensor (graph order) NaN in ``sim_run`` where ``float_run`` has none, if
    the model's outputs hold such NaN (None otherwise)."""
    outs = zip(runner.outputs(float_run), runner.outputs(sim_run), strict=False)
    if not any(_new_nan(f, q).any() for f, q in outs):
        return None
    for op in sim.graph:
        plan = sim.plan.ops.get(op.name)
        for t in sim.graph.float_outputs(op):
            if t not in sim.value_nodes:
                continue
            new = _new_nan(runner.value(float_run, t), runner.value(sim_run, t))
            if new.any():
                values = [(i, runner.value(float_run, i), runner.value(sim_run, i))
                          for i in sim.graph.float_inputs(op) if i in sim.value_nodes]  # fmt: skip
                inf = [(i, ref) for i, ref, got in values if _new_inf(ref, got)]
                mask = any(bool((ref <= -MASK_MAGNITUDE).any()) for _, ref in inf)
                precision = plan.output[0] if plan and plan.output else "fp32"
                names = tuple(i for i, _ in inf)
                producers = [sim.graph.tensors[i].producer for i in names]
                keep = tuple(dict.fromkeys([*(p for p in producers if p), op.name]))
                return NanSource(t, op.name, precision, int(new.sum()), names, mask, keep)
    return None


def check_overflow(sim: SimLike, batch: Any = None) -> tuple[list[Overflow], NanSource | None]:
    """`find_overflows` and `first_nan` on ``batch`` (default: the Sim's example inputs),
    the Sim run with the quantizers that can run (float ones, calibrated integer ones).
    Nothing runs unless the plan has fp16 / bf16.

    Example:
        >>> import torch, mixq
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)).eval()
        >>> _ = torch.nn.init.constant_(model[0].weight, 1e5)
        >>> sim = mixq.quantize(model, (torch.ones(1, 2),), "fp16")
        >>> overflows, nan = check_overflow(sim)
        >>> [o.tensor for o in overflows], nan.tensor, nan.inf_inputs
        (['0', '0.weight'], '1', ('0',))
    """
    if not any(p in OVERFLOWING for p in _precisions(sim)):
        return [], None
    runner = make_runner(sim)
    if batch is None:
        batch = sim.example_inputs[1] or sim.example_inputs[0]
    float_run = runner.run(batch, enabled=())
    ready = [n for n, q in sim.named_quantizers().items() if q.enabled and q.has_qparams]
    sim_run = runner.run(batch, enabled=ready)
    overflows = find_overflows(sim, runner, batch, float_run)
    return overflows, first_nan(sim, runner, float_run, sim_run)


def _new_nan(ref: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    if not got.is_floating_point() or ref.shape != got.shape:
        return torch.zeros((), dtype=torch.bool)
    return got.isnan() & ~ref.isnan()


def _new_inf(ref: torch.Tensor, got: torch.Tensor) -> bool:
    """Whether ``got`` is inf where ``ref`` is finite: a mask's finfo.min rounded to -inf
    counts, since that is what a later ``0 * x`` or ``x - x`` turns into NaN."""
    same = got.is_floating_point() and ref.shape == got.shape
    return bool(same and (got.isinf() & ~ref.isinf()).any())


def _precisions(sim: SimLike) -> set[str]:
    plan = sim.plan
    ops = {p for op in plan for p in (*op.output, *op.weight.values())}
    return ops | set(plan.inputs.values())


def _planned(sim: SimLike) -> Iterator[tuple[str, str, str, str]]:
    """(tensor, op, precision, role) for every tensor the plan runs in an overflowing type."""
    for tensor, precision in sim.plan.inputs.items():
        if precision in OVERFLOWING:
            yield tensor, tensor, precision, "input"
    for op in sim.graph:
        plan = sim.plan.ops.get(op.name)
        if plan is None or is_data_movement(op.kind):
            continue
        outputs = zip(sim.graph.float_outputs(op), plan.output, strict=False)
        yield from ((t, op.name, p, "activation") for t, p in outputs if p in OVERFLOWING)
        for role, precision in plan.weight.items():
            if precision in OVERFLOWING and role in op.weights:
                yield op.weights[role], op.name, precision, "weight"


def _weights(sim: Any) -> dict[str, torch.Tensor]:
    """Parameter name -> value: the torch Sim's module state, an ONNX Sim's initializers."""
    module = getattr(sim, "module", None)
    if isinstance(module, torch.nn.Module):
        return {**dict(module.named_parameters()), **dict(module.named_buffers())}
    graph = getattr(getattr(sim, "source", None), "graph", None)
    if graph is None:
        return {}
    from onnx import numpy_helper

    return {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
