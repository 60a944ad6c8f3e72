"""Float transforms (smooth, equalize): exact in float, better int8 with planted outliers.

Exactness: with every quantizer off, the Sim of the transformed model computes the float
model's outputs up to float rounding, tolerance ``EXACT_RTOL`` = 1e-5 of max |y| (measured
2026-11-30: 1.3e-7 on the outlier BERT, 1.7e-7 on the residual CNN; a wrong channel mapping
moves them by O(1)).

Gains on the BERT with planted outliers (`tests.transforms.models.outlier_bert`: int8
activations and weights, 4 calibration batches, SQNR of last_hidden_state on the example
inputs), measured 2026-11-30: none 17.3 dB, smooth 30.3, equalize 30.5 (the same BERT
without the planted channels: 30.4). Floor: ``GAIN_DB`` = +8 dB each.

Branch smoothing on a post-LN fork (`_PostLN`, LayerNorm outlier channels 40x, target
``ort-cpu``), measured 2026-12-03: no transform 14.9 dB, folded pairs only 15.0, with the
branch multiply 43.1. Floor: +10 dB over folded pairs only.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import mixq
from mixq.analysis.metrics import float_leaves
from mixq.sim.torch.capture import capture
from mixq.transforms import apply_transforms
from mixq.transforms.pairs import ScalePair, find_pairs, max_relative_error, verify_exact
from mixq.transforms.stats import run_batches
from tests.transforms.conftest import output_sqnr, quantized_sqnr

EXACT_RTOL = 1e-5
GAIN_DB = 8.0


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["smooth", "equalize"])
def test_float_transform_is_exact_and_improves_int8(name, outlier_model, outlier_sims):
    model, inputs, _ = outlier_model
    sim = outlier_sims("int8", name)
    assert sim.transform_records[0].layers, "the transform changed nothing"
    with torch.no_grad(), sim.disabled():
        error = max_relative_error([model(*inputs)], [sim(*inputs)])
    assert error <= EXACT_RTOL, f"float outputs moved by {error:.2e} of max |y|"
    base = output_sqnr(outlier_sims("int8"), model, inputs)
    value = output_sqnr(sim, model, inputs)
    assert value >= base + GAIN_DB, f"{name}: {base:.1f} -> {value:.1f} dB"


@pytest.mark.parametrize("name", ["smooth", "equalize"])
def test_float_transform_on_a_cnn_is_exact_and_leaves_the_model_alone(name, cnn_model):
    model, inputs, calib = cnn_model
    before = _state(model)
    result = apply_transforms(model, inputs, [name], calib=calib)
    assert result.records[0].layers, "the transform changed nothing"
    error = max_relative_error(run_batches(model, calib), run_batches(result.model, calib))
    assert error <= EXACT_RTOL, f"float outputs moved by {error:.2e} of max |y|"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_post_ln_bert_layer_norms_take_no_scale(outlier_model, outlier_sims):
    """In post-LN BERT every LayerNorm output also feeds a residual add, so no scale folds
    into it exactly; the value -> attention output and the ReLU FFN pairs take one."""
    model = outlier_model[0]
    pairs = find_pairs(outlier_sims("int8").graph, model)
    assert not [p for p in pairs if p.kind == "layer_norm"]
    assert {"encoder.layer.0.attention.self.value", "encoder.layer.0.intermediate.dense"} <= {
        p.producer for p in pairs
    }


class _PreLN(nn.Module):
    """x + FFN(LN(x)): the LayerNorm output feeds only the FFN's first linear."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))


def _norm_outliers(make: type[nn.Module], damp_reader: bool) -> tuple[nn.Module, torch.Tensor]:
    """``make()`` with three outlier channels (40x) out of its ``norm``; ``damp_reader``: ``up``
    reads them divided by 40 (the float function of an unplanted model), so that the
    outliers do not decide the output's size."""
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():
        model.norm.weight[:3] *= 40
        if damp_reader:
            model.up.weight[:, :3] /= 40
    return model, torch.randn(512, 16)


@pytest.fixture(scope="module")
def pre_ln():
    return _norm_outliers(_PreLN, damp_reader=False)


def test_smooth_folds_into_a_pre_ln_layer_norm_without_adding_ops(pre_ln):
    model, x = pre_ln
    result = apply_transforms(model, x, ["smooth"])
    smoothed = {row["layer"].split(" ->")[0] for row in result.records[0].layers}
    assert "norm" in smoothed
    assert result.model.norm.weight.abs().max() < model.norm.weight.abs().max() / 4
    with torch.no_grad():
        assert max_relative_error([model(x)], [result.model(x)]) <= EXACT_RTOL
    kinds = [op.kind for op in capture(result.model, x).graph]
    assert kinds == [op.kind for op in capture(model, x).graph]
    unseen = (torch.randn(512, 16),)  # the alpha is chosen for data calibration did not see
    smooth_db = quantized_sqnr(model, unseen, [x], transforms=["smooth"])
    assert smooth_db > quantized_sqnr(model, unseen, [x]) + 0.5


def test_smooth_reapplies_the_alphas_it_recorded(pre_ln):
    model, x = pre_ln
    first = apply_transforms(model, x, ["smooth"])
    spec = first.records[0].spec()
    assert spec["name"] == "smooth" and spec["alpha"]
    again = apply_transforms(model, x, [spec])
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_a_pair_that_is_not_exact_is_undone():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2)).eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        reference = [model(x)]
    before = _state(model)
    wrong = ScalePair("0", "0", "linear", "0", ["3"], 8)  # "3" does not read 0's output

    s = torch.linspace(0.5, 2.0, 8)
    assert verify_exact(model, wrong, s, [(x,)], reference, EXACT_RTOL) is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        assert float_leaves(model(x))[0].equal(reference[0])


