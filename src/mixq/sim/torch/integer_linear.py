"""A linear an int8 kernel runs, computed as that kernel does: integer products, summed
exactly, scaled once.

ONNX Runtime runs ``DQ(x_q) @ DQ(w_q)^T + b`` as ``MatMulIntegerToFloat``: it sums
``(x_q - x_zp) * (w_q - w_zp)`` in int32, multiplies the sum by ``x_scale * w_scale[c]``
(one float32 rounding) and adds the bias. The Sim used to multiply the dequantized floats,
each already rounded once, and sum them in float32 in the BLAS's order, with the bias
folded into the sum. The two agree to float32's last bits, and that is enough: where a
value lies within those bits of a rounding boundary of the next quantizer, one code differs
by one step. On the real MiniLM embedder under the generic target, three such codes (of
60 000 value-projection outputs) took the file 30.4 dB from the Sim at the output, while
every quantizer agreed with it to >= 68 dB locally.

`IntegerLinear` takes the linear's place in the Sim and computes it the kernel's way: the
integer codes are recovered from the dequantized values (exactly: they are small integers
times the scale), their products summed in float32 (exact: every partial sum is an integer
under 2**24 for any layer a real model has: 8-bit codes, 1 024 inputs at full scale), the
sum multiplied by the float32 product of the scales, then the bias added. With gradients
on (QAT) the value is the same and the gradient is the float linear's, straight through.

Example:
    >>> import torch
    >>> from mixq.plan.points import QuantPoint
    >>> from mixq.sim.torch.quantizer import ActivationQuantizer, WeightQuantizer
    >>> act = ActivationQuantizer(QuantPoint("x", "activation", "x", "int8"))
    >>> act.set_range(-1.0, 1.0)
    >>> weight = WeightQuantizer(QuantPoint("w", "weight", "w", "int8", axis=0))
    >>> x, w = act(torch.rand(2, 8) - 0.5), weight(torch.rand(3, 8) - 0.5)
    >>> w_scale = weight.scale.reshape(-1, 1)  # one per output channel
    >>> codes = torch.round(x / act.scale) @ torch.round(w / w_scale).T
    >>> y = IntegerLinear(act, weight)(x, w)
    >>> bool(torch.equal(y, codes * (act.scale * weight.scale.flatten())))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixq.sim.torch.bias import KernelOperands, eight_bit_kernel
from mixq.sim.torch.quantizer import ActivationQuantizer, WeightQuantizer

__all__ = ["IntegerLinear", "accumulates_in_integer"]


def accumulates_in_integer(act: ActivationQuantizer, weight: WeightQuantizer) -> bool:
    """Whether an int8 kernel runs the linear: an 8-bit integer input quantized per tensor
    (calibrated or dynamic), int8 weights per tensor or per output channel (16-bit, 4-bit
    and blocked weights run through a float matmul in ORT, or through MatMulNBits, which
    scales per block)."""
    return (
        eight_bit_kernel(act, weight)
        and act.point.axis is None
        and act.point.block_size is None
        and weight.point.axis in (None, 0)
    )


class IntegerLinear(KernelOperands):
    """``linear(x, w, b)`` as an int8 kernel computes it, where both quantizers are on and
    calibrated; the float linear otherwise (observing, a quantizer off, masks passing)."""

    def __init__(self, act: ActivationQuantizer, weight: WeightQuantizer) -> None:
        super().__init__(act, weight)
        # (weight, its scale), their versions, codes, scale per channel; the tensors are
        # held, so a freed one's address cannot match a new weight (QAT makes one per step)
        self._codes: (
            tuple[tuple[torch.Tensor, ...], tuple[int, ...], torch.Tensor, torch.Tensor] | None
        ) = None

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self._applies(x, w):
            return F.linear(x, w, b)
        y = self._integer(x, w, b)
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            float_y = F.linear(x, w, b)  # its gradient, the integer value (f - f is 0)
            return y + (float_y - float_y.detach())
        return y

    def _x_scale(self) -> torch.Tensor | None:
        """The input's scale: calibrated, or a dynamic precision's for this call."""
        scale = self.act.call_scale if self.act.qtype.dynamic else self.act.scale
        return scale if scale is not None and scale.numel() == 1 else None

    def _applies(self, x: torch.Tensor, w: torch.Tensor) -> bool:
        act, weight = self.act, self.weight
        return (
            act.enabled
            and weight.enabled
            and not act.observing
            and not act.mask_passthrough
            and self._x_scale() is not None
            and weight.scale is not None
            and x.dtype == torch.float32
            and w.dtype == torch.float32
            and w.ndim == 2
        )

    def _integer(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        x_scale = self._x_scale()
        assert x_scale is not None  # _applies checked it
        with torch.no_grad():
            w_codes, w_scale = self._weight_codes(w)
            s = x_scale.detach().reshape(()).float()
            x_codes = torch.round(x / s)
            y = F.linear(x_codes, w_codes).mul_(s * w_scale)
            return y if b is None else y.add_(b)

    def _weight_codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight's integer codes and its scale per output channel, kept until the
        weight or its scale changes (the input's scale is multiplied in per call: a
        dynamic one changes with every input)."""
        w_scale = self.weight.scale
        assert w_scale is not None
        per_channel = w_scale.detach().float().reshape(-1)
        if w.requires_grad:  # a new weight every call (QAT, or a forward with gradients
            # on): nothing to reuse, and a kept non-leaf tensor would stop the Sim's deepcopy
            return torch.round(w.detach() / per_channel.reshape(-1, 1)), per_channel
        tensors = (w, w_scale)
        versions = tuple(t._version for t in tensors)
        cached = self._codes
        if (
            cached is None
            or any(a is not b for a, b in zip(cached[0], tensors, strict=True))
            or cached[1] != versions
        ):
            codes = torch.round(w.detach() / per_channel.reshape(-1, 1))
            cached = self._codes = (tensors, versions, codes, per_channel)
        return cached[2], cached[3]
