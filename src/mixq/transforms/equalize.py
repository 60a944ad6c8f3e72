"""Cross-layer equalization (Nagel et al., 2019): balance weight ranges of consecutive layers.

For a linear / conv producer and its consumers (through ReLU, pooling or reshapes; see
`mixq.transforms.pairs`), output channel ``i`` of the producer is divided by
``s_i = sqrt(r1_i / r2_i)`` and input channel ``i`` of the consumers multiplied by it, where
``r1_i`` is the producer's max |w| of channel ``i`` with its batch-norm folded in (what the
weight quantizer sees) and ``r2_i`` the consumers' max |w| of that input channel. Both then
have range ``sqrt(r1_i r2_i)``, and the activation between them shrinks where the producer
had outsized channels. Batch-norm is folded first in effect: the scale goes into the
batch-norm's weight and bias, which is exact, and the export folds the batch-norm into the
conv as before. Chains are equalized pair by pair, ``iterations`` times.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> with torch.no_grad():
    ...     model[0].weight[:2] *= 50
    >>> x = torch.randn(32, 8)
    >>> result = mixq.transforms.apply_transforms(model, x, ["equalize"])
    >>> bool(result.model[0].weight.abs().max() < model[0].weight.abs().max())
    True
"""

from __future__ import annotations

import torch

from mixq.transforms.base import TransformContext, TransformRecord, register_transform
from mixq.transforms.pairs import consumer_ranges, find_pairs, producer_ranges, verify_exact

__all__ = ["equalization_scale", "equalize"]


def equalization_scale(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """``sqrt(r1 / r2)`` per channel; 1 where either range is zero."""
    s = torch.sqrt(r1.clamp(min=1e-12) / r2.clamp(min=1e-12))
    keep = (r1 <= 0) | (r2 <= 0)
    return torch.where(keep, torch.ones_like(s), s).clamp(1e-4, 1e4)


def _spread(r: torch.Tensor) -> float:
    """max / min of the per-channel ranges (1 when all are equal)."""
    live = r[r > 0]
    return float(live.max() / live.min()) if live.numel() else 1.0


@register_transform("equalize")
def equalize(
    ctx: TransformContext, iterations: int = 2, tolerance: float = 1e-4
) -> TransformRecord:
    """Equalize every conv / linear pair that takes a per-channel scale exactly.

    Args:
        ctx: the float model, its graph and calibration batches (one batch checks exactness).
        iterations: passes over the pairs (chains converge over a few passes).
        tolerance: largest relative change of the float outputs a pair may cause.

    Returns:
        The record: per pair the scale range and the producer's and consumers'
        channel-range spread (max / min) before and after.
    """
    pairs = find_pairs(ctx.graph, ctx.model, producers=("linear", "conv"))
    record = TransformRecord("equalize", {"iterations": iterations})
    first: dict[str, tuple[float, float]] = {}
    total: dict[str, torch.Tensor] = {}
    for _ in range(iterations):
        for pair in pairs:
            r1, r2 = producer_ranges(ctx.model, pair), consumer_ranges(ctx.model, pair)
            first.setdefault(pair.producer, (_spread(r1), _spread(r2)))
            s = equalization_scale(r1, r2)
            change = verify_exact(ctx.model, pair, s, ctx.batches[:1], ctx.reference, tolerance)
            if change is not None:
                total[pair.producer] = total.get(pair.producer, torch.ones_like(s)) * s
    for pair in pairs:
        if pair.producer not in total:
            record.notes.append(f"{pair.producer}: not exact in float, left as it was")
            continue
        s = total[pair.producer]
        r1, r2 = producer_ranges(ctx.model, pair), consumer_ranges(ctx.model, pair)
        record.layers.append(
            {
                "layer": f"{pair.producer} -> {', '.join(pair.consumers)}",
                "scale": [float(s.min()), float(s.max())],
                "producer_spread": [first[pair.producer][0], _spread(r1)],
                "consumer_spread": [first[pair.producer][1], _spread(r2)],
            }
        )
    if not pairs:
        record.notes.append("no conv / linear pair where a scale folds exactly")
    return record
