"""Adaptive rounding (AdaRound, Nagel et al., 2020): round each weight up or down to
minimise the layer's output error, instead of to the nearest grid point.

For each quantized linear / conv2d layer, a continuous variable per weight chooses between
``floor(w / scale)`` and the next grid point through a rectified sigmoid ``h``; the loss is
the layer's output MSE on the calibration data (relative to round-to-nearest's), computed
exactly from the Gram matrix ``G = E[r r^T]`` of the layer's input rows (features, or conv
patches) as ``tr(dW G dW^T) / out``, plus a regulariser, annealed from ``beta`` 20 to 2,
that drives every ``h`` to 0 or 1. The result is written back into the Sim's weight as a
value on the quantizer's grid (over the batch-norm's fold where one is folded in), so the
Sim and the export, which round it again, reproduce it exactly. Weights whose nearest value
is at the edge of the grid keep it, so the per-channel scale stays the same. A layer where
the learned rounding is not better than nearest on the calibration data keeps nearest.

Layers are rounded one at a time on the float model's inputs (AdaRound's basic form; the
quantized model's inputs are not used), within ``time_budget_s`` (shared out evenly over
the layers left), with a progress bar.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> x = torch.randn(64, 8)
    >>> sim = mixq.quantize(model, x, ("int8", "int4"), transforms=[
    ...     {"name": "adaround", "iterations": 50}])
    >>> all(r["mse_adaround"] <= r["mse_nearest"] for r in sim.transform_records[0].layers)
    True
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mixq.core.progress import progress_bar
from mixq.transforms.base import TransformContext, TransformRecord, register_transform
from mixq.transforms.weights import Grid, float_weight, layer_grams, weight_grid, write_weight

__all__ = ["adaround", "output_mse", "round_layer"]

_ZETA, _GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound's values)


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)


def _inverse_h(rest: torch.Tensor) -> torch.Tensor:
    p = ((rest - _GAMMA) / (_ZETA - _GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


@contextmanager
def _one_thread() -> Iterator[None]:
    # The loop runs thousands of small ops; on a busy machine, intra-op threads waiting
    # on each other made it 70x slower (8 s instead of 0.12 s for a 64 x 256 layer).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def output_mse(delta: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Mean squared output error of a weight error ``delta`` for inputs with Gram ``gram``."""
    d = delta.flatten(1)
    return ((d @ gram) * d).sum() / d.shape[0]


def round_layer(
    gram: torch.Tensor,
    grid: Grid,
    iterations: int = 200,
    deadline: float = float("inf"),
    reg: float = 10.0,
    lr: float = 0.1,
) -> tuple[torch.Tensor, int]:
    """Learn up / down rounding of ``grid.weight`` for inputs with Gram matrix ``gram``.

    Returns:
        The rounded integers (before the zero point) and the iterations run.
    """
    w_div = grid.weight / grid.scale
    floor, nearest = torch.floor(w_div), torch.round(w_div)
    at_edge = (nearest + grid.zero_point >= grid.qmax) | (nearest + grid.zero_point <= grid.qmin)
    base = max(float(output_mse(grid.dequantize(nearest) - grid.weight, gram)), 1e-30)
    v = _inverse_h(w_div - floor).requires_grad_()
    opt = torch.optim.Adam([v], lr=lr)
    warmup = iterations // 5
    done = 0
    with _one_thread():
        for i in range(iterations):
            if time.monotonic() > deadline:
                break
            h = _h(v)
            soft = torch.where(at_edge, nearest, floor + h)
            loss = output_mse(grid.dequantize(soft) - grid.weight, gram) / base
            if i >= warmup:
                beta = 20 - (20 - 2) * (i - warmup) / max(iterations - warmup, 1)
                loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
    with torch.no_grad():
        return torch.where(at_edge, nearest, floor + (_h(v) >= 0.5).float()), done


@register_transform("adaround", stage="weights")
def adaround(
    ctx: TransformContext,
    iterations: int = 200,
    time_budget_s: float | None = None,
    reg: float = 10.0,
    lr: float = 0.1,
) -> TransformRecord:
    """Adaptively round the weights of every quantized linear / conv2d layer of the Sim.

    Args:
        ctx: the Sim, the float model (whose layer inputs are the data) and batches.
        iterations: optimisation steps per layer (fewer when the time budget runs out).
        time_budget_s: wall-clock budget for all layers; None: no limit.
        reg: weight of the regulariser that drives each rounding to up or down.
        lr: Adam's learning rate on the rounding variables.

    Returns:
        The record: per layer the output MSE with nearest and with adaptive rounding on the
        calibration data, the share of weights rounded the other way, and steps run.
    """
    layers = layer_grams(ctx)
    record = TransformRecord("adaround", {"iterations": iterations, "reg": reg, "lr": lr})
    if time_budget_s is not None:
        record.options["time_budget_s"] = time_budget_s
    end = time.monotonic() + (time_budget_s if time_budget_s is not None else float("inf"))
    for i, (layer, gram) in enumerate(progress_bar(layers, "adaptive rounding")):
        now = time.monotonic()
        grid = weight_grid(ctx.sim, layer, float_weight(ctx.model, ctx.sim, layer))
        deadline = now + (end - now) / (len(layers) - i)
        ints, steps = round_layer(gram, grid, iterations, deadline, reg, lr)
        nearest = torch.round(grid.weight / grid.scale)
        before = float(output_mse(grid.dequantize(nearest) - grid.weight, gram))
        after = float(output_mse(grid.dequantize(ints) - grid.weight, gram))
        if after < before:
            write_weight(ctx.sim, layer, grid, ints)
        else:
            ints, after = nearest, before
        record.layers.append(
            {
                "layer": layer.op,
                "mse_nearest": before,
                "mse_adaround": after,
                "flipped": float((ints != nearest).float().mean()),
                "steps": steps,
            }
        )
    if layers:
        record.notes.append("weights moved onto their grid: with quantizers off the Sim differs")
    return record
