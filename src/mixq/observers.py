"""Observers: calibration statistics in, a quantization range out.

An observer accumulates statistics with ``update(x)`` over calibration batches and turns them
into ``(min_val, max_val)`` with ``compute_range()``; `mixq.primitives.choose_qparams` turns
that range into a scale and zero point. Observers take the target ``dtype`` and ``symmetric``
flag because the best range depends on the grid it will be quantized to.

``minmax`` and ``moving_average`` work per tensor or per channel (``axis``). The histogram
observers ``percentile``, ``mse``, ``kl`` (alias ``entropy``), ``sqnr`` and ``mix`` work per
tensor on one shared `HistogramObserver` histogram.

Example:
    >>> import torch
    >>> from mixq.observers import make_observer
    >>> obs = make_observer("minmax", dtype="int8")
    >>> obs.update(torch.tensor([-1.0, 0.5, 2.0]))
    >>> obs.compute_range()
    (tensor(-1.), tensor(2.))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.special import xlogy

from mixq import primitives as P
from mixq.qtypes import QType, qtype

__all__ = [
    "OBSERVERS",
    "HistogramObserver",
    "KLObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MixObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "SQNRObserver",
    "histogram_mse",
    "make_observer",
    "register_observer",
]

OBSERVERS: dict[str, type[Observer]] = {}
_ALIASES = {"entropy": "kl"}
_MIN_WIDTH = 1e-30  # a histogram of nothing but zeros still needs a width
_MIX_DEFAULT = ("minmax", "percentile", "mse", "kl")
Pair = tuple[torch.Tensor, torch.Tensor]
Range = tuple[float, float]


def register_observer(name: str) -> Callable[[type[Observer]], type[Observer]]:
    """Class decorator that makes an observer available to `make_observer` under ``name``.

    Example:
        >>> @register_observer("absmax")
        ... class AbsMaxObserver(MinMaxObserver):
        ...     def compute_range(self):
        ...         lo, hi = super().compute_range()
        ...         amax = torch.maximum(-lo, hi)
        ...         return -amax, amax
        >>> obs = make_observer("absmax")
        >>> obs.update(torch.tensor([-1.0, 3.0]))
        >>> obs.compute_range()
        (tensor(-3.), tensor(3.))
        >>> del OBSERVERS["absmax"]
    """

    def decorator(cls: type[Observer]) -> type[Observer]:
        if name in OBSERVERS:
            raise ValueError(f"observer {name!r} is already registered by {OBSERVERS[name]}")
        cls.name = name
        OBSERVERS[name] = cls
        return cls

    return decorator


def _canonical(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def make_observer(name: str, **kwargs: Any) -> Observer:
    """Build a registered observer by name (case-insensitive; ``entropy`` means ``kl``).

    Example:
        >>> obs = make_observer("percentile", dtype="uint8", percentile=99.9)
        >>> type(obs).__name__, obs.percentile
        ('PercentileObserver', 99.9)

    Raises:
        ValueError: the name is unknown (the message lists the valid names) or an option is.
    """
    key = _canonical(name)
    if key not in OBSERVERS:
        valid = ", ".join(sorted([*OBSERVERS, *_ALIASES]))
        raise ValueError(f"unknown observer {name!r}; valid observers are: {valid}")
    return OBSERVERS[key](**kwargs)


class Observer:
    """Base class: ``update`` accumulates statistics, ``compute_range`` reads them out.

    Subclasses implement ``_observe(x)`` (a detached, non-empty float32 batch), ``_range()``
    and ``_clear()``; this class skips empty batches and refuses a range before any data.
    Subclass options are keyword-only.

    Args:
        dtype: precision the range is chosen for (``"int8"``, a `QType`, ...).
        symmetric: whether the grid will be symmetric about zero.
        axis: channel axis for one range per channel, or None for one range per tensor.
        **options: observer-specific options; unknown ones raise ValueError.
    """

    name: ClassVar[str] = ""
    integer_only: ClassVar[bool] = False  # True where the method measures an integer grid

    def __init__(
        self,
        dtype: str | QType = "int8",
        symmetric: bool = False,
        axis: int | None = None,
        **options: Any,
    ) -> None:
        if options:
            raise ValueError(f"observer {self.name!r} got unknown options {sorted(options)}")
        self.dtype = qtype(dtype)
        if self.integer_only and self.dtype.is_floating_point:
            raise ValueError(
                f"observer {self.name!r} searches an integer grid and {self.dtype.name} is a "
                "float precision; use 'minmax' or 'percentile' for it"
            )
        self.symmetric = symmetric
        self.axis = axis
        self.reset()

    def update(self, x: torch.Tensor) -> None:
        """Accumulate statistics from one batch (finite values; empty batches are skipped)."""
        if x.numel() > 0:
            self._observe(x.detach().to(torch.float32))
            self._batches += 1

    def compute_range(self) -> Pair:
        """``(min_val, max_val)`` as float32: 0-d per tensor, 1-D over ``axis`` per channel."""
        if not self.has_data:
            raise ValueError(
                f"observer {self.name!r} has seen no data; call update(x) on calibration "
                "batches before compute_range()"
            )
        return self._range()

    def reset(self) -> None:
        """Forget everything observed so far."""
        self._batches = 0
        self._clear()

    @property
    def has_data(self) -> bool:
        return self._batches > 0

    def _observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _range(self) -> Pair:
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError


def _aminmax(x: torch.Tensor, axis: int | None) -> Pair:
    if axis is None:
        lo, hi = torch.aminmax(x)
        return lo, hi
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor of shape {tuple(x.shape)}")
    lo, hi = torch.aminmax(x.movedim(axis, 0).reshape(x.shape[axis], -1), dim=1)
    return lo, hi


@register_observer("minmax")
class MinMaxObserver(Observer):
    """Running minimum and maximum, per tensor or per channel along ``axis``."""

    def _clear(self) -> None:
        self.running: Pair | None = None

    def _observe(self, x: torch.Tensor) -> None:
        new = _aminmax(x, self.axis)
        if self.running is None:
            self.running = new
        elif new[0].shape != self.running[0].shape:
            raise ValueError(
                f"axis {self.axis} had {self.running[0].numel()} channels in earlier batches "
                f"and has {new[0].numel()} in a batch of shape {tuple(x.shape)}"
            )
        else:
            self.running = self._merge(self.running, new)

    def _merge(self, old: Pair, new: Pair) -> Pair:
        return torch.minimum(old[0], new[0]), torch.maximum(old[1], new[1])

    def _range(self) -> Pair:
        assert self.running is not None  # has_data guarantees it
        return self.running[0].clone(), self.running[1].clone()


@register_observer("moving_average")
class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min / max; the first batch initialises it.

    ``averaging_constant`` (default 0.01, as PyTorch's MovingAverageMinMaxObserver) weighs
    the newest batch: ``min_val += c * (batch_min - min_val)``.
    """

    def __init__(self, *args: Any, averaging_constant: float = 0.01, **kwargs: Any) -> None:
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant
        super().__init__(*args, **kwargs)

    def _merge(self, old: Pair, new: Pair) -> Pair:
        c = self.averaging_constant
        return old[0] + c * (new[0] - old[0]), old[1] + c * (new[1] - old[1])


