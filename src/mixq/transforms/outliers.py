"""Outlier channels on a side path: a linear's few huge input channels leave its quantizer.

Trained transformers put a handful of input channels far above the rest (the real MiniLM's
FFN output projections: one GELU channel reaching 17-25 where the median channel peaks at
1.5). One per-tensor scale must cover them, and every other channel loses resolution;
smoothing moves part of that range into the weights, but a column scaled that far takes
the weight quantizer's resolution from its whole row.

``split_outliers`` finds, on the calibration data, the input channels of each linear (by
default those whose output is no wider than their input, where trained models' massive
activations sit: an FFN's second linear) whose max |x| exceeds ``factor`` times the median
channel's, at most ``max_channels`` of them,
and moves them to a side path (`mixq.transforms.side_path`): the layer reads its input
with those channels masked to 0 (one per-channel ``Mul``, shared with smoothing's) and a
small linear over just those channels adds their share. Float outputs are unchanged; the
quantized layer's input range no longer includes the outliers, and the side path's
channels get a quantizer of their own. Under the ``ort-cpu`` target the side path is a
``Gather`` and a small integer matmul. Measured on the MiniLM (exported file, held-out
sentences), with the FFN output projections of layers 0-2 split and int8 instead of fp32:
cosine 0.9987 / 0.9945 (mean / min); int8 without the split, 0.9980 / 0.9826 in the Sim.

Tensors the target quantizes for every reader (full-integer placement) are skipped: the
mask would read values already quantized at the outliers' range.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    >>> with torch.no_grad():
    ...     model[0].weight[3] *= 40  # one huge channel of the second linear's input
    >>> x = torch.randn(64, 8)
    >>> result = mixq.transforms.apply_transforms(model, x, ["split_outliers"])
    >>> result.records[0].options["channels"]
    {'2': [3]}
    >>> bool(torch.allclose(result.model(x), model(x), rtol=1e-4, atol=1e-4))
    True
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from mixq.core.errors import ConfigError
from mixq.transforms.base import TransformContext, TransformRecord, register_transform
from mixq.transforms.pairs import (
    INPUT_SCALE,
    attach_input_scale,
    detach_input_scale,
    max_relative_error,
    single_use,
)
from mixq.transforms.side_path import attach_side_path, detach_side_path, side_path
from mixq.transforms.stats import record_inputs, run_batches

__all__ = ["outlier_channels", "split_outliers"]


def outlier_channels(absmax: torch.Tensor, factor: float, max_channels: int) -> list[int]:
    """Channels whose max |x| exceeds ``factor`` x the median channel's, the largest
    first, at most ``max_channels``.

    Example:
        >>> outlier_channels(torch.tensor([1.0, 1.2, 30.0, 0.9, 12.0]), 8.0, 4)
        [2, 4]
    """
    median = float(absmax.median())
    if median <= 0 or max_channels <= 0:
        return []
    order = torch.argsort(absmax, descending=True)[:max_channels]
    return [int(i) for i in order if float(absmax[i]) > factor * median]


def _candidates(
    ctx: TransformContext, channels: dict[str, list[int]] | None, layers: list[str] | None
) -> list[str]:
    """Single-use ``nn.Linear`` layers reading one tensor that the plan does not quantize
    for every reader, whose path matches a glob of ``layers`` (None: those whose output is
    no wider than their input); with ``channels`` (a saved plan's), those layers."""
    if channels is not None:
        for path, index in channels.items():
            width = _linear(ctx.model, path).in_features
            bad = [i for i in index if not 0 <= int(i) < width]
            if bad:
                raise ConfigError(
                    f"split_outliers: channels {bad} of {path!r} are outside its "
                    f"{width} input channels; re-run the transform without "
                    "'channels' to find them again"
                )
        return list(channels)
    quantized = ctx.quantized_tensors() or set()
    single = single_use(ctx.graph)
    paths = []
    for op in ctx.graph:
        layer = ctx.model.get_submodule(op.module) if op.module else None
        if op.kind != "linear" or not isinstance(layer, nn.Linear) or len(op.inputs) != 1:
            continue
        if layers is None:  # the side path's Add would cost more than it saves
            wanted = layer.out_features <= layer.in_features
        else:
            wanted = any(fnmatch.fnmatchcase(op.module, g) for g in layers)
        free = op.inputs[0] not in quantized and side_path(layer) is None
        if wanted and free and op.module in single:
            paths.append(op.module)
    return paths


@register_transform("split_outliers")
def split_outliers(
    ctx: TransformContext,
    factor: float = 8.0,
    max_channels: int = 4,
    layers: list[str] | None = None,
    channels: dict[str, list[int]] | None = None,
    tolerance: float = 1e-4,
) -> TransformRecord:
    """Move each linear's outlier input channels to a float-exact side path.

    Args:
        ctx: the float model, its graph and calibration batches.
        factor: a channel is an outlier when its max |x| exceeds this many times the
            median channel's.
        max_channels: at most this many per layer (the largest).
        layers: globs of the linear layers' module paths to consider (``["*"]``: every
            one). None takes the layers whose output is no wider than their input (an
            FFN's second linear, attention projections, not an FFN's first): a side path
            costs an ``Add`` over the layer's output and a matmul of that width, and the
            widening layers read LayerNorm outputs, whose outliers smoothing handles. On
            the MiniLM, every layer with outliers split (10, 6 of them FFN inputs) ran at
            0.42x fp32, the FFN outputs of layers 0-2 alone at 0.35x.
        channels: layer path -> channel indices to split (a saved plan's; no search).
        tolerance: largest relative change of the float outputs; above it, every split is
            undone and the record says so.

    Returns:
        The record: per layer the channels and max |x| of the layer's input before and
        after; ``options["channels"]`` reproduces them.
    """
    record = TransformRecord(
        "split_outliers", {"factor": factor, "max_channels": max_channels, "channels": {}}
    )
    paths = _candidates(ctx, channels, layers)
    with record_inputs(ctx.model, paths) as stats:
        run_batches(ctx.model, ctx.batches)
    saved: list[tuple[nn.Linear, torch.Tensor, torch.Tensor | None]] = []
    for path in paths:
        absmax = stats[path].absmax
        if absmax is None:
            continue
        chosen = channels[path] if channels is not None else []
        chosen = chosen or outlier_channels(absmax, factor, max_channels)
        if not chosen:
            continue
        module = _linear(ctx.model, path)
        index = torch.tensor(chosen, dtype=torch.long)
        scale = getattr(module, INPUT_SCALE, None)
        scale = scale if isinstance(scale, torch.Tensor) else None
        saved.append((module, module.weight.detach().clone(), _clone(scale)))
        ones = torch.ones(module.in_features)
        attach_side_path(module, index, ones if scale is None else scale)
        mask = ones.clone()
        mask[index] = 0
        attach_input_scale(module, mask)
        kept = absmax.clone()
        kept[index] = 0
        record.options["channels"][path] = chosen
        record.layers.append(
            {
                "layer": path,
                "channels": chosen,
                "max_abs_x": [float(absmax.max()), float(kept.max())],
            }
        )
    if saved and ctx.reference:
        change = max_relative_error(ctx.reference, run_batches(ctx.model, ctx.batches[:1]))
        if change > tolerance:
            _undo(saved)
            record.notes.append(
                f"the float outputs moved by {change:.2g} (over {tolerance:g}): every split "
                "undone (a layer called with inputs its hooks do not see?)"
            )
            record.layers.clear()
            record.options["channels"] = {}
    if not record.layers and not record.notes:
        record.notes.append(f"no linear input with a channel over {factor:g}x the median")
    return record


def _linear(model: nn.Module, path: str) -> nn.Linear:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        raise ConfigError(
            f"split_outliers: {path!r} is not an nn.Linear of this model "
            f"({type(module).__name__ if module is not None else 'no such module'}); "
            "re-run the transform without 'channels' to find the layers again"
        )
    return module


def _clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone()


@torch.no_grad()
def _undo(saved: list[tuple[nn.Linear, torch.Tensor, torch.Tensor | None]]) -> None:
    for module, weight, scale in saved:
        detach_side_path(module)
        module.weight.copy_(weight)
        if scale is None:
            detach_input_scale(module)
        else:
            getattr(module, INPUT_SCALE).copy_(scale)
