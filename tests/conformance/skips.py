"""Corpus cells that do not pass, each with why: the documented skips of the conformance
table (`tests/conformance/test_corpus.py` fails on a cell that fails without one here, and
on one here that passes again, so the list stays true). ``open:`` marks a defect of mixq's
still to fix, the rest are stages that cannot apply to that model."""

from __future__ import annotations

__all__ = ["SKIPS"]

_FIXED_SHAPES = (
    "cannot apply: the model computes its windows / patches from the image size, so "
    "torch.export keeps the input shapes dynamic only under a relation between batch and "
    "image size that it records; batch 1 breaks it and the Sim raises a ValueError naming "
    "both shapes (the float model runs it)"
)
SKIPS: dict[tuple[str, str], str] = {
    ("swin", "shape"): _FIXED_SHAPES,
    ("mobilevit", "shape"): _FIXED_SHAPES,
}
