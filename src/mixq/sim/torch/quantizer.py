"""Quantizer modules the Sim inserts at each quantization point.

A quantizer consumes a range (from an observer, a fixed range, or the weight itself) and
fake-quantizes; observing is a separate mode the calibration switches on and off.

Example:
    >>> import torch
    >>> from mixq.plan.points import QuantPoint
    >>> q = ActivationQuantizer(QuantPoint("x", "activation", "x", "int8"))
    >>> q.set_range(-1.0, 1.0)
    >>> q(torch.tensor([0.5004])).item() == q(torch.tensor([0.5])).item()
    True
    >>> q.mask_passthrough = True  # what calibration sets when it sees attention masks
    >>> q(torch.tensor([-5.0, float("-inf")])).tolist()  # clamped; a mask passes
    [-0.9960784912109375, -inf]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixq.core import primitives as P
from mixq.core.errors import CalibrationError
from mixq.observers.base import MASK_MAGNITUDE
from mixq.plan.points import QuantPoint
from mixq.sim.quantizer import ActivationBase, QuantizerBase, WeightBase

__all__ = ["ActivationQuantizer", "Quantizer", "WeightQuantizer"]


class Quantizer(nn.Module, QuantizerBase):
    """Base: `mixq.sim.quantizer.QuantizerBase` as an ``nn.Module``, scale / zero point
    buffers (saved with the state dict)."""

    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    reports_observed_range = True

    def __init__(self, point: QuantPoint) -> None:
        nn.Module.__init__(self)
        QuantizerBase.__init__(self, point)
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)

    def _apply_qparams(
        self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
    ) -> torch.Tensor:
        return P.fake_quantize(
            x, scale, zero_point, self.qtype, self.point.axis, self.point.block_size
        )

    def extra_repr(self) -> str:
        return self.describe()


class ActivationQuantizer(Quantizer, ActivationBase):
    """Fake-quantizes an activation tensor with a range from calibration or a fixed range
    (the range path is `mixq.sim.quantizer.ActivationBase`)."""

    def __init__(self, point: QuantPoint, observer: str = "minmax") -> None:
        Quantizer.__init__(self, point)
        self.init_range(observer)
        self._fast_key: tuple[Any, ...] | None = None
        self._fast_args: tuple[torch.Tensor, float, float] | None = None
        self.call_scale: torch.Tensor | None = None  # a dynamic precision's, last call

    def store_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Keep a new scale / zero point; a learnable scale stays the same Parameter."""
        if isinstance(self.scale, nn.Parameter):
            self.scale.data = scale.to(self.scale.device)
        else:
            self.scale = scale
        self.zero_point = zero_point

    def set_learnable(self, learnable: bool = True) -> None:
        """Make the scale a trainable parameter (LSQ-style QAT) or a fixed buffer again."""
        if self.scale is None:
            raise CalibrationError(f"quantizer {self.name!r} has no scale yet: calibrate first")
        value = self.scale.detach().clone()
        del self.scale
        if learnable:
            self.scale = nn.Parameter(value)
        else:
            self.register_buffer("scale", value)

    def _inference_args(self, x: torch.Tensor) -> tuple[torch.Tensor, float, float] | None:
        """(scale, lo, hi) for the no-grad per-tensor fast path, or None where it does not
        apply. Cached against the buffers' identity and version, so an in-place update
        (``load_state_dict``) or a new scale is seen; a learnable scale never takes it."""
        scale, zp = self._buffers.get("scale"), self._buffers.get("zero_point")
        if scale is None or zp is None or scale.numel() != 1 or zp.numel() != 1:
            return None
        if x.dtype != torch.float32 or (torch.is_grad_enabled() and x.requires_grad):
            return None
        old = self._fast_key  # holds the tensors themselves, so no id is reused under it
        if (
            old is None
            or old[0] is not scale
            or old[1] != scale._version
            or old[2] is not zp
            or old[3] != zp._version
            or old[4] != x.device
        ):
            key = (scale, scale._version, zp, zp._version, x.device)
            s = scale.detach().to(device=x.device, dtype=torch.float32).reshape(())
            z = float(zp)
            self._fast_args = (s, self.qtype.qmin - z, self.qtype.qmax - z)
            self._fast_key = key
        return self._fast_args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.observing:
            self.observe(x)
            return x
        y = self._quantized(x)
        if self.mask_passthrough:
            # mask values clamped to the range's low end would let softmax leak probability
            # onto padded keys; they pass as they are (see mixq.sim.quantizer)
            return torch.where(x.abs() >= MASK_MAGNITUDE, x, y)
        return y

    def _quantized(self, x: torch.Tensor) -> torch.Tensor:
        if self.qtype.dynamic:
            return self._dynamic(x)
        fast = self._inference_args(x) if not self.qtype.is_floating_point else None
        if fast is not None:
            # exactly fake_quantize's no-grad per-tensor path, without its per-call set-up
            s, lo, hi = fast
            return torch.div(x, s).round_().clamp_(lo, hi).mul_(s)
        if self.qtype.is_floating_point:
            return P.cast(_saturate_masks(x, self.qtype.name), self.qtype).to(x.dtype)
        if self.scale is None or self.zero_point is None:
            raise CalibrationError(
                f"quantizer {self.name!r} has no range yet: call "
                "sim.calibrate(batches) first, or disable it"
            )
        return self._apply_qparams(x, self.scale, self.zero_point)

    def _dynamic(self, x: torch.Tensor) -> torch.Tensor:
        """A dynamic precision: scale and zero point from this call's ``x`` (see
        `mixq.core.primitives.dynamic_qparams`), kept as ``call_scale`` for the integer
        linear that reads the result (the Sim runs them one after the other)."""
        scale, zero_point = P.dynamic_qparams(x)
        if not bool(torch.isfinite(scale) & torch.isfinite(zero_point)):  # x's min / max are not
            raise CalibrationError(
                f"quantizer {self.name!r} ({self.qtype.name}) reads infinite values (an "
                "attention mask?), which a range chosen per call cannot hold (ONNX "
                "DynamicQuantizeLinear would give NaN); give it a static precision (uint8)"
            )
        self.call_scale = scale
        return P.fake_quantize(x, scale, zero_point, self.qtype)


