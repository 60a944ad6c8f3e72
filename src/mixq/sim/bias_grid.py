"""The bias an 8-bit integer conv kernel adds: on the int32 grid of its accumulator.

An int8 conv kernel (ONNX Runtime's QLinearConv, QNN, every NPU's) sums integer products in
int32 and adds the bias there, quantized with scale ``x_scale * w_scale[c]`` per output
channel. `bias_shift` is what a float bias moves for the kernel's bias (the batch-norm-folded
one, where a batch-norm follows) to land on that grid; the torch Sim
(`mixq.sim.torch.bias`) and the ONNX Sim (`mixq.sim.onnx.bias`) both add it.

Example:
    >>> import torch
    >>> grid = torch.tensor([0.1, 0.2])
    >>> b = torch.tensor([0.26, -0.05])
    >>> torch.allclose(b + bias_shift(grid, b), torch.tensor([0.3, 0.0]))
    True
"""

from __future__ import annotations

import torch

__all__ = ["bias_shift", "bn_factor"]


def bn_factor(
    var: torch.Tensor | None, eps: float | None, gamma: torch.Tensor | None, like: torch.Tensor
) -> torch.Tensor:
    """``gamma / sqrt(var + eps)`` of a following batch-norm (ones without one; a zero
    factor counts as one, as the weight fold does)."""
    if var is None or eps is None:
        return torch.ones_like(like)
    k = torch.rsqrt(var + eps) * (1 if gamma is None else gamma)
    return torch.where(k == 0, torch.ones_like(k), k)


@torch.no_grad()
def bias_shift(
    grid: torch.Tensor,
    b: torch.Tensor | None,
    k: torch.Tensor | None = None,
    bn_bias: torch.Tensor | None = None,
    bn_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """What ``b`` moves for its folded value ``(b - mean) * k + beta`` to land on ``grid``."""
    k = torch.ones_like(grid) if k is None else k
    folded = torch.zeros_like(k) if b is None else b * k
    if bn_mean is not None:
        folded = folded - bn_mean * k + (0 if bn_bias is None else bn_bias)
    return (torch.round(folded / grid) * grid - folded) / k
