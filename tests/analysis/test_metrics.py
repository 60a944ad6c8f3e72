from __future__ import annotations

import math

import pytest
import torch

from mixq.analysis.metrics import (
    METRICS,
    atol,
    cosine,
    float_leaves,
    get_metric,
    kl,
    l1,
    mse,
    register_metric,
    rtol,
    sqnr,
)


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


def test_l1_atol_and_rtol_by_hand():
    ref, out = torch.tensor([2.0, -4.0, 0.5]), torch.tensor([2.5, -3.0, 0.5])
    assert l1(ref, out) == pytest.approx(0.5)  # (0.5 + 1 + 0) / 3
    assert atol(ref, out) == pytest.approx(1.0)
    assert rtol(ref, out) == pytest.approx(0.25)  # 0.5 / 2 and 1 / 4


def test_kl_is_over_softmax_in_float64():
    ref, out = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])
    p = torch.tensor([0.25, 0.75], dtype=torch.float64)  # softmax(ref); softmax(out) is 1/2
    expected = float((p * (p / 0.5).log()).sum())
    assert kl(ref, out) == pytest.approx(expected, rel=1e-6)  # ref holds log 3 in float32
    assert kl(ref, ref) == 0.0


def test_every_metric_has_a_direction_and_custom_ones_register():
    higher = {n for n, m in METRICS.items() if m.higher_is_better}
    assert {"cosine", "sqnr"} <= higher and not {"mse", "l1", "kl", "atol", "rtol"} & higher
    metric = register_metric("worst_ratio", lambda r, o: float((o / r).max()), True)
    try:
        assert get_metric("WORST_RATIO") is metric
        assert metric.worse(0.5, 0.9) and not metric.worse(0.9, 0.5)
    finally:
        del METRICS["worst_ratio"]
    with pytest.raises(ValueError, match="register_metric"):
        get_metric("nope")
