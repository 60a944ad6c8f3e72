"""Error metrics between a reference (float) output and a quantized one.

Each metric is registered with its direction: for cosine and SQNR higher is better, for
MSE, L1, KL, atol and rtol lower is better. `per_sample` computes a metric for every row
of the batch dimension (bad-case search needs it).

Example:
    >>> import torch
    >>> ref = torch.tensor([1.0, 2.0, 3.0])
    >>> round(sqnr(ref, ref + 0.01), 1)
    46.7
    >>> METRICS["cosine"].higher_is_better, METRICS["l1"].higher_is_better
    (True, False)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

__all__ = [
    "METRICS",
    "Metric",
    "atol",
    "cosine",
    "float_leaves",
    "get_metric",
    "kl",
    "l1",
    "mse",
    "per_sample",
    "register_metric",
    "rtol",
    "sqnr",
]


def float_leaves(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a (nested) model output, in order."""
    return [
        t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]


def _pair(ref: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return ref.detach().double(), out.detach().double()


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum ref^2 / sum (ref - out)^2)``.

    Computed in float64; identical tensors give ``inf``.
    """
    r, o = _pair(ref, out)
    noise = (r - o).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(r.pow(2).sum() / noise))


def mse(ref: torch.Tensor, out: torch.Tensor) -> float:
    r, o = _pair(ref, out)
    return float((r - o).pow(2).mean())


def l1(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Mean absolute difference."""
    r, o = _pair(ref, out)
    return float((r - o).abs().mean())


def cosine(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors."""
    r, o = _pair(ref, out)
    return float(torch.nn.functional.cosine_similarity(r.flatten(), o.flatten(), dim=0))


def kl(ref: torch.Tensor, out: torch.Tensor) -> float:
    """KL(softmax(ref) || softmax(out)) over dim 1 (rank > 2) or the last dim, float64."""
    r, o = _pair(ref, out)
    dim = 1 if r.ndim > 2 else -1
    p_log, q_log = torch.log_softmax(r, dim), torch.log_softmax(o, dim)
    return float((p_log.exp() * (p_log - q_log)).sum(dim).mean())


def atol(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Largest absolute difference."""
    r, o = _pair(ref, out)
    return float((r - o).abs().max()) if r.numel() else 0.0


def rtol(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's magnitude."""
    r, o = _pair(ref, out)
    if not r.numel():
        return 0.0
    return float(((r - o).abs() / r.abs().clamp_min(1e-12)).max())


@dataclass(frozen=True)
class Metric:
    """A metric function and its direction (which way is worse)."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], float]
    higher_is_better: bool

    def __call__(self, ref: torch.Tensor, out: torch.Tensor) -> float:
        return self.fn(ref, out)

    def worse(self, a: float, b: float) -> bool:
        """True if ``a`` is worse than ``b`` (NaN counts as worst)."""
        if a != a:  # NaN
            return b == b
        return a < b if self.higher_is_better else a > b

    @property
    def worst_value(self) -> float:
        return float("-inf") if not self.higher_is_better else float("inf")


METRICS: dict[str, Metric] = {}


def register_metric(
    name: str, fn: Callable[[torch.Tensor, torch.Tensor], float], higher_is_better: bool
) -> Metric:
    """Add a custom metric; ``higher_is_better`` says its order.

    Example:
        >>> m = register_metric("max_ratio", lambda r, o: float((o / r).max()), False)
        >>> get_metric("max_ratio") is m
        True
        >>> del METRICS["max_ratio"]
    """
    metric = Metric(name, fn, higher_is_better)
    METRICS[name] = metric
    return metric


for _name, _fn, _hib in [
    ("cosine", cosine, True),
    ("sqnr", sqnr, True),
    ("mse", mse, False),
    ("l1", l1, False),
    ("kl", kl, False),
    ("atol", atol, False),
    ("rtol", rtol, False),
]:
    register_metric(_name, _fn, _hib)


def get_metric(name: str | Metric) -> Metric:
    """A registered metric by (case-insensitive) name."""
    if isinstance(name, Metric):
        return name
    key = name.lower()
    if key not in METRICS:
        raise ValueError(
            f"unknown metric {name!r}; valid metrics are: {', '.join(METRICS)}; "
            "register others with mixq.analysis.metrics.register_metric"
        )
    return METRICS[key]


def per_sample(metric: Metric, ref: torch.Tensor, out: torch.Tensor) -> list[float]:
    """The metric of every row along dim 0 (a 0-d tensor counts as one sample)."""
    if ref.ndim == 0:
        return [metric(ref, out)]
    return [metric(ref[i], out[i]) for i in range(ref.shape[0])]
