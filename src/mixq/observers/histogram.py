"""The shared histogram, its exact quantization-error integral, and the percentile and MSE
observers that read it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mixq.core import primitives as P
from mixq.core.qtypes import QType, qtype
from mixq.observers.base import Observer, Pair, Range, register_observer

__all__ = ["HistogramObserver", "MSEObserver", "PercentileObserver", "histogram_mse"]

_MIN_WIDTH = 1e-30  # a histogram of nothing but zeros still needs a width


def as_numpy(hist: torch.Tensor) -> np.ndarray:
    return hist.detach().cpu().double().numpy()


def histogram_cdf(hist: np.ndarray, lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    """Counts at or below ``x``, each bin's count spread evenly over its width."""
    edges = np.linspace(lo, hi, hist.size + 1)
    return np.interp(x, edges, np.concatenate([[0.0], np.cumsum(hist)]))


def _rebin(hist: torch.Tensor, lo: float, hi: float, new_lo: float, new_hi: float) -> torch.Tensor:
    """The histogram over ``[lo, hi]`` re-binned onto ``[new_lo, new_hi]`` (which covers it)."""
    new_edges = np.linspace(new_lo, new_hi, hist.numel() + 1)
    return torch.from_numpy(np.diff(histogram_cdf(as_numpy(hist), lo, hi, new_edges)))


def histogram_grid(
    min_vals: Any, max_vals: Any, t: QType, symmetric: bool
) -> tuple[np.ndarray, ...]:
    """Scale, zero point and the grid's two ends for each candidate range, as (K, 1) arrays."""
    lows, highs = torch.as_tensor(min_vals), torch.as_tensor(max_vals)
    scale, zero_point = P.choose_qparams(lows, highs, t, symmetric)
    s, z = scale.double().numpy()[:, None], zero_point.double().numpy()[:, None]
    return s, z, s * (t.qmin - z), s * (t.qmax - z)


def _error_integral(x: np.ndarray, s: Any, z: Any, a: Any, b: Any) -> np.ndarray:
    """Antiderivative of ``(fake_quantize(x) - x) ** 2`` on a grid with ends ``a``, ``b``."""
    below = (np.minimum(x, a) - a) ** 3 / 3
    above = (np.maximum(x, b) - b) ** 3 / 3
    u = np.clip(x, a, b) / s + z  # position on the grid, in steps
    k = np.floor(u + 0.5)
    r = u - k  # rounding error in steps; every whole step adds s**3 / 12
    return below + s**3 * (k / 12 + r**3 / 3 + 1 / 24) + above


def histogram_mse(
    hist: torch.Tensor,
    lo: float,
    hi: float,
    min_vals: Any,
    max_vals: Any,
    dtype: str | QType,
    symmetric: bool = False,
) -> torch.Tensor:
    """Mean squared `fake_quantize` error over a histogram, for each candidate range.

    Each candidate's grid comes from `choose_qparams`. Values are taken as spread evenly
    within their bin and the error is integrated exactly: clipped values cost their squared
    distance to the grid end, in-range ones their rounding error. (Quantizing only the bin
    centres aliases when the step is near the bin width and biases a search towards grids
    that happen to hit the centres.)

    Args:
        hist: counts of equal-width bins spanning ``[lo, hi]``.
        min_vals, max_vals: 1-D candidate ranges (tensors or arrays).

    Returns:
        float64 tensor, one mean squared error per candidate.

    Example:
        >>> hist = torch.ones(1000, dtype=torch.float64)  # uniform on [-1, 1]
        >>> err = histogram_mse(hist, -1.0, 1.0, [-1.0, -0.5], [1.0, 0.5], "int8", True)
        >>> bool(err[0] < err[1])  # clipping half the data costs more than rounding
        True
    """
    h = as_numpy(hist)
    width, filled = (hi - lo) / h.size, np.flatnonzero(h)  # empty bins cost nothing
    left, grid = lo + filled * width, histogram_grid(min_vals, max_vals, qtype(dtype), symmetric)
    per_bin = (_error_integral(left + width, *grid) - _error_integral(left, *grid)) / width
    return torch.from_numpy(per_bin @ h[filled] / h.sum())


