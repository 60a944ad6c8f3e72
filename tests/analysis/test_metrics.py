from __future__ import annotations

import math

import pytest
import torch

from mixq.analysis.metrics import cosine, float_leaves, mse, sqnr


def test_sqnr_by_hand():
    ref = torch.tensor([3.0, 4.0])
    out = torch.tensor([3.0, 4.5])  # signal 25, noise 0.25 -> 20 dB
    assert sqnr(ref, out) == pytest.approx(20.0)
    assert sqnr(ref, ref) == math.inf


def test_mse_and_cosine_by_hand():
    ref, out = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert mse(ref, out) == pytest.approx(1.0)
    assert cosine(ref, out) == pytest.approx(0.0)
    assert cosine(ref, 2 * ref) == pytest.approx(1.0)


def test_float_leaves_skips_integers_and_nesting():
    out = {"a": torch.ones(2), "b": (torch.zeros(1, dtype=torch.long), [torch.ones(3)])}
    assert [t.numel() for t in float_leaves(out)] == [2, 3]
