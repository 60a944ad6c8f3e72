"""Weight transforms in the search (``gptq``, ``adaround``, ``bias_correct``): each layer's
transformed weight for each weight precision, computed once before the search.

These transforms change one layer at a time from the float model's inputs to that layer, so
a layer's result depends only on its own weight grid, not on the rest of the plan. The table
holds, per (op, weight precision), the tensors the transforms wrote (weight, bias, a folded
batch-norm's mean); `mixq.search.sims.SimFactory` loads them into every Sim it builds, and
the plan records the transforms, so ``mixq.quantize(model, x, result.plan, calib=...)``
reproduces the weights the search scored.

A Sim with those tensors loaded is no longer the float model when its quantizers are off: the
rounded weights stay. What the search measures against the float model (each unit's error,
the harm a unit does in a plan) runs under `WeightSwap.matching`, which puts the float tensors
back wherever the op's weight quantizer is off -- else every int4 option would look free.

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

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from mixq.core.progress import progress_bar
from mixq.core.qtypes import qtype
from mixq.search.space import SearchSpace

__all__ = ["WeightSwap", "WeightTable", "weight_table"]

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


def load_weights(sim: Any, table: WeightTable) -> None:
    """Copy into ``sim`` the table's tensors of each layer at its weight precision."""
    if not table:
        return
    tensors = _tensors(sim.module)
    with torch.no_grad():
        for point in sim.points:
            if point.kind == "weight":
                for name, value in table.get((point.op, point.precision), {}).items():
                    tensors[name].copy_(value)


class WeightSwap:
    """Switches a Sim's transformed tensors between their float and transformed values, per
    weight quantizer, so that a quantizer off means the float model's weight.

    Args:
        sim: a Sim `load_weights` loaded ``table`` into.
        table: the weight table.
        float_module: the float model the Sim was built from (its tensors by the same names).
    """

    def __init__(self, sim: Any, table: WeightTable, float_module: nn.Module | None) -> None:
        tensors = _tensors(sim.module) if table and float_module is not None else {}
        floats = _tensors(float_module) if tensors and float_module is not None else {}
        self._swaps: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        for point in sim.points if tensors else ():
            values = table.get((point.op, point.precision), {}) if point.kind == "weight" else {}
            if values:
                self._swaps[point.name] = [(tensors[n], floats[n], v) for n, v in values.items()]
        self._transformed = dict.fromkeys(self._swaps, True)  # the Sim's state per quantizer

    @contextmanager
    def matching(self, enabled: Iterable[str]) -> Iterator[None]:
        """Within: transformed tensors where the weight quantizer is in ``enabled``, float ones
        elsewhere (a run with those quantizers on, the rest of the model float); after:
        transformed everywhere again, as the Sim was built."""
        on = set(enabled)
        try:
            self._set({q: q in on for q in self._swaps})
            yield
        finally:
            self._set(dict.fromkeys(self._swaps, True))

    def _set(self, state: dict[str, bool]) -> None:
        with torch.no_grad():
            for q, transformed in state.items():
                if self._transformed[q] != transformed:
                    for tensor, float_value, value in self._swaps[q]:
                        tensor.copy_(value if transformed else float_value)
                    self._transformed[q] = transformed


def _integer_weights(space: SearchSpace) -> list[str]:
    found = {c.weight for u in space.free for c in u.options}
    return sorted(w for w in found if not qtype(w).is_floating_point)


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}
