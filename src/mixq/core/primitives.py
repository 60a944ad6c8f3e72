"""Pure tensor functions with ONNX QuantizeLinear / DequantizeLinear semantics (opset 21).

``quantize``: ``q = saturate(round_half_to_even(x / scale) + zero_point)``;
``dequantize``: ``x = (q - zero_point) * scale``; both computed in float32 like ONNX Runtime.
The scale (and zero point) is a scalar (per tensor), a 1-D tensor with ``axis`` (per axis),
or a tensor of ``x``'s rank with ``block_size`` along ``axis`` (blocked).

Example:
    >>> import torch
    >>> from mixq import primitives as P
    >>> P.quantize(torch.tensor([0.5, 1.5, 300.0]), 1.0, 0, "int8")
    tensor([  0,   2, 127], dtype=torch.int8)
    >>> P.fake_quantize(torch.tensor([0.26]), 0.5, None, "int8")
    tensor([0.5000])
"""

from __future__ import annotations

import torch

from mixq.core.qtypes import QType, qtype

__all__ = [
    "cast",
    "choose_qparams",
    "dequantize",
    "dynamic_qparams",
    "fake_quantize",
    "quantize",
    "reciprocal_scale",
]

Scalar = float | int | torch.Tensor


def _broadcast(
    param: Scalar, x: torch.Tensor, axis: int | None, block_size: int | None
) -> torch.Tensor:
    """Shape a scale / zero point so it broadcasts against ``x``."""
    p = torch.as_tensor(param, device=x.device)
    if p.ndim == 0 or (p.numel() == 1 and axis is None):
        return p.reshape(())
    if axis is None:
        raise ValueError(f"a scale / zero point of shape {tuple(p.shape)} needs an axis")
    axis = axis % x.ndim
    if block_size is not None:
        return _expand_blocks(p, x, axis, block_size)
    if p.ndim != 1 or p.shape[0] != x.shape[axis]:
        raise ValueError(
            f"per-axis scale has shape {tuple(p.shape)}; expected "
            f"({x.shape[axis]},) for axis {axis} of a tensor of shape {tuple(x.shape)}"
        )
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.reshape(shape)


def _expand_blocks(p: torch.Tensor, x: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    """Repeat each block's value ``block_size`` times along ``axis``; the last may be short."""
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    expected = list(x.shape)
    expected[axis] = -(-x.shape[axis] // block_size)
    if list(p.shape) != expected:
        raise ValueError(
            f"blocked scale has shape {tuple(p.shape)}; expected {tuple(expected)} "
            f"for blocks of {block_size} along axis {axis} of a tensor of shape "
            f"{tuple(x.shape)}"
        )
    return p.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])


def _zero_point(
    zero_point: Scalar | None, x: torch.Tensor, axis: int | None, block_size: int | None
) -> torch.Tensor:
    if zero_point is None:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    return _broadcast(zero_point, x, axis, block_size).to(torch.float32)


def _integer_type(dtype: str | QType) -> QType:
    t = qtype(dtype)
    if t.is_floating_point:
        raise ValueError(f"{t.name} is a float precision: use P.cast(x, {t.name!r}) instead")
    return t


def _quantize_float(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, t: QType
) -> torch.Tensor:
    """The quantized integer values, held in float32."""
    q = torch.round(x.to(torch.float32) / scale) + zero_point
    return q.clamp_(t.qmin, t.qmax)


