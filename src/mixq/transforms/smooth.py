"""Activation smoothing (SmoothQuant): move activation outliers into the following weights.

For each `ScalePair` whose consumers are linear layers, the input channels ``j`` of the
consumers get ``s_j = max|x_j|^alpha / max|w_j|^(1 - alpha)``: the activation becomes
``x / s`` (folded into the producer: a linear's rows and bias, a conv's batch-norm, a
LayerNorm's weight and bias) and the consumers' columns ``w * s``. No op is added there.

Where the producer cannot take the scale (post-LayerNorm transformers: every LayerNorm
output also feeds a residual add; a GELU before the FFN's second linear), ``branches=True``
(the default) puts ``x / s`` on the linears' side of the fork: one per-channel multiply
per linear, a ``Mul`` in the exported model (see `mixq.transforms.pairs.find_branches`).

``alpha`` is searched per pair on the calibration data: the candidate (or no smoothing at
all) with the lowest output error of the consumers, with activations fake-quantized per
tensor and weights per channel, wins. The error is measured two-fold on rows the scale and
the activation range were not fitted on: a static range fitted to smoothed calibration data
puts quiet channels at its edge, and data calibration did not see is then clipped. A pair
whose float outputs move by more than ``tolerance`` is undone (see
`mixq.transforms.pairs.verify_exact`).

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> with torch.no_grad():
    ...     model[0].weight[:2] *= 50  # two outlier channels
    >>> x = torch.randn(32, 8)
    >>> result = mixq.transforms.apply_transforms(model, x, ["smooth"])
    >>> bool(torch.allclose(result.model(x), model(x), rtol=1e-4, atol=1e-4))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixq.core import primitives as P
from mixq.transforms.base import TransformContext, TransformRecord, register_transform
from mixq.transforms.pairs import (
    ScalePair,
    find_branches,
    find_pairs,
    module_weight,
    verify_exact,
)
from mixq.transforms.stats import record_inputs, run_batches

__all__ = ["DEFAULT_ALPHAS", "smooth", "smoothing_scale"]

DEFAULT_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def smoothing_scale(absmax: torch.Tensor, wmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``max|x|^alpha / max|w|^(1 - alpha)`` per channel; 1 where either is zero."""
    s = absmax.clamp(min=1e-8).pow(alpha) / wmax.clamp(min=1e-8).pow(1 - alpha)
    keep = (absmax <= 0) | (wmax <= 0)
    return torch.where(keep, torch.ones_like(s), s).clamp(1e-5, 1e5)


def _fake_quant(
    x: torch.Tensor, precision: str, axis: int | None, fit: torch.Tensor | None = None
) -> torch.Tensor:
    """Per tensor (range from ``fit``, else from ``x``; what lies outside is clipped) or
    symmetric per row of ``x`` (``axis`` 0)."""
    if axis is None:
        ref = x if fit is None else fit
        scale, zero_point = P.choose_qparams(ref.min(), ref.max(), precision)
    else:
        amax = x.abs().amax(dim=1)
        scale, zero_point = P.choose_qparams(-amax, amax, precision, symmetric=True)
    return P.fake_quantize(x, scale, zero_point, precision, axis)


def _error(
    fit: torch.Tensor,
    held: torch.Tensor,
    weights: list[torch.Tensor],
    wmax: torch.Tensor,
    alpha: float | None,
    precision: str,
) -> float:
    """Relative output error of the consumers on the ``held`` rows, with the smoothing
    scale and the activation range taken from the ``fit`` rows alone (what a static range
    clips on data calibration did not see counts); ``alpha`` None: no smoothing."""
    if alpha is None:
        s = torch.ones_like(wmax)
    else:
        s = smoothing_scale(fit.abs().amax(dim=0), wmax, alpha)
    xq = _fake_quant(held / s, precision, None, fit=fit / s)
    noise = signal = 0.0
    for w in weights:
        ref = held @ w.T
        out = xq @ _fake_quant(w * s, precision, 0).T
        noise += float((out - ref).pow(2).sum())
        signal += float(ref.pow(2).sum())
    return noise / max(signal, 1e-30)


def _cross_error(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    wmax: torch.Tensor,
    alpha: float | None,
    precision: str,
) -> float:
    """`_error` two-fold: fitted on each half of the samples, measured on the other."""
    half = x.shape[0] // 2
    a, b = (t.reshape(-1, x.shape[-1]) for t in (x[:half], x[half:]))
    if half == 0:
        return _error(b, b, weights, wmax, alpha, precision)
    return 0.5 * (
        _error(a, b, weights, wmax, alpha, precision)
        + _error(b, a, weights, wmax, alpha, precision)
    )


def _candidates(pair: ScalePair, alpha: float | dict[str, Any] | None) -> list[float | None]:
    if alpha is None:
        return [None, *DEFAULT_ALPHAS]
    if isinstance(alpha, dict):
        return [alpha.get(pair.producer)]
    return [float(alpha)]


