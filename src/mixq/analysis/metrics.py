"""Error metrics between a reference (float) output and a quantized one.

Example:
    >>> import torch
    >>> ref = torch.tensor([1.0, 2.0, 3.0])
    >>> round(sqnr(ref, ref + 0.01), 1)
    46.7
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

__all__ = ["cosine", "float_leaves", "mse", "sqnr"]


def float_leaves(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a (nested) model output, in order."""
    return [
        t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum ref^2 / sum (ref - out)^2)``.

    Computed in float64; identical tensors give ``inf``.
    """
    ref64, out64 = ref.detach().double(), out.detach().double()
    noise = (ref64 - out64).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(ref64.pow(2).sum() / noise))


def mse(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((ref.detach().double() - out.detach().double()).pow(2).mean())


def cosine(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors."""
    a, b = ref.detach().double().flatten(), out.detach().double().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))
