"""aten op names -> mixq's canonical op kinds (`mixq.graph.kinds`).

Example:
    >>> import torch
    >>> canonical_kind(torch.ops.aten.conv2d.default)
    'conv'
"""

from __future__ import annotations

from typing import Any

__all__ = ["canonical_kind", "weight_arg"]

_ALIASES: dict[str, tuple[str, ...]] = {
    "conv": ("conv1d", "conv2d", "conv3d", "convolution", "_convolution"),
    "conv_transpose": ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
    "linear": ("linear", "addmm"),
    "matmul": ("matmul", "mm", "bmm", "baddbmm", "einsum"),
    "attention": ("scaled_dot_product_attention",),
    "add": ("add",),
    "sub": ("sub", "rsub"),
    "div": ("div",),
    "relu6": ("relu6",),
    "clamp": ("clamp", "clip"),
    "softmax": ("softmax", "_softmax"),
    "log_softmax": ("log_softmax", "_log_softmax"),
    "layer_norm": ("layer_norm", "native_layer_norm"),
    "batch_norm": (
        "batch_norm",
        "_native_batch_norm_legit_no_training",
        "_native_batch_norm_legit",
        "native_batch_norm",
    ),
    "reshape": ("view", "reshape", "_unsafe_view"),
    "transpose": ("transpose", "t", "swapaxes"),
    "split": ("split", "split_with_sizes", "tensor_split"),
    "max_pool": ("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices"),
    "avg_pool": (
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
    ),
    "pad": ("pad", "constant_pad_nd"),
    "cat": ("cat", "concat", "concatenate"),
    "upsample_nearest": ("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d"),
    "dropout": ("dropout", "feature_dropout", "alpha_dropout"),
    "alias": ("alias", "lift_fresh_copy", "_to_copy"),
}
_KIND_OF = {aten: kind for kind, names in _ALIASES.items() for aten in names}

_WEIGHT_ARG = {"conv": 1, "conv_transpose": 1, "linear": 1, "matmul": 1, "embedding": 0}


def _aten_name(target: Any) -> str:
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", None) or getattr(target, "__name__", str(target))
    return str(name).split(".")[-1]


def canonical_kind(target: Any) -> str:
    """The canonical kind of an fx call target; unknown ops keep their aten name."""
    name = _aten_name(target)
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]  # in-place variants (relu_, add_) are the same kind
    return _KIND_OF.get(name, name)


def weight_arg(kind: str, target: Any = None) -> int | None:
    """Position of the weight argument for kinds that quantize a weight; ``addmm(bias, x,
    weight)`` (GPT-2's Conv1D) keeps it third.

    Example:
        >>> import torch
        >>> aten = torch.ops.aten
        >>> weight_arg("linear", aten.linear.default), weight_arg("linear", aten.addmm.default)
        (1, 2)
    """
    if target is not None and _aten_name(target) == "addmm":
        return 2
    return _WEIGHT_ARG.get(kind)
