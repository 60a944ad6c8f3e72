"""The state behind each quantizer of the ONNX Sim: switch, range, scale / zero point.

The ONNX graph holds the arithmetic (QuantizeLinear / DequantizeLinear or Cast); these
records hold what is fed to it. Observing is separate: `OnnxActivationQuantizer.observe`
takes calibration values, `stop_observing` turns them into a scale and zero point.

Example:
    >>> import numpy as np
    >>> from mixq.graph.points import QuantPoint
    >>> q = OnnxActivationQuantizer(QuantPoint("x", "activation", "x", "int8"))
    >>> q.start_observing()
    >>> q.observe(np.array([-1.0, 2.0], np.float32))
    >>> q.stop_observing()
    >>> enc = q.encoding()
    >>> round(enc.min, 4), round(enc.max, 4), enc.zero_point
    (-1.0, 2.0, [-43])
"""

from __future__ import annotations

import numpy as np
import torch

from mixq import primitives as P
from mixq.encodings import Encoding
from mixq.errors import CalibrationError
from mixq.graph.points import QuantPoint
from mixq.observers import Observer, PercentileObserver, make_observer
from mixq.qtypes import qtype

__all__ = ["OnnxActivationQuantizer", "OnnxQuantizer", "OnnxWeightQuantizer"]


class OnnxQuantizer:
    """Base: a point, its precision, an on/off switch and (integers) scale / zero point.

    Attributes:
        input_name / output_name: the ONNX values the quantizer reads and writes.
        enabled_input: the bool graph input that switches it (fed at every run).
    """

    def __init__(self, point: QuantPoint) -> None:
        self.point = point
        self.qtype = qtype(point.precision)
        self.enabled = True
        self.scale: torch.Tensor | None = None
        self.zero_point: torch.Tensor | None = None
        self.input_name = ""
        self.output_name = ""
        self.enabled_input = ""

    @property
    def name(self) -> str:
        return self.point.name

    @property
    def has_qparams(self) -> bool:
        return self.qtype.is_floating_point or self.scale is not None

    def encoding(self) -> Encoding:
        """What the exports need: precision, scale / zero point and granularity."""
        p = self.point
        if self.qtype.is_floating_point:
            return Encoding(
                p.name, p.target, p.kind, self.qtype.name, symmetric=p.symmetric,
                readers=list(p.readers),
            )  # fmt: skip
        if self.scale is None or self.zero_point is None:
            raise CalibrationError(f"quantizer {self.name!r} has no scale yet: calibrate first")
        scale, zp = self.scale.double(), self.zero_point.double()
        return Encoding(
            p.name,
            p.target,
            p.kind,
            self.qtype.name,
            scale=scale.flatten().tolist(),
            zero_point=[int(z) for z in zp.flatten().tolist()],
            axis=p.axis,
            block_size=p.block_size,
            symmetric=p.symmetric,
            min=float(((self.qtype.qmin - zp) * scale).min()),
            max=float(((self.qtype.qmax - zp) * scale).max()),
            readers=list(p.readers),
        )

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"{type(self).__name__}({self.name!r}, {self.qtype.name}, {state})"


class OnnxActivationQuantizer(OnnxQuantizer):
    """An activation quantizer: its scale / zero point are graph inputs fed at run time."""

    def __init__(self, point: QuantPoint, observer: str = "minmax") -> None:
        super().__init__(point)
        self.observer_name = observer
        self.observer: Observer | None = None
        self.fixed_range: tuple[float, float] | None = None
        self.range: tuple[float, float] | None = None  # what the scale was chosen from
        self.histogram: list[float] | None = None  # kept for profiles when asked
        self._histogram: PercentileObserver | None = None
        self.scale_input = ""
        self.zero_point_input = ""

    def start_observing(self, observer: str | None = None, histogram_bins: int = 0) -> None:
        """Watch calibration values; with ``histogram_bins``, keep a histogram too."""
        self.observer_name = observer or self.observer_name
        if not self.qtype.is_floating_point:
            # A fixed range is kept, but the data is still watched to check it covers it.
            name = "minmax" if self.fixed_range is not None else self.observer_name
            self.observer = make_observer(name, dtype=self.qtype, symmetric=self.point.symmetric)
            if histogram_bins:
                self._histogram = PercentileObserver(dtype=self.qtype, bins=histogram_bins)

    def cancel_observing(self) -> None:
        self.observer, self._histogram = None, None

    def observe(self, x: np.ndarray) -> None:
        """One calibration value of the tensor; NaN / Inf raise `CalibrationError`."""
        if not np.isfinite(x).all():
            bad = "NaN" if np.isnan(x).any() else "Inf"
            raise CalibrationError(
                f"calibration tensor {self.point.target!r} (quantizer {self.name!r}) holds "
                f"{bad}; check the calibration data and the float model on it"
            )
        value = torch.from_numpy(np.asarray(x, np.float32))
        if self.observer is not None:
            self.observer.update(value)
        if self._histogram is not None:
            self._histogram.update(value)

    def stop_observing(self) -> str | None:
        """Turn the statistics into a scale and zero point; a note if a fixed range is short."""
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
        self.fixed_range = (float(lo), float(hi))
        if not self.qtype.is_floating_point:
            self._set_qparams(torch.tensor(float(lo)), torch.tensor(float(hi)))

    def load_range(self, lo: float, hi: float) -> None:
        """Set the scale from a known range (a profile, a search's cache) without fixing it."""
        self._set_qparams(torch.tensor(float(lo)), torch.tensor(float(hi)))

    def _set_qparams(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.range = (float(lo), float(hi))
        self.scale, self.zero_point = P.choose_qparams(
            lo, hi, self.qtype, self.point.symmetric, reciprocal=self.point.reciprocal_scale
        )

    def feeds(self) -> dict[str, np.ndarray]:
        """Scale and zero point as fed to the graph (placeholders before calibration)."""
        if self.qtype.is_floating_point:
            return {}
        scale = self.scale if self.scale is not None else torch.tensor(1.0)
        zp = self.zero_point if self.zero_point is not None else torch.tensor(0.0)
        return {
            self.scale_input: np.asarray(scale.numpy(), np.float32),
            self.zero_point_input: np.asarray(zp.numpy(), np.int32),
        }


class OnnxWeightQuantizer(OnnxQuantizer):
    """A weight quantizer: min-max ranges from the weight itself, computed once at build.

    When a batch-norm follows the op, the grid is chosen on the folded weight
    ``w * gamma / sqrt(var + eps)`` (what a compiler deploys) and the graph divides the
    dequantized weight by the same factor, as the torch Sim does.
    """

    def quantize(self, w: torch.Tensor, fold: torch.Tensor | None = None) -> torch.Tensor:
        """Choose scale / zero point for ``w`` (times ``fold``); return its integer values."""
        wf = w * fold if fold is not None else w
        lo, hi = self._range(wf)
        self.scale, self.zero_point = P.choose_qparams(lo, hi, self.qtype, self.point.symmetric)
        return P.quantize(
            wf, self.scale, self.zero_point, self.qtype, self.point.axis, self.point.block_size
        )

    def _range(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
