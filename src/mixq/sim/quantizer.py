"""The range path both Sims share: a quantizer's switch, its scale / zero point, how
calibration turns observed values into them, fixed and loaded ranges, and its `Encoding`.

The torch quantizers (`mixq.sim.torch.quantizer`) are ``nn.Module`` s that fake-quantize;
the ONNX ones (`mixq.sim.onnx.quantizer`) are records fed to an ONNX graph. Both take
everything about ranges from here, so the two backends choose the same scale from the same
data.

Example:
    >>> import torch
    >>> from mixq.plan.points import QuantPoint
    >>> q = ActivationBase(QuantPoint("x", "activation", "x", "int8"))
    >>> q.start_observing()
    >>> q.observe(torch.tensor([-1.0, 2.0]))
    >>> q.stop_observing()
    >>> q.range, q.encoding().zero_point
    ((-1.0, 2.0), [-43])

A quantizer whose calibration saw attention-mask values (``|x| >= MASK_MAGNITUDE``: -inf,
``finfo.min``) gets ``mask_passthrough``: its backend leaves those values as they are
instead of clamping them to the range's low end, which would let softmax leak probability
onto padded keys. Other quantizers pay nothing.

    >>> q.start_observing()
    >>> q.observe(torch.tensor([-1.0, 2.0, torch.finfo(torch.float32).min]))
    >>> q.stop_observing()
    >>> q.range, q.mask_passthrough, q.encoding().mask_passthrough
    ((-1.0, 2.0), True, True)
"""

from __future__ import annotations

import torch

from mixq.core import primitives as P
from mixq.core.errors import CalibrationError
from mixq.core.qtypes import qtype
from mixq.observers import Observer, PercentileObserver, make_observer
from mixq.observers.base import MASK_MAGNITUDE
from mixq.plan.encodings import Encoding
from mixq.plan.points import QuantPoint

__all__ = ["ActivationBase", "QuantizerBase", "WeightBase", "weight_range"]


class QuantizerBase:
    """A point, its precision, an on/off switch and (integers) scale / zero point.

    ``reports_observed_range``: whether `encoding` gives the range the scale was chosen
    from (the torch Sim) or the ends of the integer grid (the ONNX Sim); each keeps what
    its exports have always written. ``mask_passthrough``: values with ``|x| >=
    MASK_MAGNITUDE`` pass unquantized (set by an activation's calibration, see the module).
    """

    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    reports_observed_range = False
    mask_passthrough = False

    def __init__(self, point: QuantPoint) -> None:
        self.point = point
        self.qtype = qtype(point.precision)
        self.enabled = True

    @property
    def name(self) -> str:
        return self.point.name

    @property
    def has_qparams(self) -> bool:
        return not self.qtype.calibrated or self.scale is not None

    def describe(self) -> str:
        """Name, precision and switch, as the reprs show them: ``'fc', int8, on``."""
        state = "on" if self.enabled else "off"
        return f"{self.name!r}, {self.qtype.name}, {state}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def store_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Keep a new scale / zero point (the torch Sim keeps a learnable scale a Parameter)."""
        self.scale, self.zero_point = scale, zero_point

    def encoding(self) -> Encoding:
        """What the exports need: precision, scale / zero point and granularity."""
        p = self.point
        if not self.qtype.calibrated:  # a float precision, or a dynamic one (no fixed scale)
            return Encoding(
                p.name, p.target, p.kind, self.qtype.name, symmetric=p.symmetric,
                readers=list(p.readers),
            )  # fmt: skip
        if self.scale is None or self.zero_point is None:
            raise CalibrationError(f"quantizer {self.name!r} has no scale yet: calibrate first")
        scale, zp = self.scale.detach().double(), self.zero_point.double()
        lo, hi = self._encoded_range(scale, zp)
        return Encoding(
            p.name, p.target, p.kind, self.qtype.name,
            scale=scale.flatten().tolist(), zero_point=[int(z) for z in zp.flatten().tolist()],
            axis=p.axis, block_size=p.block_size, symmetric=p.symmetric, min=lo, max=hi,
            readers=list(p.readers), mask_passthrough=self.mask_passthrough,
        )  # fmt: skip

    def _encoded_range(self, scale: torch.Tensor, zp: torch.Tensor) -> tuple[float, float]:
        known = getattr(self, "range", None) if self.reports_observed_range else None
        if known is not None:
            return float(known[0]), float(known[1])
        lo = (self.qtype.qmin - zp) * scale
        hi = (self.qtype.qmax - zp) * scale
        return float(lo.min()), float(hi.max())


