"""Observers that search the histogram: KL (entropy), SQNR and the per-tensor best-of `mix`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.special import xlogy

from mixq.observers.base import OBSERVERS, Range, canonical_name, register_observer
from mixq.observers.histogram import (
    HistogramObserver,
    as_numpy,
    histogram_cdf,
    histogram_grid,
    histogram_mse,
)

__all__ = ["KLObserver", "MixObserver", "SQNRObserver"]

_MIX_DEFAULT = ("minmax", "percentile", "mse", "kl")


def _fold(hist: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Histogram of ``|x|`` over ``[0, max|x|]``, with as many bins as ``hist``."""
    t = np.linspace(0.0, max(-lo, hi), hist.size + 1)
    return np.diff(histogram_cdf(hist, lo, hi, t) - histogram_cdf(hist, lo, hi, -t))


def _kl_divergences(hist: np.ndarray, levels: int) -> np.ndarray:
    """KL(P || Q) for keeping the first ``i`` bins, ``i = levels .. len(hist)`` (TensorRT).

    P: the kept bins, the outliers added to the last one. Q: the kept bins without the
    outliers, merged into ``levels`` groups of consecutive bins (bin ``j`` in group
    ``j * levels // i``), each group's count spread evenly over its non-empty bins. Outliers
    landing on an empty bin make KL infinite. Prefix sums make it O(candidates * levels).
    """
    total = hist.sum()
    kept = np.arange(levels, hist.size + 1)
    cum, filled, hlogh = (
        np.concatenate([[0.0], np.cumsum(v)]) for v in (hist, hist > 0, xlogy(hist, hist))
    )
    starts = (np.arange(levels + 1) * kept[:, None] + levels - 1) // levels
    totals, sizes = np.diff(cum[starts], axis=1), np.diff(filled[starts], axis=1)
    mean = totals / np.maximum(sizes, 1)  # Q on each non-empty bin of a group
    edge, before_edge, kept_mass = hist[kept - 1], cum[kept - 1], cum[kept]
    # the sum over kept bins before the edge of h * log((h / total) / (mean / kept_mass)):
    inner = hlogh[kept - 1] + xlogy(before_edge, kept_mass) - before_edge * np.log(total)
    inner += xlogy(edge, mean[:, -1]) - xlogy(totals, mean).sum(axis=1)
    p_edge = (edge + total - kept_mass) / total
    q_edge = np.divide(mean[:, -1], kept_mass, out=np.zeros_like(p_edge), where=edge > 0)
    return inner / total + xlogy(p_edge, p_edge) - xlogy(p_edge, q_edge)


@register_observer("kl")
class KLObserver(HistogramObserver):
    """TensorRT entropy calibration: the ``|x|`` threshold ``t`` minimising KL(P || Q).

    The search runs on the histogram of ``|x|`` and gives ``[-t, t]`` cut to the data. Q has
    as many levels as the grid has over ``[0, t]``: ``(qmax - qmin) // 2 + 1`` (128 for
    int8) if the data crosses zero or the grid is symmetric, else ``qmax - qmin + 1`` (256).
    The first bin is left out: every grid holds values that near zero almost exactly, and a
    spike there (ReLU's zeros) would outweigh the rest. With at least as many levels as bins
    (int16) the full range is returned.
    """

    integer_only = True

    def range_from_histogram(self, hist: torch.Tensor, lo: float, hi: float) -> Range:
        steps = self.dtype.qmax - self.dtype.qmin
        one_sided = lo >= 0 or hi <= 0
        levels = steps + 1 if one_sided and not self.symmetric else steps // 2 + 1
        folded = _fold(as_numpy(hist), lo, hi)
        folded[0] = 0.0
        if levels >= folded.size or not folded.any():
            return lo, hi
        kept = levels + int(np.argmin(_kl_divergences(folded, levels)))
        t = max(-lo, hi) * kept / folded.size
        return max(-t, lo), min(t, hi)


