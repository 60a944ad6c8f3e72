"""Error-compensating rounding (GPTQ, Frantar et al., 2023) with a clipped weight range: the
weight transform for 4-bit weights.

Round-to-nearest on the min-max grid costs 4-bit weights most of their accuracy: one large
weight stretches its channel's (or block's) grid, and every rounding error reaches the output
on its own. This transform does two things per quantized linear / conv layer, both measured
on the layer's inputs (the Gram matrix ``G = E[x x^T]`` of its input rows on the calibration
data, gathered from the float model):

1. **Range.** Each channel's (or block's) scale shrinks by the factor, among ``clip_steps``
   values from 1 down to ``min_clip``, that minimises the layer's output error with
   round-to-nearest (``e^T G e`` for the rounding error ``e``). The largest weight of the
   group is then clipped onto the grid's edge, which is what keeps the scale when the export
   re-derives it from the weight.
2. **Rounding.** Columns are rounded one at a time, the most energetic input first; the error
   of each is spread over the columns not yet rounded through the Cholesky factor of
   ``G^-1`` (dampened by ``damp`` times its mean diagonal), so that the layer's output
   changes least.

The result is written into the Sim's weight as values on the chosen grid (over a folded
batch-norm's factor), so the Sim and the export reproduce it exactly. Only symmetric weight
quantizers choose their range (an asymmetric one keeps its min-max grid), and the clipped
range is kept only where it ends with the lower output error: with strongly correlated
inputs, a block's own share of the error misjudges it. A layer where neither beats
round-to-nearest on the min-max grid keeps round-to-nearest.

Layers are rounded one at a time on the float model's inputs (as `adaround`), with a
progress bar; the clipped range costs one matrix product per factor tried.

Example:
    >>> import torch, mixq
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
    ...                             torch.nn.Linear(32, 4))
    >>> x = torch.randn(128, 16)
    >>> sim = mixq.quantize(model, x, ("int8", "int4"), transforms=["gptq"], calib=[x])
    >>> all(r["mse_gptq"] <= r["mse_nearest"] for r in sim.transform_records[0].layers)
    True
"""

from __future__ import annotations

from dataclasses import replace

import torch

from mixq.core.progress import progress_bar
from mixq.transforms.adaround import output_mse
from mixq.transforms.base import TransformContext, TransformRecord, register_transform
from mixq.transforms.weights import Grid, float_weight, layer_grams, weight_grid, write_weight

__all__ = ["clip_grid", "gptq", "gptq_round"]


def _flat(grid: Grid) -> tuple[torch.Tensor, ...]:
    """Weight, scale, zero point and group of ``grid``, each ``[out, rest]``."""
    shape = grid.weight.shape
    group = grid.group if grid.group is not None else torch.zeros(shape, dtype=torch.long)
    return tuple(
        t.expand(shape).flatten(1) for t in (grid.weight, grid.scale, grid.zero_point, group)
    )


@torch.no_grad()
def clip_grid(grid: Grid, gram: torch.Tensor, steps: int = 20, min_clip: float = 0.5) -> Grid:
    """``grid`` with each group's scale shrunk to the factor that minimises the layer's output
    error of round-to-nearest, for inputs with Gram matrix ``gram``.

    A group is every element that shares one scale (a channel, or one block of it). A
    channel's error ``e^T G e`` is exact; a block's is ``e_b^T G_bb e_b``, its own inputs'
    share (the cross terms with the other blocks depend on their factors too).
    """
    w, scale, zero_point, group = _flat(grid)
    same = group[0][:, None] == group[0][None, :]  # inputs that share a group within a row
    gram = gram * same
    flat_group = group.reshape(-1)
    n = int(flat_group.max()) + 1
    best_err = torch.full((n,), float("inf"), dtype=torch.float64)
    best = torch.ones(n, dtype=torch.float64)
    for ratio in torch.linspace(1.0, min_clip, steps, dtype=torch.float64):
        s = scale * float(ratio)
        ints = torch.clamp(torch.round(w / s) + zero_point, grid.qmin, grid.qmax) - zero_point
        e = ints * s - w
        err = ((e @ gram) * e).reshape(-1).double()
        per_group = torch.zeros(n, dtype=torch.float64).index_add_(0, flat_group, err)
        better = per_group < best_err
        best_err = torch.where(better, per_group, best_err)
        best = torch.where(better, ratio, best)
    factor = best[group].to(scale.dtype)
    return replace(grid, scale=(scale * factor).reshape(grid.weight.shape))


