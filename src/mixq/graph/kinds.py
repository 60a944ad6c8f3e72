"""Canonical op kinds and what quantization does with each.

Backends map their own names (aten ops, ONNX op types) onto these kinds, so rules by op
kind and the fusion patterns work the same for PyTorch and ONNX models.

Example:
    >>> is_data_movement("reshape"), is_data_movement("linear")
    (True, False)
"""

from __future__ import annotations

__all__ = [
    "DATA_MOVEMENT",
    "FUSABLE_ACTIVATIONS",
    "IDENTITY_KINDS",
    "NORMALIZATION",
    "WEIGHTED",
    "is_data_movement",
]

# Ops that read parameters as weights and get a weight quantizer.
WEIGHTED = frozenset({"conv", "conv_transpose", "linear", "embedding", "matmul"})

# Ops that only move, select or reorder values: their output carries their input's
# encoding, so no quantizer is placed after them.
DATA_MOVEMENT = frozenset(
    {
        "reshape",
        "flatten",
        "permute",
        "transpose",
        "squeeze",
        "unsqueeze",
        "expand",
        "slice",
        "select",
        "getitem",
        "contiguous",
        "clone",
        "dropout",
        "identity",
        "split",
        "chunk",
        "unbind",
        "max_pool",
        "pad",
        "repeat",
        "alias",
        "detach",
        "index_select",
        "gather",
        "flip",
        "roll",
        "pixel_shuffle",
        "channel_shuffle",
        "upsample_nearest",
    }
)

# Activations a compiler folds into the preceding conv / linear / add.
FUSABLE_ACTIVATIONS = frozenset({"relu", "relu6", "hardtanh", "clamp"})

NORMALIZATION = frozenset({"batch_norm"})

# Ops that pass their input through unchanged in eval mode (a fusion chain skips them).
IDENTITY_KINDS = frozenset({"dropout", "identity", "contiguous", "clone", "alias", "detach"})


def is_data_movement(kind: str) -> bool:
    return kind in DATA_MOVEMENT