@register_observer("sqnr")
class SQNRObserver(HistogramObserver):
    """Grid search over (scale, offset) maximising SQNR, like AIMET's SQNR encoding analyzer.

    A grid's noise is ``scale**2 / 12`` per in-range value plus ``gamma`` (default 1) times
    the squared distance of out-of-range bin centres to the grid end; the signal is fixed,
    so the best SQNR is the least noise. Symmetric: ``candidates`` (default 100) ranges
    ``+-max|x| * i / n``. Asymmetric: ``candidates`` widths ``i / n`` of the range, each at
    ``offsets`` (default 21) positions spread over those that keep zero inside the range and
    the range inside the data.
    """

    integer_only = True

    def __init__(
        self,
        *args: Any,
        candidates: int = 100,
        offsets: int = 21,
        gamma: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if candidates < 1 or offsets < 1 or gamma < 0:
            raise ValueError(
                "sqnr needs candidates >= 1, offsets >= 1 and gamma >= 0; got "
                f"{candidates}, {offsets} and {gamma}"
            )
        self.candidates, self.offsets, self.gamma = candidates, offsets, gamma
        super().__init__(*args, **kwargs)

    def range_from_histogram(self, hist: torch.Tensor, lo: float, hi: float) -> Range:
        lows, highs = self._candidates(lo, hi)
        s, _, a, b = histogram_grid(lows, highs, self.dtype, self.symmetric)
        h = as_numpy(hist)
        filled = np.flatnonzero(h)  # empty bins add no noise
        centres = lo + (filled + 0.5) * (hi - lo) / h.size
        clip = (centres - np.clip(centres, a, b)) ** 2
        noise = np.where(clip > 0, self.gamma * clip, s**2 / 12) @ h[filled]
        best = int(np.argmin(noise))
        return float(lows[best]), float(highs[best])

    def _candidates(self, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
        frac = np.arange(1, self.candidates + 1) / self.candidates
        if self.symmetric:
            amax = max(-lo, hi) * frac
            return np.maximum(-amax, lo), np.minimum(amax, hi)
        width = (hi - lo) * frac[:, None]
        first, last = np.maximum(lo, -width), np.minimum(0.0, hi - width)
        lows = first + (last - first) * np.linspace(0.0, 1.0, self.offsets)
        return lows.ravel(), (lows + width).ravel()


@register_observer("mix")
class MixObserver(HistogramObserver):
    """Per tensor, the candidate method whose range has the lowest `histogram_mse`.

    All candidates (default ``("minmax", "percentile", "mse", "kl")``) read the one
    histogram; ``minmax`` is its full range, the others must be histogram observers. After
    `compute_range`, ``chosen`` names the winner and ``errors`` holds each candidate's MSE.
    """

    integer_only = True
    chosen: str | None
    errors: dict[str, float]

    def __init__(self, *args: Any, candidates: Sequence[str] = _MIX_DEFAULT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not candidates:
            raise ValueError("mix needs at least one candidate observer")
        self.candidates = tuple(canonical_name(name) for name in candidates)
        self._methods = [self._method(name) for name in self.candidates]

    def range_from_histogram(self, hist: torch.Tensor, lo: float, hi: float) -> Range:
        ranges = [method(hist, lo, hi) for method in self._methods]
        lows, highs = zip(*ranges, strict=True)
        err = histogram_mse(hist, lo, hi, lows, highs, self.dtype, self.symmetric)
        self.errors = dict(zip(self.candidates, err.tolist(), strict=True))
        best = int(torch.argmin(err))
        self.chosen = self.candidates[best]
        return ranges[best]

    def _method(self, name: str) -> Callable[[torch.Tensor, float, float], Range]:
        if name == "minmax":
            return lambda hist, lo, hi: (lo, hi)
        cls = OBSERVERS.get(name)
        if cls is None or not issubclass(cls, HistogramObserver) or cls is MixObserver:
            usable = [n for n, c in OBSERVERS.items() if issubclass(c, HistogramObserver)]
            raise ValueError(
                f"mix candidate {name!r} is not a histogram observer; use 'minmax' or one of: "
                + ", ".join(n for n in usable if n != "mix")
            )
        member = cls(dtype=self.dtype, symmetric=self.symmetric, bins=self.bins)
        return member.range_from_histogram

    def _clear(self) -> None:
        super()._clear()
        self.chosen = None
        self.errors = {}