class ActivationBase(QuantizerBase):
    """An activation's range: observed during calibration, fixed, or loaded.

    A fixed range wins over calibration, which still watches the data (min-max) to say
    when the fixed range does not cover it.
    """

    def __init__(self, point: QuantPoint, observer: str = "minmax") -> None:
        QuantizerBase.__init__(self, point)
        self.init_range(observer)

    def init_range(self, observer: str) -> None:
        """The range state of a new quantizer (``observer`` names the default observer)."""
        self.observer_name = observer
        self.observer: Observer | None = None
        self.observing = False
        self.fixed_range: tuple[float, float] | None = None
        self.range: tuple[float, float] | None = None  # what the scale was chosen from
        self.histogram: list[float] | None = None  # kept for profiles when asked
        self.histogram_observer: PercentileObserver | None = None
        self.mask_passthrough = False
        self._saw_masks = False  # during calibration; mask_passthrough when it ends

    def start_observing(self, observer: str | None = None, histogram_bins: int = 0) -> None:
        """Watch calibration values; with ``histogram_bins``, keep a histogram too."""
        self.observer_name = observer or self.observer_name
        self.observing, self._saw_masks = True, False
        if self.qtype.calibrated:
            name = "minmax" if self.fixed_range is not None else self.observer_name
            self.observer = make_observer(name, dtype=self.qtype, symmetric=self.point.symmetric)
            if histogram_bins:
                self.histogram_observer = PercentileObserver(dtype=self.qtype, bins=histogram_bins)

    def cancel_observing(self) -> None:
        """Stop watching and drop what was seen (a failed or empty calibration)."""
        self.observing, self.observer, self.histogram_observer = False, None, None

    def observe(self, x: torch.Tensor) -> None:
        """One calibration value of the tensor.

        -inf inside the model is data: masked attention scores (``masked_fill(-inf)``, or a
        mask add of ``finfo.min``), which the observers leave out of the range and the
        quantizer then passes through (``mask_passthrough``). NaN anywhere, +inf anywhere
        (an overflow) and any inf in a model input raise `CalibrationError`.
        """
        from_input = self.point.op is None
        bad = "NaN" if torch.isnan(x).any() else None
        if bad is None and (torch.isposinf(x).any() or (from_input and torch.isinf(x).any())):
            bad = "Inf"
        if bad is not None:
            where = "a model input" if from_input else "the float model (an overflow?)"
            raise CalibrationError(
                f"calibration tensor {self.point.target!r} (quantizer {self.name!r}) holds "
                f"{bad}; check the calibration data and {where} on it"
            )
        if self.observer is not None and not self._saw_masks:
            self._saw_masks = bool((x.detach().abs() >= MASK_MAGNITUDE).any())
        for observer in (self.observer, self.histogram_observer):
            if observer is not None:
                observer.update(x.detach())

    def stop_observing(self) -> str | None:
        """Turn the statistics into a scale and zero point.

        Returns:
            For a fixed range that does not cover the calibrated one, a note saying so.
        """
        observer, histogram = self.observer, self.histogram_observer
        self.cancel_observing()
        if histogram is not None and histogram.has_data:
            self.histogram = [float(v) for v in histogram.hist.tolist()]
        if observer is None:
            return None
        if not observer.has_data:
            raise CalibrationError(
                f"quantizer {self.name!r} saw no data during calibration: "
                "the calibration batches never reached this tensor"
            )
        lo, hi = observer.compute_range()
        self.mask_passthrough = self._saw_masks
        if self.fixed_range is not None:
            return self._coverage_note(float(lo), float(hi))
        self._set_qparams(torch.as_tensor(lo), torch.as_tensor(hi))
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
        """Fix the range (e.g. an input known to lie in [0, 200]); calibration keeps it."""
        if not lo <= hi:
            raise ValueError(f"fixed range of {self.name!r} must have lo <= hi, got [{lo}, {hi}]")
        if self.qtype.dynamic:
            raise ValueError(
                f"{self.name!r} is quantized dynamically ({self.qtype.name}): its range is "
                "the tensor's own on every call; drop the fixed range or give it a static "
                "precision (e.g. uint8)"
            )
        self.fixed_range = (float(lo), float(hi))
        if not self.qtype.is_floating_point:
            self._set_qparams(torch.tensor(float(lo)), torch.tensor(float(hi)))

    def load_range(self, lo: float, hi: float, mask_passthrough: bool | None = None) -> None:
        """Set the scale from a known range (a profile, a search's cache) without fixing it;
        ``mask_passthrough`` as calibration found it (None: unchanged). A dynamic
        quantizer has no range to load."""
        if self.qtype.dynamic:
            return
        self._set_qparams(torch.tensor(float(lo)), torch.tensor(float(hi)))
        if mask_passthrough is not None:
            self.mask_passthrough = mask_passthrough

    def _set_qparams(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.range = (float(lo), float(hi))
        self.store_qparams(
            *P.choose_qparams(
                lo, hi, self.qtype, self.point.symmetric, reciprocal=self.point.reciprocal_scale
            )
        )


class WeightBase(QuantizerBase):
    """A weight's range: min-max of the weight itself (per channel / block per the point)."""

    def fit_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose, keep and return scale / zero point for ``w`` (already multiplied by any
        folded factor)."""
        lo, hi = weight_range(w.detach(), self.point.axis, self.point.block_size)
        scale, zero_point = P.choose_qparams(lo, hi, self.qtype, self.point.symmetric)
        self.scale, self.zero_point = scale, zero_point
        return scale, zero_point


def weight_range(
    w: torch.Tensor, axis: int | None, block_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``w``: whole tensor (``axis`` None), per channel along ``axis``, or
    per block of ``block_size`` along ``axis`` (shapes that broadcast against ``w``).

    Example:
        >>> w = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
        >>> [t.tolist() for t in weight_range(w, 0, None)]
        [[-2.0, 3.0], [1.0, 4.0]]
    """
    if axis is None:
        return w.min(), w.max()
    if block_size is None:
        dims = [d for d in range(w.ndim) if d != axis % w.ndim]
        return w.amin(dim=dims), w.amax(dim=dims)
    chunks = torch.split(w, block_size, dim=axis)
    lo = torch.cat([c.amin(dim=axis, keepdim=True) for c in chunks], dim=axis)
    hi = torch.cat([c.amax(dim=axis, keepdim=True) for c in chunks], dim=axis)
    return lo, hi
