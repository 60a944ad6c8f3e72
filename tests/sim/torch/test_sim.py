from __future__ import annotations

import copy

import pytest
import torch

import mixq
from mixq import CalibrationError, ConfigError
from mixq.analysis.metrics import float_leaves
from tests.helpers import SQNR_FLOOR_DB, assert_sqnr

PRECISIONS = {
    "fp16": "fp16",
    "int16": "int16",
    "bf16": "bf16",
    "int8": "int8",
    "w4a8": ("int8", "int4"),
    "fp8_e4m3": "fp8_e4m3",
}


def _first(out):
    return float_leaves(out)[0]


def _calibrated(model_fixture, config):
    model, inputs, calib = model_fixture
    sim = mixq.quantize(model, inputs, {"default": config})
    return sim.calibrate(calib)


@pytest.mark.parametrize("fixture", ["cnn_model", "mlp_model", "bert_model"])
def test_all_quantizers_off_is_the_float_model_bit_for_bit(fixture, request):
    model, inputs, calib = request.getfixturevalue(fixture)
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib)
    with torch.no_grad(), sim.disabled():
        for batch in calib:
            assert torch.equal(_first(sim(*batch)), _first(model(*batch)))


@pytest.mark.parametrize("fixture", ["cnn_model", "bert_model"])
def test_quantize_and_calibrate_never_change_the_model(fixture, request):
    model, inputs, calib = request.getfixturevalue(fixture)
    before = copy.deepcopy(model.state_dict())
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib)
    sim.learn_scales()
    loss = _first(sim(*calib[0])).pow(2).mean()
    loss.backward()
    torch.optim.SGD(sim.parameters(), lr=0.1).step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["cnn_model", "bert_model"])
def test_sqnr_floors_and_order_of_precisions(fixture, request):
    model, _, calib = request.getfixturevalue(fixture)
    ref = _first(model(*calib[0]))
    got = {}
    for label, config in PRECISIONS.items():
        sim = _calibrated(request.getfixturevalue(fixture), config)
        with torch.no_grad():
            got[label] = assert_sqnr(_first(sim(*calib[0])), ref, SQNR_FLOOR_DB[label])
    assert got["fp16"] > got["int8"] + 20 and got["int16"] > got["int8"] + 30
    assert got["int8"] > got["w4a8"] + 8
    assert got["int16"] > got["fp16"] > got["bf16"] > got["int8"]


def test_mixed_plan_from_the_issue(bert_model):
    model, inputs, calib = bert_model
    cfg = {
        "default": {"activation": "int8", "weight": "int8"},
        "ops": {"encoder.layer.0.output.dense": {"activation": "int16"}},
    }
    sim = mixq.quantize(model, inputs, cfg).calibrate(calib)
    op = sim.plan["encoder.layer.0.output.dense"]
    assert op.output == ("int16",) and op.weight == {"weight": "int8"}
    # the LayerNorm after it reads the int16 residual sum at int8: one conversion quantizer
    conv = sim.quantizer("encoder.layer.0.output.add@int8")
    assert conv.point.readers == ("encoder.layer.0.output.LayerNorm",)
    assert sim.quantizer("encoder.layer.0.output.add").qtype.name == "int16"
    assert_sqnr(_first(sim(*calib[0])), _first(model(*calib[0])), SQNR_FLOOR_DB["int8"])


def test_qat_step_lowers_the_loss_and_gradients_reach_inputs_and_weights(cnn_model):
    model, inputs, calib = cnn_model
    sim = mixq.quantize(model, inputs, ("int8", "int4")).calibrate(calib)
    sim.learn_scales()
    x = calib[0][0].clone().requires_grad_(True)
    # a target the float model is far from, so the loss has room to fall in a few steps
    # (matching the float output itself starts near 1e-4, where Adam's steps are noise)
    target = torch.randn(_first(model(x)).shape, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam([p for p in sim.parameters() if p.requires_grad], lr=1e-2)
    weight = dict(sim.named_parameters())["module.stem.0.weight"]
    losses = []
    for step in range(8):
        loss = torch.nn.functional.mse_loss(sim(x), target)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        if step == 0:  # gradients of the first step, before training moves anything
            assert x.grad is not None and x.grad.abs().sum() > 0
            assert weight.grad is not None and weight.grad.abs().sum() > 0
            assert sim.quantizer("fc").scale.grad is not None
        opt.step()
    assert losses[-1] < 0.9 * losses[0], losses


def test_switches_by_name(cnn_model):
    model, inputs, calib = cnn_model
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib)
    x = calib[0][0]
    ref, full = _first(model(x)), sim(x)
    with sim.disabled(["fc", "fc.weight"]):
        assert not torch.equal(sim(x), full)
        assert not sim.quantizer("fc").enabled and sim.quantizer("x").enabled
    assert torch.equal(sim(x), full)  # restored on exit
    with sim.only(["fc.weight"]):
        partial = sim(x)
    assert mixq.analysis.sqnr(ref, partial) > mixq.analysis.sqnr(ref, full)
    with pytest.raises(KeyError, match=r"sim\.quantizers"):
        sim.set_enabled(["nope"], False)