class WeightQuantizer(Quantizer, WeightBase):
    """Fake-quantizes a weight from its own range (symmetric per-channel by default).

    When a batch-norm follows the op, the grid is chosen on the folded weight
    ``w * gamma / sqrt(var + eps)`` (what a compiler deploys) and the result is unfolded,
    so the batch-norm stays a live op (trainable in QAT) while the weight error is that of
    the folded weight.

    ``float_weight``: the float model's weight, where a weights transform (gptq, adaround)
    wrote rounded values into the Sim's (`mixq.transforms.weights.write_weight`); switched
    off, the quantizer gives it back, so a Sim with its quantizers off is the float model.
    """

    def __init__(self, point: QuantPoint, bn_eps: float | None = None, out_axis: int = 0) -> None:
        super().__init__(point)
        self.bn_eps = bn_eps
        self.out_axis = out_axis
        self._cache: tuple[tuple[Any, ...], torch.Tensor] | None = None
        self.sources: tuple[str | None, ...] = ()  # names of the weight (and batch-norm) tensors
        self.float_weight: torch.Tensor | None = None

    def fold_scale(
        self, w: torch.Tensor, bn_weight: torch.Tensor | None, bn_var: torch.Tensor | None
    ) -> torch.Tensor | None:
        if bn_var is None or self.bn_eps is None:
            return None
        s = torch.rsqrt(bn_var + self.bn_eps)
        if bn_weight is not None:
            s = s * bn_weight
        s = torch.where(s == 0, torch.ones_like(s), s)
        shape = [1] * w.ndim
        shape[self.out_axis] = -1
        return s.reshape(shape)

    def _quantize(self, w: torch.Tensor, fold: torch.Tensor | None) -> torch.Tensor:
        wf = w * fold if fold is not None else w
        with torch.no_grad():
            scale, zero_point = self.fit_weight(wf)
        out = self._apply_qparams(wf, scale, zero_point)
        return out / fold if fold is not None else out

    def _fake_quantize(
        self, w: torch.Tensor, bn_weight: torch.Tensor | None, bn_var: torch.Tensor | None
    ) -> torch.Tensor:
        if self.qtype.is_floating_point:
            return P.cast(w, self.qtype).to(w.dtype)
        return self._quantize(w, self.fold_scale(w, bn_weight, bn_var))

    def forward(
        self,
        w: torch.Tensor,
        bn_weight: torch.Tensor | None = None,
        bn_var: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.enabled:
            return w if self.float_weight is None else self.float_weight
        if torch.is_grad_enabled() and w.requires_grad:
            self._cache = None
            return self._fake_quantize(w, bn_weight, bn_var)
        # Weights rarely change between forwards: reuse the result until one of them does.
        key = tuple((t.data_ptr(), t._version) for t in (w, bn_weight, bn_var) if t is not None)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._fake_quantize(w, bn_weight, bn_var))
        return self._cache[1]


def _saturate_masks(x: torch.Tensor, precision: str) -> torch.Tensor:
    """Mask sentinels (``finfo(float32).min``, |x| >= MASK_MAGNITUDE) at a 16-bit float's
    largest finite value, as the export clamps the constants that make them: rounded to
    -inf instead, a row masked everywhere (DeBERTa's padded queries) would be softmax of
    nothing but -inf, NaN, where the float model gives a uniform row. Real overflow (a
    finite value beyond the type that is not a sentinel) still becomes inf."""
    if precision not in ("fp16", "bf16") or not x.is_floating_point():
        return x
    top = torch.finfo(torch.float16 if precision == "fp16" else torch.bfloat16).max
    sentinel = x.abs() >= MASK_MAGNITUDE
    return torch.where(sentinel & x.isfinite(), x.sign() * top, x)
