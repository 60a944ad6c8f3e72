"""Weight transforms in the search (``gptq``, ``adaround``, ``bias_correct``): each layer's
transformed weight for each weight precision, computed once before the search.

These transforms change one layer at a time from the float model's inputs to that layer, so
a layer's result depends only on its own weight grid, not on the rest of the plan. The table
holds, per (op, weight precision), the tensors the transforms wrote (weight, bias, a folded
batch-norm's mean); `mixq.search.sims.SimFactory` loads them into every Sim it builds, and
the plan records the transforms, so ``mixq.quantize(model, x, result.plan, calib=...)``
reproduces the weights the search scored.

Each loaded weight's quantizer keeps the float weight (``float_weight``), which it gives back
when switched off: what the search measures against the float model (each unit's error, the
harm a unit does in a plan) has the float weights there -- else every int4 option would look
free. A bias or batch-norm mean a transform changed (``bias_correct``) has no switch: it
stays, as in the Sim `mixq.quantize` builds.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> x = torch.randn(64, 8)
    >>> result = mixq.search(model, x, calib=[x], evaluate="cosine", target=0.9,
    ...                      candidates=[("int8", "int4"), "int8"], transforms=["gptq"],
    ...                      progress=False)
    >>> [t["name"] for t in result.plan.transforms]
    ['gptq']
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixq.core.progress import progress_bar
from mixq.core.qtypes import qtype
from mixq.search.space import SearchSpace

__all__ = ["WeightTable", "weight_table"]

WeightTable = dict[tuple[str, str], dict[str, torch.Tensor]]  # (op, precision) -> tensors


def weight_table(
    factory: Any, space: SearchSpace, model: nn.Module, specs: list[Any], calib: list[Any]
) -> WeightTable:
    """Run the weights transforms ``specs`` once per integer weight precision the free units
    may take (every unit at it where it can), and keep what they wrote, per layer."""
    from mixq.transforms.pipeline import apply_weight_transforms
    from mixq.transforms.weights import quantized_layers

    table: WeightTable = {}
    for precision in progress_bar(_integer_weights(space), "weight transforms"):
        assignment = {
            u.name: next((c for c in u.options if c.weight == precision), u.base)
            for u in space.free
        }
        sim = factory.build(space.plan(assignment, "weight transforms"))
        tensors = _tensors(sim.module)
        names = {
            layer.op: [n for n in (layer.weight, layer.bias, layer.bn_mean) if n is not None]
            for layer in quantized_layers(sim, model)
            if sim.quantizer(layer.quantizer).point.precision == precision
        }
        before = {n: tensors[n].detach().clone() for ns in names.values() for n in ns}
        apply_weight_transforms(sim, model, specs, calib)
        for op, ns in names.items():
            changed = {n: tensors[n].detach().clone() for n in ns
                       if not torch.equal(tensors[n], before[n])}  # fmt: skip
            if changed:
                table[(op, precision)] = changed
    return table


def load_weights(sim: Any, table: WeightTable, float_module: nn.Module) -> None:
    """Copy into ``sim`` the table's tensors of each layer at its weight precision; each
    weight quantizer keeps its float weight (read from ``float_module``, the float model the
    Sim was built from) for when it is switched off."""
    if not table:
        return
    tensors, floats = _tensors(sim.module), _tensors(float_module)
    with torch.no_grad():
        for point in sim.points:
            if point.kind == "weight":
                quantizer = sim.quantizer(point.name)
                for name, value in table.get((point.op, point.precision), {}).items():
                    if name == quantizer.sources[0]:
                        quantizer.float_weight = floats[name]
                    tensors[name].copy_(value)


def _integer_weights(space: SearchSpace) -> list[str]:
    found = {c.weight for u in space.free for c in u.options}
    return sorted(w for w in found if not qtype(w).is_floating_point)


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}
