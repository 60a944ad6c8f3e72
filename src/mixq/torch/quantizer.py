"""Quantizer modules the Sim inserts at each quantization point.

A quantizer consumes a range (from an observer, a fixed range, or the weight itself) and
fake-quantizes; observing is a separate mode the calibration switches on and off.

Example:
    >>> import torch
    >>> from mixq.graph.points import QuantPoint
    >>> q = ActivationQuantizer(QuantPoint("x", "activation", "x", "int8"))
    >>> q.set_range(-1.0, 1.0)
    >>> q(torch.tensor([0.5004])).item() == q(torch.tensor([0.5])).item()
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixq import primitives as P
from mixq.encodings import Encoding
from mixq.errors import CalibrationError
from mixq.graph.points import QuantPoint
from mixq.observers import HistogramObserver, Observer, PercentileObserver, make_observer
from mixq.qtypes import qtype

__all__ = ["ActivationQuantizer", "Quantizer", "WeightQuantizer"]


class Quantizer(nn.Module):
    """Base: a point, its precision, an on/off switch and (for integers) scale / zero point."""

    scale: torch.Tensor | None
    zero_point: torch.Tensor | None

    def __init__(self, point: QuantPoint) -> None:
        super().__init__()
        self.point = point
        self.qtype = qtype(point.precision)
        self.enabled = True
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)

    @property
    def name(self) -> str:
        return self.point.name

    @property
    def has_qparams(self) -> bool:
        return self.qtype.is_floating_point or self.scale is not None

    def _apply_qparams(
        self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
    ) -> torch.Tensor:
        return P.fake_quantize(
            x, scale, zero_point, self.qtype, self.point.axis, self.point.block_size
        )

    def encoding(self) -> Encoding:
        """What the exports need: precision, scale / zero point and granularity."""
        p = self.point
        enc = (
            Encoding(
                p.name,
                p.target,
                p.kind,
                self.qtype.name,
                symmetric=p.symmetric,
                readers=list(p.readers),
            )
            if self.qtype.is_floating_point
            else None
        )
        if enc is not None:
            return enc
        if self.scale is None or self.zero_point is None:
            raise CalibrationError(f"quantizer {self.name!r} has no scale yet: calibrate first")
        scale = self.scale.detach().double().flatten().tolist()
        zero_point = [int(z) for z in self.zero_point.flatten().tolist()]
        lo = (self.qtype.qmin - self.zero_point.double()) * self.scale.detach().double()
        hi = (self.qtype.qmax - self.zero_point.double()) * self.scale.detach().double()
        known = getattr(self, "range", None)  # activations: the range the scale came from
        if known is not None:
            lo, hi = torch.tensor(known[0]), torch.tensor(known[1])
        return Encoding(
            p.name,
            p.target,
            p.kind,
            self.qtype.name,
            scale=scale,
            zero_point=zero_point,
            axis=p.axis,
            block_size=p.block_size,
            symmetric=p.symmetric,
            min=float(lo.min()),
            max=float(hi.max()),
            readers=list(p.readers),
        )

    def extra_repr(self) -> str:
        state = "on" if self.enabled else "off"
        return f"{self.name!r}, {self.qtype.name}, {state}"


class ActivationQuantizer(Quantizer):
    """Fake-quantizes an activation tensor with a range from calibration or a fixed range."""

    def __init__(self, point: QuantPoint, observer: str = "minmax") -> None:
        super().__init__(point)
        self.observer_name = observer
        self.observer: Observer | None = None
        self.observing = False
        self.fixed_range: tuple[float, float] | None = None
        self.range: tuple[float, float] | None = None  # what the scale was chosen from
        self.histogram: list[float] | None = None  # kept for profiles when asked
        self._histogram: HistogramObserver | None = None
        self._fast_key: tuple[Any, ...] | None = None
        self._fast_args: tuple[torch.Tensor, float, float] | None = None

    def start_observing(self, observer: str | None = None, histogram_bins: int = 0) -> None:
        self.observer_name = observer or self.observer_name
        self.observing = True
        if not self.qtype.is_floating_point:
            # A fixed range is kept, but the data is still watched to check it covers it.
            name = "minmax" if self.fixed_range is not None else self.observer_name
            self.observer = make_observer(name, dtype=self.qtype, symmetric=self.point.symmetric)
            if histogram_bins:
                self._histogram = PercentileObserver(dtype=self.qtype, bins=histogram_bins)

    def stop_observing(self) -> str | None:
        """Turn the statistics seen so far into a scale and zero point.

        Returns:
            For a fixed range that does not cover the calibrated one, a note saying so.
        """
        self.observing = False
        observer, self.observer = self.observer, None
        if self._histogram is not None and self._histogram.has_data:
            self.histogram = [float(v) for v in self._histogram.hist.tolist()]
        self._histogram = None
        if observer is None:
            return None
        if not observer.has_data:
            raise CalibrationError(
                f"quantizer {self.name!r} saw no data during calibration: "
                "the calibration batches never reached this tensor"
            )
        lo, hi = observer.compute_range()
        if self.fixed_range is not None:
            return self._coverage_note(float(lo), float(hi))
        self._set_qparams(lo, hi)
        return None

    def _coverage_note(self, lo: float, hi: float) -> str | None:
        assert self.scale is not None and self.zero_point is not None and self.fixed_range
        s, zp = float(self.scale), float(self.zero_point)
        grid_lo, grid_hi = (self.qtype.qmin - zp) * s, (self.qtype.qmax - zp) * s
        if lo >= grid_lo - s and hi <= grid_hi + s:
            return None
        return (
            f"fixed range [{self.fixed_range[0]:g}, {self.fixed_range[1]:g}] of {self.name!r} "
            f"does not cover the calibrated range [{lo:g}, {hi:g}]: values outside are "
            "clipped; widen the fixed range or remove it"
        )

    def set_range(self, lo: float, hi: float) -> None:
        """Fix the range (e.g. an input known to lie in [0, 200]); calibration skips it."""
        if not lo <= hi:
            raise ValueError(f"fixed range of {self.name!r} must have lo <= hi, got [{lo}, {hi}]")
        self.fixed_range = (float(lo), float(hi))
        if not self.qtype.is_floating_point:
            self._set_qparams(torch.tensor(float(lo)), torch.tensor(float(hi)))

    def load_range(self, lo: float, hi: float) -> None:
        """Set the scale from a known range (a loaded profile) without fixing it."""
        self._set_qparams(torch.tensor(float(lo)), torch.tensor(float(hi)))

    def _set_qparams(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.range = (float(lo), float(hi))
        scale, zero_point = P.choose_qparams(
            lo, hi, self.qtype, self.point.symmetric, reciprocal=self.point.reciprocal_scale
        )
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

    def _observe(self, x: torch.Tensor) -> None:
        if not torch.isfinite(x).all():
            bad = "NaN" if torch.isnan(x).any() else "Inf"
            raise CalibrationError(
                f"calibration tensor {self.point.target!r} (quantizer "
                f"{self.name!r}) holds {bad}; check the calibration data "
                "and the float model on it"
            )
        if self.observer is not None:
            self.observer.update(x.detach())
        if self._histogram is not None:
            self._histogram.update(x.detach())

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
            self._observe(x)
            return x
        fast = self._inference_args(x) if not self.qtype.is_floating_point else None
        if fast is not None:
            # exactly fake_quantize's no-grad per-tensor path, without its per-call set-up
            s, lo, hi = fast
            return torch.div(x, s).round_().clamp_(lo, hi).mul_(s)
        if self.qtype.is_floating_point:
            return P.cast(x, self.qtype).to(x.dtype)
        if self.scale is None or self.zero_point is None:
            raise CalibrationError(
                f"quantizer {self.name!r} has no range yet: call "
                "sim.calibrate(batches) first, or disable it"
            )
        return self._apply_qparams(x, self.scale, self.zero_point)


class WeightQuantizer(Quantizer):
    """Fake-quantizes a weight from its own range (symmetric per-channel by default).

    When a batch-norm follows the op, the grid is chosen on the folded weight
    ``w * gamma / sqrt(var + eps)`` (what a compiler deploys) and the result is unfolded,
    so the batch-norm stays a live op (trainable in QAT) while the weight error is that of
    the folded weight.
    """

    def __init__(self, point: QuantPoint, bn_eps: float | None = None, out_axis: int = 0) -> None:
        super().__init__(point)
        self.bn_eps = bn_eps
        self.out_axis = out_axis
        self._cache: tuple[tuple[Any, ...], torch.Tensor] | None = None
        self.sources: tuple[str | None, ...] = ()  # names of the weight (and batch-norm) tensors

    def _fold_scale(
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

    def _weight_range(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        axis, block = self.point.axis, self.point.block_size
        if axis is None:
            return w.min(), w.max()
        if block is None:
            dims = [d for d in range(w.ndim) if d != axis % w.ndim]
            return w.amin(dim=dims), w.amax(dim=dims)
        chunks = torch.split(w, block, dim=axis)
        lo = torch.cat([c.amin(dim=axis, keepdim=True) for c in chunks], dim=axis)
        hi = torch.cat([c.amax(dim=axis, keepdim=True) for c in chunks], dim=axis)
        return lo, hi

    def _quantize(self, w: torch.Tensor, fold: torch.Tensor | None) -> torch.Tensor:
        wf = w * fold if fold is not None else w
        with torch.no_grad():
            lo, hi = self._weight_range(wf.detach())
            self.scale, self.zero_point = P.choose_qparams(lo, hi, self.qtype, self.point.symmetric)
        out = self._apply_qparams(wf, self.scale, self.zero_point)
        return out / fold if fold is not None else out

    def _fake_quantize(
        self, w: torch.Tensor, bn_weight: torch.Tensor | None, bn_var: torch.Tensor | None
    ) -> torch.Tensor:
        if self.qtype.is_floating_point:
            return P.cast(w, self.qtype).to(w.dtype)
        return self._quantize(w, self._fold_scale(w, bn_weight, bn_var))

    def forward(
        self,
        w: torch.Tensor,
        bn_weight: torch.Tensor | None = None,
        bn_var: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self.enabled:
            return w
        if torch.is_grad_enabled() and w.requires_grad:
            self._cache = None
            return self._fake_quantize(w, bn_weight, bn_var)
        # Weights rarely change between forwards: reuse the result until one of them does.
        key = tuple((t.data_ptr(), t._version) for t in (w, bn_weight, bn_var) if t is not None)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._fake_quantize(w, bn_weight, bn_var))
        return self._cache[1]
