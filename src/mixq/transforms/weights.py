"""The Sim's quantized linear / conv layers, as the weight transforms see them.

A `QuantizedLayer` ties an op of the Sim to its weight quantizer, its parameters in the
Sim's module (weight, bias, the running mean of a folded batch-norm) and its module in the
float model (where forward hooks gather its inputs). `weight_grid` gives the weight the
quantizer rounds (batch-norm folded in) with its scale and zero point broadcast to it.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> sim = mixq.quantize(model, (torch.randn(3, 4),), "int8")
    >>> [(l.op, l.weight, l.bias) for l in quantized_layers(sim, model)]
    [('0', '0.weight', '0.bias'), ('2', '2.weight', '2.bias')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mixq.transforms.stats import has_rows, record_inputs, run_batches

__all__ = [
    "Grid",
    "QuantizedLayer",
    "float_weight",
    "layer_grams",
    "quantized_layers",
    "weight_grid",
    "write_weight",
]


@dataclass
class QuantizedLayer:
    """A linear / conv op of the Sim with an integer weight quantizer.

    Attributes:
        op: the op's name.
        module: its module path in the float model.
        quantizer: the weight quantizer's name.
        weight: the weight parameter's name in ``sim.module``.
        bias: the bias parameter's name, if the layer has one.
        bn_mean: the running mean of the batch-norm folded into the weight, if any.
    """

    op: str
    module: str
    quantizer: str
    weight: str
    bias: str | None
    bn_mean: str | None


def _module(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def quantized_layers(sim: Any, model: nn.Module) -> list[QuantizedLayer]:
    """Linear and (ungrouped) conv layers whose weight is quantized to an integer type."""
    tensors = sim.named_tensors()
    layers: list[QuantizedLayer] = []
    seen: set[str] = set()
    for point in sim.points:
        op = sim.graph.ops.get(point.op) if point.kind == "weight" else None
        q = sim.quantizer(point.name) if op is not None else None
        if op is None or q is None or not q.enabled or q.qtype.is_floating_point:
            continue
        module = _module(model, op.module)
        if not (isinstance(module, nn.Linear) or _plain_conv(module)):
            continue
        weight, *bn = q.sources
        if weight in seen:  # a shared module: its weight is transformed once
            continue
        seen.add(weight)
        bias = f"{op.module}.bias"
        mean = bn[1].removesuffix("running_var") + "running_mean" if len(bn) > 1 and bn[1] else None
        layers.append(
            QuantizedLayer(
                op.name,
                op.module,
                point.name,
                weight,
                bias if bias in tensors else None,
                mean if mean in tensors else None,
            )
        )
    return layers


def _plain_conv(module: nn.Module | None) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups == 1


@dataclass
class Grid:
    """The weight a quantizer rounds, and its grid broadcast to the weight's shape.

    ``weight`` has the batch-norm folded in (``fold``, None without one); the quantized
    value of element ``w`` is ``(clamp(round(w / scale) + zero_point, qmin, qmax) -
    zero_point) * scale``. ``group`` numbers the elements that share one scale (a channel,
    a block, or the whole tensor), broadcast like the scale; ``symmetric`` is the
    quantizer's.
    """

    weight: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    fold: torch.Tensor | None
    group: torch.Tensor | None = None
    symmetric: bool = True

    def dequantize(self, ints: torch.Tensor) -> torch.Tensor:
        """Integers (before the zero point) -> weight values on the grid."""
        q = torch.clamp(ints + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * self.scale

    def unfold(self, w: torch.Tensor) -> torch.Tensor:
        """A folded weight back to the layer's own weight."""
        return w / self.fold if self.fold is not None else w


def _broadcast(
    t: torch.Tensor, w: torch.Tensor, axis: int | None, block: int | None
) -> torch.Tensor:
    if axis is None:
        return t.reshape(())
    axis = axis % w.ndim
    if block is None:
        shape = [1] * w.ndim
        shape[axis] = -1
        return t.reshape(shape)
    return t.repeat_interleave(block, dim=axis).narrow(axis, 0, w.shape[axis])


def float_weight(model: nn.Module, sim: Any, layer: QuantizedLayer) -> torch.Tensor:
    """The layer's weight in the float model (the Sim's may already sit on its grid)."""
    weights = dict(model.named_parameters())
    if layer.weight in weights:
        return weights[layer.weight].detach()
    return dict(sim.module.named_parameters())[layer.weight].detach()


@torch.no_grad()
def weight_grid(sim: Any, layer: QuantizedLayer, weight: torch.Tensor | None = None) -> Grid:
    """The grid the layer's weight quantizer uses for the Sim's current weight, around
    ``weight`` (default: the Sim's weight)."""
    q = sim.quantizer(layer.quantizer)
    args = sim.weight_args(layer.quantizer)
    q(*args)  # sets the scale and zero point from the current weight
    w = (args[0] if weight is None else weight).detach()
    fold = q.fold_scale(w, *args[1:]) if len(args) > 1 else None
    wf = w * fold if fold is not None else w
    axis, block = q.point.axis, q.point.block_size
    groups = torch.arange(q.scale.numel()).reshape(q.scale.shape)
    return Grid(
        wf,
        _broadcast(q.scale, wf, axis, block),
        _broadcast(q.zero_point, wf, axis, block),
        q.qtype.qmin,
        q.qtype.qmax,
        fold,
        _broadcast(groups, wf, axis, block).expand_as(wf),
        bool(q.point.symmetric),
    )


def layer_grams(ctx: Any) -> list[tuple[QuantizedLayer, torch.Tensor]]:
    """The Sim's quantized layers that see input rows in the calibration data, each with the
    Gram matrix ``E[x x^T]`` of its float inputs (one pass of the float model)."""
    layers = [
        layer
        for layer in quantized_layers(ctx.sim, ctx.model)
        if has_rows(ctx.model.get_submodule(layer.module))
    ]
    with record_inputs(ctx.model, [layer.module for layer in layers], gram=True) as stats:
        run_batches(ctx.model, ctx.batches)
    return [(layer, stats[layer.module].gram) for layer in layers if stats[layer.module].count]


@torch.no_grad()
def write_weight(sim: Any, layer: QuantizedLayer, grid: Grid, ints: torch.Tensor) -> None:
    """Put integers on ``grid`` into the layer's weight in the Sim (a folded factor taken
    out); its weight quantizer keeps the float weight for when it is switched off."""
    weight = dict(sim.module.named_parameters())[layer.weight]
    quantizer = sim.quantizer(layer.quantizer)
    if quantizer.float_weight is None:
        quantizer.float_weight = weight.detach().clone()
    weight.copy_(grid.unfold(grid.dequantize(ints)))
