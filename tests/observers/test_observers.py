"""Tests for mixq.observers: exact statistics, histogram bookkeeping, and range quality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mixq import observers as O
from mixq.core import primitives as P
from mixq.observers import OBSERVERS, HistogramObserver, histogram_mse, make_observer
from mixq.observers.range_search import _kl_divergences

NORMAL_9999 = 3.7190164854556804  # Phi^-1(0.9999)
SEARCHES = ["mse", "sqnr", "kl"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _feed(obs: O.Observer, x: torch.Tensor, batches: int = 4) -> O.Observer:
    for batch in x.chunk(batches):
        obs.update(batch)
    return obs


def _quant_mse(
    x: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float, symmetric: bool
) -> float:
    """Mean squared int8 fake-quantization error of ``x`` on the grid for ``[lo, hi]``."""
    scale, zero_point = P.choose_qparams(lo, hi, "int8", symmetric)
    return float(((P.fake_quantize(x, scale, zero_point, "int8") - x).double() ** 2).mean())


@pytest.fixture(scope="module")
def gauss_outliers() -> torch.Tensor:
    """A million standard normals with two rare, big outliers."""
    x = torch.randn(1_000_000, generator=_gen(0))
    x[123_456], x[876_543] = 40.0, -30.0
    return x


def test_public_api() -> None:
    assert set(O.__all__) == {
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
    }
    assert set(OBSERVERS) == {"minmax", "moving_average", "percentile", "mse", "kl", "sqnr", "mix"}


# --- minmax / moving average -------------------------------------------------------------


def test_minmax_per_tensor_is_exact() -> None:
    batches = [torch.randn(7, 5, generator=_gen(i)) * (i + 1) for i in range(4)]
    obs = make_observer("minmax")
    for b in batches:
        obs.update(b)
    lo, hi = obs.compute_range()
    ref = torch.aminmax(torch.cat(batches))
    assert lo.shape == () and lo.dtype == torch.float32
    assert torch.equal(lo, ref.min) and torch.equal(hi, ref.max)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_minmax_per_channel_is_exact(axis: int) -> None:
    batches = [
        torch.randn(4, 6, 3, generator=_gen(i)) * torch.arange(1, 7).view(1, 6, 1) for i in range(3)
    ]
    obs = make_observer("minmax", axis=axis)
    for b in batches:
        obs.update(b)
    lo, hi = obs.compute_range()
    x = torch.cat(batches, dim=0 if axis != 0 else 1)
    other = [d for d in range(x.ndim) if d != axis % x.ndim]
    assert lo.shape == (x.shape[axis],)
    assert torch.equal(lo, x.amin(dim=other)) and torch.equal(hi, x.amax(dim=other))


def test_moving_average_matches_hand_computed_ema() -> None:
    obs = make_observer("moving_average", averaging_constant=0.1)
    for batch in ([0.0, 1.0], [-10.0, 5.0], [2.0, 3.0]):
        obs.update(torch.tensor(batch))
    lo, hi = obs.compute_range()
    # min: 0 -> 0 + 0.1 * (-10 - 0) = -1 -> -1 + 0.1 * (2 + 1) = -0.7
    # max: 1 -> 1 + 0.1 * (5 - 1) = 1.4 -> 1.4 + 0.1 * (3 - 1.4) = 1.56
    assert lo.item() == pytest.approx(-0.7, abs=1e-6)
    assert hi.item() == pytest.approx(1.56, abs=1e-6)


def test_moving_average_per_channel_and_default_constant() -> None:
    obs = make_observer("moving_average", axis=1)
    obs.update(torch.tensor([[0.0, 10.0], [1.0, 20.0]]))  # channel mins (0, 10), maxs (1, 20)
    obs.update(torch.tensor([[-4.0, 30.0], [2.0, 40.0]]))  # channel mins (-4, 30), maxs (2, 40)
    lo, hi = obs.compute_range()
    assert lo.tolist() == pytest.approx([0.0 - 0.04, 10.0 + 0.2])
    assert hi.tolist() == pytest.approx([1.0 + 0.01, 20.0 + 0.2])


def test_per_channel_count_change_is_an_error() -> None:
    obs = make_observer("minmax", axis=0)
    obs.update(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="3 channels"):
        obs.update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="out of range"):
        make_observer("minmax", axis=2).update(torch.zeros(3, 2))


# --- histogram bookkeeping ---------------------------------------------------------------


def test_rebinning_by_hand() -> None:
    obs = make_observer("percentile", bins=2)
    assert isinstance(obs, HistogramObserver)
    obs.update(torch.tensor([0.1, 0.2, 0.6, 0.7, 0.8, 1.0]))  # bins [0, .5), [.5, 1]
    assert obs.hist.tolist() == [2.0, 4.0]
    obs.update(torch.tensor([1.5]))  # new bins [0, .75), [.75, 1.5]
    # old [.5, 1] bin (4 counts) splits half / half over .75; 1.5 lands in the last bin
    assert (obs.lo, obs.hi) == (0.0, 1.5)
    assert obs.hist.tolist() == pytest.approx([4.0, 3.0])


def test_growing_histogram_conserves_counts_and_covers_data() -> None:
    g = _gen(1)
    batches = [
        torch.randn(20_000, generator=g),
        torch.randn(20_000, generator=g) * 4 - 3,
        torch.rand(20_000, generator=g) * 15,
        torch.randn(20_000, generator=g),
    ]
    obs = make_observer("percentile")
    assert isinstance(obs, HistogramObserver)
    for b in batches:
        obs.update(b)
    x = torch.cat(batches)
    assert obs.hist.sum().item() == pytest.approx(x.numel(), rel=1e-9)
    assert obs.lo <= x.min().item() and obs.hi >= x.max().item()
    assert (obs.min_val, obs.max_val) == (x.min().item(), x.max().item())
    # re-binning blurs within a bin or two: coarse blocks of 64 bins still match the data
    direct = torch.histc(x, obs.bins, obs.lo, obs.hi).double()
    coarse = obs.hist.view(32, 64).sum(1)
    assert (coarse - direct.view(32, 64).sum(1)).abs().max().item() < 0.002 * x.numel()


@pytest.mark.parametrize("dtype", ["int8", "int4"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_histogram_mse_integrates_fake_quantize_over_each_bin(dtype: str, symmetric: bool) -> None:
    """Reference: fake-quantize 2000 evenly spaced points inside every bin."""
    counts = torch.randint(0, 9, (64,), generator=_gen(10)).double()
    lo, hi, sub = -1.0, 1.3, 2000
    width = (hi - lo) / counts.numel()
    offsets = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub * width
    x = (lo + torch.arange(counts.numel()) * width)[:, None] + offsets  # (bins, sub)
    lows, highs = [-1.0, -0.5, -0.02, -0.9, 0.2], [1.3, 0.4, 0.03, 1.0, 0.9]
    err = histogram_mse(counts, lo, hi, lows, highs, dtype, symmetric)
    for k, (a, b) in enumerate(zip(lows, highs, strict=True)):
        scale, zero_point = P.choose_qparams(a, b, dtype, symmetric)
        sq = (P.fake_quantize(x.float(), scale, zero_point, dtype).double() - x) ** 2
        ref = (sq.mean(dim=1) * counts).sum() / counts.sum()
        assert err[k].item() == pytest.approx(ref.item(), rel=2e-3), (a, b)


def test_histogram_mse_matches_fake_quantize_on_the_data() -> None:
    x = torch.randn(200_000, generator=_gen(2)) * 2 + 0.5
    obs = _feed(make_observer("mse", bins=2048), x)
    assert isinstance(obs, HistogramObserver)
    for symmetric in (False, True):
        lows, highs = [-8.0, -3.0, -1.0, -0.2], [9.0, 4.0, 2.5, 0.3]
        err = histogram_mse(obs.hist, obs.lo, obs.hi, lows, highs, "int8", symmetric)
        direct = [_quant_mse(x, lo, hi, symmetric) for lo, hi in zip(lows, highs, strict=True)]
        np.testing.assert_allclose(err.numpy(), direct, rtol=0.01)


# --- percentile --------------------------------------------------------------------------


def test_percentile_matches_normal_quantile_and_drops_outliers() -> None:
    x = torch.randn(1_000_000, generator=_gen(3))
    obs = _feed(make_observer("percentile"), x)
    obs.update(torch.tensor([50.0, -45.0, 60.0, -55.0]))  # late outliers widen the histogram
    lo, hi = obs.compute_range()
    assert hi.item() == pytest.approx(NORMAL_9999, abs=0.05)
    assert lo.item() == pytest.approx(-NORMAL_9999, abs=0.05)
    empirical = torch.quantile(x, torch.tensor([1e-4, 1 - 1e-4]))
    assert lo.item() == pytest.approx(empirical[0].item(), abs=0.03)  # bins are 0.055 wide
    assert hi.item() == pytest.approx(empirical[1].item(), abs=0.03)


def test_percentile_of_non_negative_data_keeps_the_minimum() -> None:
    x = torch.rand(100_000, generator=_gen(4)) * 3 + 2  # uniform on [2, 5]
    lo, hi = _feed(make_observer("percentile", percentile=99.0), x).compute_range()
    assert lo.item() == x.min().item()
    assert hi.item() == pytest.approx(2 + 3 * 0.99, abs=0.01)


# --- searches: mse, sqnr, kl ---------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("name", SEARCHES)
def test_search_clips_outliers_and_beats_minmax(
    name: str, symmetric: bool, gauss_outliers: torch.Tensor
) -> None:
    x = gauss_outliers
    lo, hi = _feed(make_observer(name, symmetric=symmetric), x).compute_range()
    assert -30.0 < lo.item() < 0 < hi.item() < 40.0
    assert hi.item() - lo.item() < 0.5 * 70.0
    clipped, full = _quant_mse(x, lo, hi, symmetric), _quant_mse(x, -30.0, 40.0, symmetric)
    assert clipped < 0.5 * full


@pytest.fixture(scope="module")
def relu_outlier() -> torch.Tensor:
    x = torch.randn(400_000, generator=_gen(8)).clamp(min=0)
    x[0] = 30.0
    return x


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_one_sided_data_keeps_its_bound_at_zero(
    name: str, symmetric: bool, relu_outlier: torch.Tensor
) -> None:
    lo, hi = _feed(make_observer(name, symmetric=symmetric), relu_outlier).compute_range()
    assert lo.item() == 0.0 and 0.0 < hi.item() <= 30.0
    lo, hi = _feed(make_observer(name, symmetric=symmetric), -relu_outlier).compute_range()
    assert -30.0 <= lo.item() < 0.0 and hi.item() == 0.0


@pytest.mark.parametrize("name", ["mse", "sqnr"])
def test_asymmetric_search_keeps_the_side_without_outliers(name: str) -> None:
    x = torch.randn(1_000_000, generator=_gen(9))
    x[5] = 40.0
    lo, hi = _feed(make_observer(name, symmetric=False), x).compute_range()
    assert lo.item() < -3.0 and hi.item() < 20.0


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("name", SEARCHES)
def test_search_keeps_the_range_of_uniform_data(name: str, symmetric: bool) -> None:
    x = torch.rand(200_000, generator=_gen(5)) * 2 - 1
    lo, hi = _feed(make_observer(name, symmetric=symmetric), x).compute_range()
    assert lo.item() == pytest.approx(x.min().item(), rel=0.03)
    assert hi.item() == pytest.approx(x.max().item(), rel=0.03)


@pytest.mark.parametrize("symmetric", [True, False])
def test_kl_threshold_of_uniform_unit_data_is_its_max(symmetric: bool) -> None:
    x = torch.rand(100_000, generator=_gen(6))
    obs = _feed(make_observer("entropy", symmetric=symmetric), x)
    assert isinstance(obs, O.KLObserver)
    lo, hi = obs.compute_range()
    assert lo.item() == x.min().item()
    assert hi.item() == pytest.approx(x.max().item(), rel=0.01)


def _kl_reference(hist: np.ndarray, levels: int) -> list[float]:
    """TensorRT's entropy calibration loop, one threshold at a time."""
    out = []
    for i in range(levels, len(hist) + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        q = np.zeros(i)
        for group in range(levels):
            members = [j for j in range(i) if j * levels // i == group and hist[j] > 0]
            q[members] = hist[members].sum() / max(len(members), 1)
        p, q = p / p.sum(), q / q.sum()
        terms = [
            pj * math.log(pj / qj) if qj > 0 else math.inf
            for pj, qj in zip(p, q, strict=True)
            if pj
        ]
        out.append(sum(terms))
    return out


def test_kl_divergences_match_the_reference_loop() -> None:
    rng = np.random.default_rng(7)
    hist = rng.integers(0, 50, size=60).astype(np.float64)
    hist[[3, 17, 18, 40, 41, 42]] = 0.0
    fast = _kl_divergences(hist, 8)
    slow = np.array(_kl_reference(hist, 8))
    assert np.isinf(slow).any()
    np.testing.assert_array_equal(np.isinf(fast), np.isinf(slow))
    finite = np.isfinite(slow)
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("symmetric", "levels", "kept"), [(True, 8, 54), (False, 16, 50)])
def test_kl_threshold_of_one_sided_int4_matches_the_reference(
    symmetric: bool, levels: int, kept: int
) -> None:
    """int4 has 8 levels over [0, t] on a symmetric grid, 16 on an asymmetric one."""
    hist = np.random.default_rng(11).integers(1, 100, 64) * np.exp(-np.arange(64) / 10)
    obs = make_observer("kl", dtype="int4", symmetric=symmetric, bins=64)
    assert isinstance(obs, HistogramObserver)
    lo, hi = obs.range_from_histogram(torch.from_numpy(hist), 0.0, 6.4)
    without_first = np.concatenate([[0.0], hist[1:]])  # the first bin is left out
    assert levels + int(np.argmin(_kl_reference(without_first, levels))) == kept
    assert (lo, hi) == (0.0, pytest.approx(6.4 * kept / 64))


@pytest.mark.parametrize("symmetric", [True, False])
def test_kl_ignores_the_zero_spike_of_relu_data(
    symmetric: bool, relu_outlier: torch.Tensor
) -> None:
    lo, hi = _feed(make_observer("kl", symmetric=symmetric), relu_outlier).compute_range()
    assert lo.item() == 0.0 and 3.0 < hi.item() < 6.0
    lo, hi = _feed(make_observer("kl", symmetric=symmetric), -relu_outlier).compute_range()
    assert -6.0 < lo.item() < -3.0 and hi.item() == 0.0


# --- mix ---------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_mix_picks_the_candidate_with_lowest_error(
    symmetric: bool, gauss_outliers: torch.Tensor
) -> None:
    x = gauss_outliers
    names = ("minmax", "percentile", "mse", "kl", "sqnr")
    mix = _feed(make_observer("mix", symmetric=symmetric, candidates=names), x)
    assert isinstance(mix, O.MixObserver)
    lo, hi = mix.compute_range()
    assert mix.chosen in names and set(mix.errors) == set(names)
    mix_mse = _quant_mse(x, lo, hi, symmetric)
    for name in names:
        ref = _feed(make_observer(name, symmetric=symmetric), x).compute_range()
        assert mix_mse <= _quant_mse(x, *ref, symmetric) * (1 + 1e-9), name
        if name == mix.chosen:
            assert torch.equal(ref[0], lo) and torch.equal(ref[1], hi)