def _numpy(hist: torch.Tensor) -> np.ndarray:
    return hist.detach().cpu().double().numpy()


def _cdf(hist: np.ndarray, lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    """Counts at or below ``x``, each bin's count spread evenly over its width."""
    edges = np.linspace(lo, hi, hist.size + 1)
    return np.interp(x, edges, np.concatenate([[0.0], np.cumsum(hist)]))


def _rebin(hist: torch.Tensor, lo: float, hi: float, new_lo: float, new_hi: float) -> torch.Tensor:
    """The histogram over ``[lo, hi]`` re-binned onto ``[new_lo, new_hi]`` (which covers it)."""
    new_edges = np.linspace(new_lo, new_hi, hist.numel() + 1)
    return torch.from_numpy(np.diff(_cdf(_numpy(hist), lo, hi, new_edges)))


def _grid(min_vals: Any, max_vals: Any, t: QType, symmetric: bool) -> tuple[np.ndarray, ...]:
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
    h = _numpy(hist)
    width, filled = (hi - lo) / h.size, np.flatnonzero(h)  # empty bins cost nothing
    left, grid = lo + filled * width, _grid(min_vals, max_vals, qtype(dtype), symmetric)
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
        h = _numpy(hist)
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


def _fold(hist: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Histogram of ``|x|`` over ``[0, max|x|]``, with as many bins as ``hist``."""
    t = np.linspace(0.0, max(-lo, hi), hist.size + 1)
    return np.diff(_cdf(hist, lo, hi, t) - _cdf(hist, lo, hi, -t))


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
        folded = _fold(_numpy(hist), lo, hi)
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
        s, _, a, b = _grid(lows, highs, self.dtype, self.symmetric)
        h = _numpy(hist)
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
        self.candidates = tuple(_canonical(name) for name in candidates)
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