def _choose(
    x: torch.Tensor,
    absmax: torch.Tensor,
    weights: list[torch.Tensor],
    options: list[Any],
    dtype: str,
) -> tuple[float | None, torch.Tensor, float, float]:
    """(alpha, scale, error without smoothing, error with it); alpha None: leave it.

    The errors are measured on calibration rows the scale and range were not fitted on
    (`_cross_error`); the scale returned is fitted on all of them (``absmax``).
    """
    wmax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)
    base = _cross_error(x, weights, wmax, None, dtype)
    best: tuple[float | None, float] = (None, base)
    for a in options:
        if a is None:
            continue
        err = _cross_error(x, weights, wmax, a, dtype)
        if err < best[1] or options == [a]:
            best = (a, err)
    if best[0] is None:
        return None, torch.ones_like(absmax), base, base
    return best[0], smoothing_scale(absmax, wmax, best[0]), base, best[1]


def _pairs(
    ctx: TransformContext, record: TransformRecord, branches: bool, chosen: bool
) -> list[ScalePair]:
    """Folded pairs into linears, then (``branches``) the forks no producer can take a scale
    for, except where the target quantizes the forked tensor itself (full-integer placement:
    the multiply would read the quantized values and gain nothing); with alphas ``chosen``
    per pair (a saved plan's), those pairs are the ones to apply."""
    pairs = [
        p
        for p in find_pairs(ctx.graph, ctx.model)
        if all(isinstance(ctx.model.get_submodule(c), nn.Linear) for c in p.consumers)
    ]
    if not branches:
        return pairs
    forks = find_branches(ctx.graph, ctx.model, pairs)
    quantized = None if chosen else ctx.quantized_tensors()
    inside = [p for p in forks if quantized is not None and p.producer in quantized]
    if inside:
        record.notes.append(
            f"{len(inside)} fork(s) left unsmoothed: the target quantizes the tensor itself, "
            "so a multiply after it would read the quantized values"
        )
    return pairs + [p for p in forks if p not in inside]


@register_transform("smooth")
def smooth(
    ctx: TransformContext,
    alpha: float | dict[str, float] | None = None,
    precision: str = "int8",
    tolerance: float = 1e-4,
    rows: int = 2048,
    branches: bool = True,
) -> TransformRecord:
    """Smooth the inputs of every linear layer whose producer can take the scale exactly.

    Args:
        ctx: the float model, its graph and calibration batches.
        alpha: migration strength; None searches 0.3 ... 0.9 (and no smoothing) per pair, a
            float applies it everywhere, a dict producer op -> alpha applies those only.
        precision: the integer precision the search quantizes activations and weights to.
        tolerance: largest relative change of the float outputs a pair may cause.
        rows: calibration rows kept per layer for the search.
        branches: also smooth linears whose input no producer can take the scale for, with
            a per-channel multiply in front of each (False: folded pairs only, no op added).

    Returns:
        The record: per pair the alpha, the scale range, max |x| before / after and the
        consumers' quantized output error before / after; ``options["alpha"]`` holds the
        alphas chosen (a reload applies them without searching).
    """
    record = TransformRecord("smooth", {"alpha": {}})
    pairs = _pairs(ctx, record, branches, chosen=isinstance(alpha, dict))
    with record_inputs(ctx.model, [p.consumers[0] for p in pairs], keep=rows) as stats:
        run_batches(ctx.model, ctx.batches)
    added = declined = 0
    for pair in pairs:
        stat = stats[pair.consumers[0]]
        if stat.absmax is None:
            continue
        weights = [module_weight(ctx.model, c).detach() for c in pair.consumers]
        x = stat.samples()
        a, s, before, after = _choose(x, stat.absmax, weights, _candidates(pair, alpha), precision)
        if a is None:
            declined += alpha is None  # searched and declined (a saved plan's: not listed)
            continue
        change = verify_exact(ctx.model, pair, s, ctx.batches[:1], ctx.reference, tolerance)
        if change is None:
            record.notes.append(f"{pair.producer}: not exact in float, left unsmoothed")
            continue
        record.options["alpha"][pair.producer] = a
        added += len(pair.consumers) if pair.kind == "branch" else 0
        record.layers.append(
            {
                "layer": f"{pair.producer} -> {', '.join(pair.consumers)}",
                "folded": pair.kind != "branch",
                "alpha": a,
                "scale": [float(s.min()), float(s.max())],
                "max_abs_x": [float(stat.absmax.max()), float((stat.absmax / s).max())],
                "quant_error": [before, after],
                "float_change": change,
            }
        )
    if not pairs:
        record.notes.append("no linear layer whose input can take a scale")
    if declined:
        record.notes.append(
            f"{declined} pair(s) left unsmoothed: no alpha lowered the consumers' error on "
            "calibration rows the scale and range were not fitted on"
        )
    if added:
        record.notes.append(f"{added} per-channel multiplies added in front of linears")
    return record