def test_calibration_errors_name_the_problem(cnn_model):
    model, inputs, calib = cnn_model
    sim = mixq.quantize(model, inputs, "int8")
    with pytest.raises(CalibrationError, match=r"no range yet.*calibrate"):
        sim(*inputs)
    with pytest.raises(CalibrationError, match="empty"):
        sim.calibrate([])
    bad = calib[0][0].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationError, match=r"'x'.*NaN"):
        sim.calibrate([(bad,)])
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(CalibrationError, match=r"'x'.*Inf"):
        sim.calibrate([calib[0], (bad,)])
    sim.calibrate(calib)  # a failed calibration leaves the sim usable
    assert torch.isfinite(sim(*inputs)).all()


def test_fixed_range_bypasses_calibration(cnn_model):
    model, inputs, calib = cnn_model
    sim = mixq.quantize(model, inputs, "int8")
    sim.set_range("x", 0.0, 2.0)
    sim.calibrate(calib)
    q = sim.quantizer("x")
    assert q.scale.item() == pytest.approx(2.0 / 255) and q.zero_point.item() == -128
    with pytest.raises(ValueError, match="weight quantizer"):
        sim.set_range("fc.weight", 0, 1)


def test_observer_choice_per_quantizer(cnn_model):
    model, inputs, calib = cnn_model
    outlier = [(b[0] * torch.where(torch.rand_like(b[0]) > 0.999, 50.0, 1.0),) for b in calib]
    minmax = mixq.quantize(model, inputs, "int8").calibrate(outlier)
    pct = mixq.quantize(model, inputs, "int8").calibrate(outlier, observer={"x": "percentile"})
    assert pct.quantizer("x").scale < minmax.quantizer("x").scale
    assert pct.quantizer("fc").scale == minmax.quantizer("fc").scale


def test_plan_round_trip_rebuilds_the_same_sim(cnn_model, tmp_path):
    model, inputs, calib = cnn_model
    cfg = mixq.Config(default="int8").set_precision(
        "block.conv1", activation="int16", weight="int4"
    )
    sim = mixq.quantize(model, inputs, cfg).calibrate(calib)
    path = sim.plan.save(tmp_path / "plan.yaml")
    again = mixq.quantize(model, inputs, str(path)).calibrate(calib)
    assert again.plan == sim.plan and again.quantizers == sim.quantizers
    assert torch.equal(again(*inputs), sim(*inputs))
    other, other_inputs, _ = (mixq.zoo.mlp()[0], mixq.zoo.mlp()[1], None)
    with pytest.raises(ConfigError, match="does not match this model"):
        mixq.quantize(other, other_inputs, str(path))


def test_per_block_weights(mlp_model):
    model, inputs, calib = mlp_model
    cfg = mixq.Config(
        default=("int8", "int4"),
        scheme=mixq.Scheme(weight_granularity="per_block", weight_block_size=16),
    )
    sim = mixq.quantize(model, inputs, cfg).calibrate(calib)
    q = sim.quantizer("1.weight")
    sim(*inputs)
    assert q.point.axis == 1 and tuple(q.scale.shape) == (128, 4)  # 64 inputs / 16
    per_channel = mixq.quantize(model, inputs, ("int8", "int4")).calibrate(calib)
    ref = model(*calib[0])
    assert mixq.analysis.sqnr(ref, sim(*calib[0])) > mixq.analysis.sqnr(ref, per_channel(*calib[0]))


def test_batch_norm_is_folded_into_the_weight_grid(cnn_model):
    model, inputs, calib = cnn_model
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib)
    q = sim.quantizer("stem.0.weight")
    w = model.stem[0].weight
    bn = model.stem[1]
    fold = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        out = q(w, bn.weight, bn.running_var)
    expected = mixq.core.primitives.fake_quantize(w * fold, q.scale, q.zero_point, "int8", axis=0)
    torch.testing.assert_close(out * fold, expected, rtol=1e-6, atol=1e-6)
    assert q.scale.shape == (w.shape[0],)


def test_inference_fast_path_equals_fake_quantize_and_sees_new_scales(bert_model):
    from mixq.core import primitives as P

    model, inputs, calib = bert_model
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib)
    q = next(q for q in sim.named_quantizers().values() if q.point.kind == "activation")
    x = torch.randn(4, 16, 64) * 3
    with torch.no_grad():
        fast = q(x)
        assert torch.equal(fast, P.fake_quantize(x, q.scale, q.zero_point, q.qtype))
        state = sim.state_dict()
        state[f"module.{sim.quantizer_nodes[q.name]}.scale"] = q.scale * 2
        before = q.scale
        sim.load_state_dict(state)  # an in-place copy into the same buffer
        assert q.scale is before
        assert torch.equal(q(x), P.fake_quantize(x, q.scale, q.zero_point, q.qtype))
        assert not torch.equal(q(x), fast)
