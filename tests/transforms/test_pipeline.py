"""Transforms in the flow: asked for by argument, config or plan; recorded; reported."""

from __future__ import annotations

import pytest
import torch

import mixq
from mixq.core.errors import CalibrationError, ConfigError
from mixq.plan.plan import Plan
from mixq.transforms import TRANSFORMS, apply_transforms

ALL = ["smooth", "equalize", "adaround", "bias_correct"]


@pytest.fixture(scope="module")
def all_sim(mlp_model):
    model, inputs, calib = mlp_model
    return mixq.quantize(model, inputs, "int8", transforms=ALL, calib=calib)


def test_the_four_transforms_are_registered():
    assert {t: TRANSFORMS[t].stage for t in ALL} == {
        "smooth": "float",
        "equalize": "float",
        "adaround": "weights",
        "bias_correct": "weights",
    }


def test_plan_records_the_transforms_and_round_trips(all_sim, tmp_path):
    assert [t["name"] for t in all_sim.plan.transforms] == ALL
    path = all_sim.plan.save(tmp_path / "plan.yaml")
    loaded = Plan.load(path)
    assert loaded == all_sim.plan and loaded.transforms == all_sim.plan.transforms
    assert Plan.from_dict(all_sim.plan.to_dict()) == all_sim.plan


def test_a_saved_plan_reapplies_its_transforms(all_sim, mlp_model, tmp_path):
    model, inputs, calib = mlp_model
    path = all_sim.plan.save(tmp_path / "plan.yaml")
    again = mixq.quantize(model, inputs, str(path), calib=calib)
    assert [r.name for r in again.transform_records] == ALL
    params = dict(all_sim.module.named_parameters())
    for name, value in again.module.named_parameters():
        assert torch.equal(value, params[name]), name


def test_resolution_report_lists_what_each_transform_changed(all_sim):
    section = all_sim.resolution_report().split("Transforms:")[1]
    for name in ALL:
        assert f"  {name}: " in section
    assert "mse_nearest" in section and "shift_norm" in section


def test_json_resolution_report_carries_the_transforms(all_sim, tmp_path):
    import json

    all_sim.resolution_report(tmp_path / "report.json")
    data = json.loads((tmp_path / "report.json").read_text())
    assert [t["name"] for t in data["transforms"]] == list(ALL)
    records = {r.name: r for r in all_sim.transform_records}
    for t in data["transforms"]:  # each says what it did, or why it did nothing
        assert t["layers"] == json.loads(json.dumps(records[t["name"]].layers))
        assert t["layers"] or t["notes"], t["name"]


def test_transforms_from_the_yaml_config(mlp_model, tmp_path):
    model, inputs, _ = mlp_model
    cfg = mixq.Config.from_dict({"default": "int8", "transforms": ["equalize"]})
    assert mixq.Config.from_dict(cfg.to_dict()) == cfg
    path = cfg.save(tmp_path / "cfg.yaml")
    sim = mixq.quantize(model, inputs, str(path))
    assert [t["name"] for t in sim.plan.transforms] == ["equalize"]
    plain = mixq.quantize(model, inputs, str(path), transforms=[])  # the argument wins
    assert not plain.plan.transforms and not hasattr(plain, "transform_records")


def test_the_users_model_is_not_modified(mlp_model, all_sim):
    model, inputs, calib = mlp_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mixq.quantize(model, inputs, "int8", transforms=ALL, calib=calib)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    ("transforms", "message"),
    [
        (["smoth"], "did you mean 'smooth'"),
        ([{"name": "adaround", "iteration": 5}], "did you mean 'iterations'"),
        ([{"alpha": 0.5}], "'name' key"),
    ],
)
def test_bad_transforms_are_config_errors(transforms, message, mlp_model):
    model, inputs, _ = mlp_model
    with pytest.raises(ConfigError, match=message):
        mixq.quantize(model, inputs, "int8", transforms=transforms)


def test_onnx_models_and_weight_transforms_without_a_sim_are_refused(mlp_model):
    model, inputs, _ = mlp_model
    with pytest.raises(ConfigError, match="PyTorch models"):
        mixq.quantize("model.onnx", inputs, "int8", transforms=["smooth"])
    with pytest.raises(ConfigError, match="need a Sim"):
        apply_transforms(model, inputs, ["adaround"])


def test_empty_calibration_data_is_an_error(mlp_model):
    model, inputs, _ = mlp_model
    with pytest.raises(CalibrationError, match="calib is empty"):
        mixq.quantize(model, inputs, "int8", transforms=["smooth"], calib=[])