def test_mix_rejects_non_histogram_candidates() -> None:
    with pytest.raises(ValueError, match=r"moving_average.*percentile"):
        make_observer("mix", candidates=("minmax", "moving_average"))
    assert make_observer("mix", candidates=("Entropy",)).candidates == ("kl",)


# --- errors and edge cases -------------------------------------------------------------


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown observer 'histogram'") as info:
        make_observer("histogram")
    for name in [*OBSERVERS, "entropy"]:
        assert name in str(info.value)


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_compute_range_needs_data(name: str) -> None:
    obs = make_observer(name)
    obs.update(torch.empty(0))  # an empty batch is no data
    assert not obs.has_data
    with pytest.raises(ValueError, match=f"'{name}' has seen no data; call update"):
        obs.compute_range()
    obs.update(torch.tensor([1.0, -2.0]))
    assert obs.has_data
    obs.reset()
    with pytest.raises(ValueError, match="has seen no data"):
        obs.compute_range()


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_all_zero_data_gives_a_zero_range(name: str) -> None:
    lo, hi = _feed(make_observer(name), torch.zeros(1000)).compute_range()
    assert (lo.item(), hi.item()) == (0.0, 0.0)
    assert lo.dtype == hi.dtype == torch.float32


def test_bad_options_are_errors() -> None:
    with pytest.raises(ValueError, match="per tensor only"):
        make_observer("percentile", axis=0)
    with pytest.raises(ValueError, match=r"unknown options \['percentil'\]"):
        make_observer("percentile", percentil=99.0)
    with pytest.raises(ValueError, match="float precision"):
        make_observer("mse", dtype="fp16")
    with pytest.raises(ValueError, match="percentile must be"):
        make_observer("percentile", percentile=20)
    with pytest.raises(ValueError, match="already registered"):
        O.register_observer("minmax")(O.MinMaxObserver)