def _edges(grid: Grid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per element of the flattened weight: the lowest and highest code allowed (before the
    zero point) and the code it is pinned to (NaN where it is free).

    The pins keep the scale that the export re-derives from the written weight by min-max:
    symmetric, each group's largest weight goes to the edge +-(qmax - qmin) // 2 and no code
    goes past it; asymmetric, the weights whose nearest code is an edge keep it.
    """
    w, scale, zero_point, group = _flat(grid)
    if not grid.symmetric:
        lo, hi = grid.qmin - zero_point, grid.qmax - zero_point
        nearest = torch.clamp(torch.round(w / scale), lo, hi)
        return lo, hi, torch.where((nearest == lo) | (nearest == hi), nearest, torch.nan)
    half = (grid.qmax - grid.qmin) // 2
    lo = torch.clamp(grid.qmin - zero_point, min=-half)
    hi = torch.clamp(grid.qmax - zero_point, max=half)
    mag, flat_group = w.abs().reshape(-1), group.reshape(-1)
    n = int(flat_group.max()) + 1
    top = torch.full((n,), -1.0, dtype=mag.dtype).scatter_reduce(0, flat_group, mag, "amax")
    index = torch.arange(mag.numel())
    is_top = mag == top[flat_group]
    first = torch.full((n,), mag.numel()).scatter_reduce(
        0, flat_group[is_top], index[is_top], "amin"
    )
    pinned = torch.zeros(mag.numel(), dtype=torch.bool)
    pinned[first] = True
    pin = torch.where(pinned.reshape(w.shape), torch.sign(w) * half, torch.nan)
    return lo, hi, pin


@torch.no_grad()
def gptq_round(
    grid: Grid, gram: torch.Tensor, damp: float = 0.01, block: int = 128
) -> torch.Tensor:
    """Integers (before the zero point) for ``grid.weight`` that compensate each column's
    rounding error on the columns after it (GPTQ), most energetic input column first.

    The weight is flattened to ``[out, rest]``; ``gram`` is ``[rest, rest]`` in that order.
    """
    lo, hi, pin = _edges(grid)
    w, scale = (t.double().clone() for t in _flat(grid)[:2])
    h = gram.double().clone()
    dead = torch.diagonal(h) <= 0  # inputs always 0 in calibration: rounded to nearest, with
    h[dead, dead] = 1.0  # no error carried to or from them (their weight may matter elsewhere)
    order = torch.argsort(torch.diagonal(h), descending=True)
    w, scale, lo, hi, pin = (t.double()[:, order] for t in (w, scale, lo, hi, pin))
    h = h[order][:, order]
    h += damp * torch.diagonal(h).mean() * torch.eye(len(h), dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    ints = torch.zeros_like(w)
    for start in range(0, w.shape[1], block):
        end = min(start + block, w.shape[1])
        errs = torch.zeros(w.shape[0], end - start, dtype=w.dtype)
        for j in range(start, end):
            code = torch.clamp(torch.round(w[:, j] / scale[:, j]), lo[:, j], hi[:, j])
            code = torch.where(torch.isnan(pin[:, j]), code, pin[:, j])
            ints[:, j] = code
            err = (w[:, j] - code * scale[:, j]) / hinv[j, j]
            w[:, j:end] -= err[:, None] * hinv[j, j:end][None]
            errs[:, j - start] = err
        w[:, end:] -= errs @ hinv[start:end, end:]
    out = torch.empty_like(ints)
    out[:, order] = ints
    return out.to(grid.weight.dtype).reshape(grid.weight.shape)


@register_transform("gptq", stage="weights")
def gptq(
    ctx: TransformContext,
    damp: float = 0.01,
    clip: bool = True,
    min_clip: float = 0.5,
    clip_steps: int = 20,
) -> TransformRecord:
    """Clip each weight group's range and round with error compensation (see the module).

    Args:
        ctx: the Sim, the float model (whose layer inputs are the data) and batches.
        damp: added to the Gram's diagonal, times its mean (keeps its inverse stable).
        clip: choose each symmetric group's range by the output error (False: min-max).
        min_clip: the smallest range tried, as a share of the min-max range.
        clip_steps: how many ranges are tried between 1 and ``min_clip``.

    Returns:
        The record: per layer the output MSE on the calibration data with nearest rounding
        on the min-max grid and with this transform, and the mean range kept.
    """
    options = {"damp": damp, "clip": clip, "min_clip": min_clip, "clip_steps": clip_steps}
    record = TransformRecord("gptq", options)
    layers = layer_grams(ctx)
    for layer, gram in progress_bar(layers, "gptq rounding"):
        minmax = weight_grid(ctx.sim, layer, float_weight(ctx.model, ctx.sim, layer))
        nearest = torch.round(minmax.weight / minmax.scale)
        before = float(output_mse(minmax.dequantize(nearest) - minmax.weight, gram))
        grids = [minmax]
        if clip and minmax.symmetric:
            grids.append(clip_grid(minmax, gram, clip_steps, min_clip))
        after, grid, ints = before, minmax, nearest
        for candidate in grids:  # a clipped range is kept only where it ends better
            rounded = gptq_round(candidate, gram, damp)
            error = float(output_mse(candidate.dequantize(rounded) - candidate.weight, gram))
            if error < after:
                after, grid, ints = error, candidate, rounded
        if grid is not minmax or ints is not nearest:
            write_weight(ctx.sim, layer, grid, ints)
        kept = (grid.scale / minmax.scale.expand_as(grid.scale)).mean()
        record.layers.append(
            {"layer": layer.op, "mse_nearest": before, "mse_gptq": after, "range": float(kept)}
        )
    if layers:
        record.notes.append("weights moved onto their grid: with quantizers off the Sim differs")
    return record