def quantize(
    x: torch.Tensor,
    scale: Scalar,
    zero_point: Scalar | None,
    dtype: str | QType,
    axis: int | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    """Quantize to integer values (ONNX QuantizeLinear). Returns the type's storage dtype."""
    t = _integer_type(dtype)
    s = _broadcast(scale, x, axis, block_size).to(torch.float32)
    zp = _zero_point(zero_point, x, axis, block_size)
    return _quantize_float(x, s, zp, t).to(t.storage_dtype)


def dequantize(
    q: torch.Tensor,
    scale: Scalar,
    zero_point: Scalar | None,
    dtype: str | QType,
    axis: int | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    """Integer values back to float32 (ONNX DequantizeLinear)."""
    _integer_type(dtype)
    s = _broadcast(scale, q, axis, block_size).to(torch.float32)
    zp = _zero_point(zero_point, q, axis, block_size)
    return (q.to(torch.float32) - zp) * s


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    # Straight-through estimator: the forward value is round(v) exactly (for |v| >= 0.5,
    # round(v) - v is exact by Sterbenz's lemma; below, it is -v), while the backward pass
    # treats rounding as the identity. The clamp that follows zeroes the gradient outside
    # [qmin, qmax], and because scale enters through x / scale and (q - zp) * scale, autograd
    # gives the LSQ gradient for a learnable scale without further code. Where v is infinite
    # (x is, or x / scale overflowed) round(v) - v is NaN; adding 0 instead keeps v, which the
    # clamp saturates exactly as the no-grad path does.
    return v + torch.nan_to_num(torch.round(v) - v, nan=0.0).detach()


def fake_quantize(
    x: torch.Tensor,
    scale: Scalar,
    zero_point: Scalar | None,
    dtype: str | QType,
    axis: int | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` in float32, with a straight-through gradient.

    The gradient w.r.t. ``x`` is 1 inside the representable range and 0 outside it;
    a ``scale`` that requires grad receives the LSQ gradient.
    """
    t = _integer_type(dtype)
    s = _broadcast(scale, x, axis, block_size).to(torch.float32)
    zp = _zero_point(zero_point, x, axis, block_size)
    if torch.is_grad_enabled() and (x.requires_grad or s.requires_grad):
        q = (_round_ste(x.to(torch.float32) / s) + zp).clamp(t.qmin, t.qmax)
        return (q - zp) * s
    # clamp(round(x / s) + zp, qmin, qmax) - zp == clamp(round(x / s), qmin - zp, qmax - zp):
    # all terms are integers held exactly in float32, so two passes over x are saved.
    if zp.ndim == 0:
        lo, hi = t.qmin - float(zp), t.qmax - float(zp)
        return torch.div(x.to(torch.float32), s).round_().clamp_(lo, hi).mul_(s)
    return torch.div(x.to(torch.float32), s).round_().clamp_(t.qmin - zp, t.qmax - zp).mul_(s)


class _CastSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, t: QType) -> torch.Tensor:
        y = x.to(torch.float32)
        inside = torch.ones_like(y, dtype=torch.bool)
        if t.name.startswith("fp8"):
            # ONNX Cast(saturate=1): out-of-range values (and infinities) go to +-max finite.
            inside = y.abs() <= t.max_finite
            y = y.clamp(-t.max_finite, t.max_finite)
        ctx.save_for_backward(inside)
        assert t.torch_dtype is not None
        return y.to(t.torch_dtype).to(torch.float32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None


def cast(x: torch.Tensor, dtype: str | QType) -> torch.Tensor:
    """Round ``x`` to a float precision and return float32.

    fp16 / bf16 round as PyTorch casts (round to nearest even; overflow gives inf);
    fp8_e4m3 / fp8_e5m2 as ONNX ``Cast(saturate=1)``: out-of-range values saturate to the
    largest finite value. The gradient is straight-through (zero where fp8 saturated).
    """
    t = qtype(dtype)
    if not t.is_floating_point:
        raise ValueError(f"{t.name} is an integer precision: use P.fake_quantize instead")
    if t.is_identity:
        return x.to(torch.float32)
    out: torch.Tensor = _CastSTE.apply(x, t)
    return out


def choose_qparams(
    min_val: torch.Tensor | float,
    max_val: torch.Tensor | float,
    dtype: str | QType,
    symmetric: bool = False,
    eps: float = 1e-12,
    reciprocal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that cover ``[min_val, max_val]`` (element-wise for per-channel).

    The range is first widened to include 0 so that zero is exactly representable.
    Symmetric: ``scale = max|x| / ((qmax - qmin) // 2)`` (127 for 8 bits, so +-max|x| are
    both on the grid) and the zero point is the middle of the grid (0 for signed types, 128
    for uint8). Asymmetric: the grid spans the range. ``reciprocal``: the scale is then
    widened to ``1 / k`` for an integer ``k`` (see `reciprocal_scale`).

    Returns:
        ``(scale, zero_point)`` as float32 tensors; the zero point holds integers.
    """
    t = _integer_type(dtype)
    lo = torch.clamp(torch.as_tensor(min_val, dtype=torch.float32), max=0.0)
    hi = torch.clamp(torch.as_tensor(max_val, dtype=torch.float32), min=0.0)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("cannot choose quantization parameters for a range that is not finite")
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = torch.clamp(amax / ((t.qmax - t.qmin) // 2), min=eps)
        scale = reciprocal_scale(scale) if reciprocal else scale
        zero_point = torch.full_like(scale, float((t.qmin + t.qmax + 1) // 2))
        return scale, zero_point
    scale = torch.clamp((hi - lo) / (t.qmax - t.qmin), min=eps)
    scale = reciprocal_scale(scale) if reciprocal else scale
    zero_point = torch.clamp(torch.round(t.qmin - lo / scale), t.qmin, t.qmax)
    return scale, zero_point


def dynamic_qparams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The scale and zero point ONNX ``DynamicQuantizeLinear`` chooses for ``x`` (uint8):
    the range ``[min(x, 0), max(x, 0)]`` over 255 steps, computed in float32, the zero
    point ``round_half_to_even(-min / scale)`` saturated to [0, 255]. An all-zero ``x``
    gets scale 1 (every code is then the zero point, 0).

    Example:
        >>> [round(float(v), 6) for v in dynamic_qparams(torch.tensor([-1.0, 2.0, 0.5]))]
        [0.011765, 85.0]
    """
    with torch.no_grad():
        v = x.detach().to(torch.float32)
        lo, hi = torch.aminmax(v) if v.numel() else (torch.tensor(0.0), torch.tensor(0.0))
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        scale = (hi - lo) / 255.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.round(torch.clamp(-lo / scale, 0.0, 255.0))
    return scale, zero_point


def reciprocal_scale(scale: torch.Tensor) -> torch.Tensor:
    """The scale ``1 / k`` with ``k = floor(1 / scale)`` (so at least ``scale``), as float32
    whose float32 reciprocal floors to ``k`` again; scales above 1 are kept.

    ONNX Runtime's QLinearSoftmax (what its CPU provider fuses DQ -> Softmax -> Q into)
    multiplies by ``floor(1 / scale)`` instead of dividing by the scale, so only such
    scales give it the grid the Q/DQ pair describes.

    Example:
        >>> s = reciprocal_scale(torch.tensor(1 / 593.9))
        >>> int(torch.floor(1 / s)), bool(s >= 1 / 593.9)
        (593, True)
    """
    scale = torch.as_tensor(scale, dtype=torch.float32)
    k = torch.floor(1 / scale)
    out = torch.where(k >= 1, 1 / k.clamp(min=1), scale)
    for _ in range(4):  # 1 / fl(1 / k) can round to just below k: step the scale down an ulp
        short = (k >= 1) & (torch.floor(1 / out) < k)
        out = torch.where(short, torch.nextafter(out, torch.zeros_like(out)), out)
    return out
