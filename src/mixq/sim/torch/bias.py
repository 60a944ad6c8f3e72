"""The bias an 8-bit integer conv kernel adds: rounded to the int32 grid of its accumulator.

An int8 conv kernel (ONNX Runtime's QLinearConv, QNN, every NPU's) sums integer products
in int32 and adds the bias there, quantized with scale ``x_scale * w_scale[c]`` per output
channel (ORT rounds a float bias onto that grid when it fuses DequantizeLinear -> Conv ->
QuantizeLinear). With the bias left in float the Sim was off by up to half a step of that
grid: a few output values per layer rounded to the neighbouring level, which compounds
through a deep CNN (MobileNetV2 from a config: 20 dB Sim vs ONNX Runtime, EfficientNet's
pooled output all zeros). `BiasRounding` sits on the conv's bias argument and moves the
bias (the batch-norm-folded one, where a batch-norm follows) onto that grid; the export
writes that bias, so ORT computes the same numbers whether it fuses the conv or not.

Example:
    >>> import torch
    >>> from mixq.plan.points import QuantPoint
    >>> from mixq.sim.torch.quantizer import ActivationQuantizer, WeightQuantizer
    >>> act = ActivationQuantizer(QuantPoint("x", "activation", "x", "int8"))
    >>> act.set_range(-1.0, 1.0)
    >>> weight = WeightQuantizer(QuantPoint("w", "weight", "w", "int8", axis=0))
    >>> _ = weight(torch.tensor([[0.5], [-0.25]]))
    >>> grid = act.scale * weight.scale.flatten()
    >>> b = BiasRounding(act, weight)(torch.tensor([0.01, -0.003]))
    >>> bool(torch.allclose(b / grid, torch.round(b / grid)))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixq.sim.bias_grid import bias_shift, bn_factor
from mixq.sim.torch.quantizer import ActivationQuantizer, WeightQuantizer

__all__ = ["BiasRounding", "KernelOperands", "eight_bit_kernel", "rounds_bias"]


def rounds_bias(act: ActivationQuantizer, weight: WeightQuantizer) -> bool:
    """Whether an int8 kernel runs the op: 8-bit integer input, int8 weights per tensor or
    per channel (ORT has no integer conv for 16-bit, 4-bit or blocked weights), with an
    input scale known before the call (a dynamic one is not: the bias is then added in
    float after the integer sum, as MatMulIntegerToFloat does)."""
    return eight_bit_kernel(act, weight) and act.qtype.calibrated


def eight_bit_kernel(act: ActivationQuantizer, weight: WeightQuantizer) -> bool:
    """An 8-bit integer input (calibrated or dynamic) with int8 weights, not blocked."""
    return (
        not act.qtype.is_floating_point
        and act.qtype.bits == 8
        and weight.qtype.name == "int8"
        and weight.point.block_size is None
    )


class KernelOperands(nn.Module):
    """A module that computes part of an integer kernel from the quantizers of its input
    and weight (held as references, not children: they are the Sim's, registered once)."""

    act: ActivationQuantizer
    weight: WeightQuantizer

    def __init__(self, act: ActivationQuantizer, weight: WeightQuantizer) -> None:
        super().__init__()
        object.__setattr__(self, "act", act)
        object.__setattr__(self, "weight", weight)


class BiasRounding(KernelOperands):
    """``b`` moved onto the grid ``x_scale * w_scale[c]`` of the accumulator (with a
    batch-norm: its folded bias ``(b - mean) * k + beta`` is, and ``b`` absorbs the
    difference divided by ``k``). The shift is a constant to autograd (QAT trains ``b``)."""

    def __init__(self, act: ActivationQuantizer, weight: WeightQuantizer) -> None:
        super().__init__(act, weight)
        self._cache: tuple[tuple[Any, ...], torch.Tensor] | None = None

    def forward(
        self,
        b: torch.Tensor | None,
        bn_weight: torch.Tensor | None = None,
        bn_bias: torch.Tensor | None = None,
        bn_mean: torch.Tensor | None = None,
        bn_var: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        act, weight = self.act, self.weight
        x_scale, w_scale = act.scale, weight.scale
        if not (act.enabled and weight.enabled) or x_scale is None or w_scale is None:
            return b
        # the shift changes only with a scale or a parameter: reuse it until one does
        tensors = (x_scale, w_scale, b, bn_weight, bn_bias, bn_mean, bn_var)
        key = tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors)
        if self._cache is None or self._cache[0] != key:
            grid = (x_scale * w_scale.flatten()).float()
            self._cache = (key, self._shift(grid, b, bn_weight, bn_bias, bn_mean, bn_var))
        shift = self._cache[1]
        return shift if b is None else b + shift

    def _shift(
        self,
        grid: torch.Tensor,
        b: torch.Tensor | None,
        bn_weight: torch.Tensor | None,
        bn_bias: torch.Tensor | None,
        bn_mean: torch.Tensor | None,
        bn_var: torch.Tensor | None,
    ) -> torch.Tensor:
        """What ``b`` moves for its folded value to land on ``grid``, a constant to autograd."""
        k = bn_factor(bn_var, self.weight.bn_eps, bn_weight, grid)
        return bias_shift(grid, b, k, bn_bias, bn_mean)
