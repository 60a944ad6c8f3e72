"""Bias correction (Nagel et al., 2019): remove the mean output shift weight rounding causes.

Quantizing a weight ``W`` to ``W_q`` shifts a layer's output by ``(W_q - W) x``, whose mean
over the calibration data, ``(W_q - W) E[x]``, is a constant per output channel. It is
subtracted from the layer's bias in the Sim (for a conv without bias whose batch-norm is
folded in, added to the batch-norm's running mean, which the export folds into the conv's
bias). ``E[x]`` is the mean per input channel of the layer's float input; for a conv it is
spread over the kernel, which ignores zero padding at the borders.

This is a correction of the *quantized* model: with every quantizer off, the Sim computes
the float model with these corrected biases.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> x = torch.randn(64, 8)
    >>> sim = mixq.quantize(model, x, ("int8", "int4"), transforms=["bias_correct"])
    >>> [row["layer"] for row in sim.transform_records[0].layers]
    ['0', '2']
"""

from __future__ import annotations

import torch

from mixq.transforms.base import TransformContext, TransformRecord, register_transform
from mixq.transforms.stats import record_inputs, run_batches
from mixq.transforms.weights import QuantizedLayer, float_weight, quantized_layers

__all__ = ["bias_correct", "expected_shift"]


def expected_shift(delta: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``delta @ mean`` per output channel; conv kernels are summed over their taps."""
    if delta.ndim > 2:
        delta = delta.flatten(2).sum(dim=2)
    return delta @ mean.to(delta.dtype)


@torch.no_grad()
def _correct(ctx: TransformContext, layer: QuantizedLayer, mean: torch.Tensor) -> dict | None:
    sim = ctx.sim
    tensors = sim.named_tensors()
    args = sim.weight_args(layer.quantizer)
    w = float_weight(ctx.model, sim, layer)  # the Sim's may already be rounded (adaround)
    shift = expected_shift(sim.quantizer(layer.quantizer)(*args) - w, mean)
    if layer.bias is not None:
        bias = tensors[layer.bias]
        before = float(bias.norm())
        bias.sub_(shift)
    elif layer.bn_mean is not None:
        bias = tensors[layer.bn_mean]
        before = float(bias.norm())
        bias.add_(shift)
    else:
        return None
    return {
        "layer": layer.op,
        "target": layer.bias or layer.bn_mean,
        "shift_norm": float(shift.norm()),
        "max_abs_shift": float(shift.abs().max()),
        "before_norm": before,
    }


@register_transform("bias_correct", stage="weights")
def bias_correct(ctx: TransformContext) -> TransformRecord:
    """Correct every quantized linear / conv layer's bias by its expected output shift.

    Args:
        ctx: the Sim (its weight quantizers and parameters), the float model (whose layer
            inputs give ``E[x]``) and calibration batches.

    Returns:
        The record: per layer the corrected tensor, the norm and max of the shift and the
        norm of the bias before.
    """
    layers = quantized_layers(ctx.sim, ctx.model)
    with record_inputs(ctx.model, [layer.module for layer in layers]) as stats:
        run_batches(ctx.model, ctx.batches)
    record = TransformRecord("bias_correct")
    for layer in layers:
        if stats[layer.module].count == 0:
            continue
        row = _correct(ctx, layer, stats[layer.module].mean)
        if row is None:
            record.notes.append(f"{layer.op}: no bias and no batch-norm to correct")
        else:
            record.layers.append(row)
    if layers:
        record.notes.append("biases changed: with quantizers off the Sim differs from float")
    return record