class HistogramObserver(Observer):
    """Per-tensor histogram of ``bins`` (default 2048) equal bins over a range that grows.

    The range is ``[min(x_min, 0), max(x_max, 0)]``: every quantization grid contains zero
    (see `choose_qparams`), so the histogram does too. When a batch falls outside it, the
    range widens and the old counts are re-binned by overlap. Subclasses implement
    `range_from_histogram`; `compute_range` tightens its result to the data seen, which never
    changes the grid `choose_qparams` makes of it.
    """

    def __init__(self, *args: Any, bins: int = 2048, **kwargs: Any) -> None:
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        self.bins = bins
        super().__init__(*args, **kwargs)
        if self.axis is not None:
            raise ValueError(
                f"observer {self.name!r} is per tensor only; use 'minmax' or "
                "'moving_average' for per-channel ranges"
            )

    def range_from_histogram(self, hist: torch.Tensor, lo: float, hi: float) -> Range:
        """The range chosen from ``hist``: float64 counts of equal bins over ``[lo, hi]``."""
        raise NotImplementedError

    def _clear(self) -> None:
        self.hist = torch.zeros(self.bins, dtype=torch.float64)
        self.lo = self.hi = 0.0
        self.min_val, self.max_val = float("inf"), float("-inf")

    def _observe(self, x: torch.Tensor) -> None:
        x_min, x_max = (float(v) for v in torch.aminmax(x))
        self.min_val, self.max_val = min(self.min_val, x_min), max(self.max_val, x_max)
        lo = min(self.lo, x_min)
        hi = max(self.hi, x_max, lo + _MIN_WIDTH)
        if (lo, hi) != (self.lo, self.hi):
            self.hist = _rebin(self.hist, self.lo, self.hi, lo, hi)
            self.lo, self.hi = lo, hi
        self.hist += torch.histc(x, self.bins, self.lo, self.hi).cpu().double()

    def _range(self) -> Pair:
        lo, hi = self.range_from_histogram(self.hist, self.lo, self.hi)
        lo = min(max(lo, self.min_val), hi)
        hi = max(min(hi, self.max_val), lo)
        return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)


@register_observer("percentile")
class PercentileObserver(HistogramObserver):
    """Two-sided percentile range ``[(100 - p)%, p%]``, default ``percentile=99.99``.

    A side the data does not reach past zero keeps zero as its bound, so all-non-negative
    data gets its minimum as the lower bound.
    """

    def __init__(self, *args: Any, percentile: float = 99.99, **kwargs: Any) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile
        super().__init__(*args, **kwargs)

    def range_from_histogram(self, hist: torch.Tensor, lo: float, hi: float) -> Range:
        h = as_numpy(hist)
        edges = np.linspace(lo, hi, h.size + 1)
        fraction = np.concatenate([[0.0], np.cumsum(h)]) / h.sum()
        tail = (100.0 - self.percentile) / 100.0
        lower = lo if lo >= 0 else float(np.interp(tail, fraction, edges))
        upper = hi if hi <= 0 else float(np.interp(1.0 - tail, fraction, edges))
        return lower, upper


@register_observer("mse")
class MSEObserver(HistogramObserver):
    """The shrunk range with the lowest `histogram_mse`.

    Candidate ``i`` of ``candidates`` (default 100) scales both ends by ``i / candidates``.
    That suffices for symmetric grids (only ``max|x|`` matters); for asymmetric ones two more
    passes shrink each end alone with the other fixed, so an outlier on one side does not
    force clipping the other.
    """

    integer_only = True

    def __init__(self, *args: Any, candidates: int = 100, **kwargs: Any) -> None:
        if candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {candidates}")
        self.candidates = candidates
        super().__init__(*args, **kwargs)

    def range_from_histogram(self, hist: torch.Tensor, lo: float, hi: float) -> Range:
        frac = np.arange(1, self.candidates + 1) / self.candidates
        best = self._best(hist, lo, hi, lo * frac, hi * frac)
        if not self.symmetric:
            best = self._best(hist, lo, hi, lo * frac, np.full_like(frac, best[1]))
            best = self._best(hist, lo, hi, np.full_like(frac, best[0]), hi * frac)
        return best

    def _best(self, hist: torch.Tensor, lo: float, hi: float, lows: Any, highs: Any) -> Range:
        err = histogram_mse(hist, lo, hi, lows, highs, self.dtype, self.symmetric)
        i = int(torch.argmin(err))
        return float(lows[i]), float(highs[i])