class _PostLN(nn.Module):
    """FFN(LN(x)) + LN(x) / 100: the LayerNorm output also feeds a non-linear consumer (a
    residual, damped so that its own quantizer does not decide the output's error), so no
    scale folds into it; smoothing has to go on the FFN's side of the fork."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return self.down(torch.relu(self.up(h))) + h / 100


@pytest.fixture(scope="module")
def post_ln():
    return _norm_outliers(_PostLN, damp_reader=True)


def test_smooth_puts_the_scale_on_the_linear_branch_of_a_post_ln_fork(post_ln):
    model, x = post_ln
    assert not [p for p in find_pairs(capture(model, x).graph, model) if p.producer == "norm"]
    result = apply_transforms(model, x, ["smooth"])
    rows = {row["layer"]: row for row in result.records[0].layers}
    assert rows["norm -> up"]["folded"] is False
    assert torch.equal(result.model.norm.weight, model.norm.weight)  # the residual keeps it
    with torch.no_grad():
        assert max_relative_error([model(x)], [result.model(x)]) <= EXACT_RTOL
    kinds = [op.kind for op in capture(result.model, x).graph]
    assert kinds.count("mul") == [op.kind for op in capture(model, x).graph].count("mul") + 1
    ort = mixq.Config(default="int8", target="ort-cpu")  # LayerNorm float, linears integer
    branch_db = quantized_sqnr(model, (x,), [x], ort, ["smooth"])
    fold_only_db = quantized_sqnr(model, (x,), [x], ort, [{"name": "smooth", "branches": False}])
    assert branch_db > fold_only_db + 10.0, f"{fold_only_db:.1f} -> {branch_db:.1f} dB"


def test_a_fork_quantized_for_every_reader_is_not_smoothed(post_ln):
    """Full-integer placement quantizes the LayerNorm output itself: a multiply after it
    would read the quantized values, so the fork is left alone and the transform says so."""
    model, x = post_ln
    sim = mixq.quantize(model, x, "int8", transforms=["smooth"], calib=[x])
    record = sim.transform_records[0]
    assert not [r for r in record.layers if not r["folded"]]
    assert any("fork(s) left unsmoothed" in n for n in record.notes)


def test_the_branch_multiply_reads_a_float_norm_unquantized_on_a_full_integer_target(post_ln):
    """LayerNorm kept in float on a full-integer target: the multiply in front of ``up`` is
    the layer's input scale, so it reads the LayerNorm's float output and only its output
    is quantized (a quantizer on its input would round the values before the smoothing:
    14.1 dB here, against 36.0)."""
    model, x = post_ln
    config = mixq.Config(default="int8", target="generic").set_precision("norm", "fp32")
    sim = mixq.quantize(model, x, config, transforms=["smooth"], calib=[x])
    sim.calibrate([x], progress=False)
    (scale,) = [op for op in sim.graph if sim.graph.is_input_scale(op)]
    assert scale.module == "up" and sim.plan[scale.name].input == ("fp32",)
    assert sim.plan[scale.name].output == ("int8",)
    assert not [p for p in sim.points if scale.name in p.readers]
    rounded_first = mixq.quantize(model, x, config, transforms=["smooth"], calib=[x])
    plan = rounded_first.plan
    plan.ops[scale.name] = replace(plan.ops[scale.name], input=("int8",))
    before = mixq.quantize(model, x, plan, calib=[x]).calibrate([x], progress=False)
    assert output_sqnr(sim, model, (x,)) > output_sqnr(before, model, (x,)) + 3.0


def test_branch_smoothing_reapplies_and_leaves_the_model_alone(post_ln):
    model, x = post_ln
    before = _state(model)
    first = apply_transforms(model, x, ["smooth"])
    again = apply_transforms(model, x, [first.records[0].spec()])
    assert first.model.state_dict().keys() == again.model.state_dict().keys()
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        assert torch.equal(model(x), _PostLN.forward(model, x))  # no hook left on the user's model


def test_an_undone_branch_takes_its_multiply_with_it():
    model = _PostLN().eval()
    x = torch.randn(5, 16)
    with torch.no_grad():
        reference = [model(x)]
    before = _state(model)
    pair = ScalePair("norm", "", "branch", "", ["up"], 16)
    s = torch.linspace(0.5, 2.0, 16)
    assert verify_exact(model, pair, s, [(x,)], reference, tolerance=-1.0) is None  # never kept
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not model.up._forward_pre_hooks
    assert verify_exact(model, pair, s, [(x,)], reference, EXACT_RTOL) is not None  # exact
    assert model.up._forward_pre_hooks


def test_a_config_may_name_the_linear_a_smoothed_fork_reads(post_ln):
    """Smoothing a fork adds a multiply to the linear's module, and the linear's op then
    takes a suffixed name: the one `sim.plan` lists. A config naming it failed with "no op
    matches" in the transforms' first look at the plan, on the graph before the multiply."""
    model, x = post_ln
    ort = mixq.Config(default="int8", target="ort-cpu")
    smoothed = mixq.quantize(model, x, ort, transforms=["smooth"], calib=[x])
    up = next(op.name for op in smoothed.plan if op.module == "up" and op.kind == "linear")
    assert up not in {op.name for op in mixq.quantize(model, x, ort).plan}
    config = mixq.Config(default="int8", target="ort-cpu")
    sim = mixq.quantize(
        model, x, config.set_precision(up, "fp32", "fp32"), transforms=["smooth"], calib=[x]
    )
    assert sim.plan[up].input == ("fp32",) and sim.plan[up].weight == {"weight": "fp32"}
