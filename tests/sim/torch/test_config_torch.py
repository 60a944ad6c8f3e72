"""Configuration on captured models: module objects and classes, vendor lists, fixed ranges."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixq
from mixq import Config, ConfigError
from mixq.rules.setters import SensitivitySetter


def test_module_object_and_class_targets(bert_model):
    model, inputs, _ = bert_model
    cfg = Config().set_precision(nn.LayerNorm, activation="fp16")
    cfg.set_precision(model.encoder.layer[1].intermediate, activation="int16")
    sim = mixq.quantize(model, inputs, cfg)
    norms = [op for op in sim.plan if op.kind == "layer_norm"]
    assert len(norms) == 5 and all(op.output == ("fp16",) for op in norms)
    assert sim.plan["encoder.layer.1.intermediate.dense"].output == ("int16",)
    assert sim.plan["encoder.layer.0.intermediate.dense"].output == ("int8",)
    with pytest.raises(ConfigError, match="bind it to its model"):
        cfg.to_dict()
    assert cfg.bind(model).to_dict()["rules"][1]["target"] == "encoder.layer.1.intermediate"


def test_module_of_another_model_is_rejected(bert_model):
    model, inputs, _ = bert_model
    cfg = Config().set_precision(nn.Linear(2, 2), activation="int16")
    with pytest.raises(ConfigError, match="not a module of the model"):
        mixq.quantize(model, inputs, cfg)


def test_ascend_mixed_mode_on_bert(bert_model):
    model, inputs, calib = bert_model
    cfg = Config().precision_mode("mixed_float16", keep_dtype=["OpType::Gelu"])
    sim = mixq.quantize(model, inputs, cfg).calibrate(calib)
    plan = sim.plan
    assert plan["encoder.layer.0.attention.self.query"].output == ("fp16",)  # white
    assert plan["encoder.layer.0.attention.self.softmax"].output == ("fp32",)  # black
    assert plan["encoder.layer.0.intermediate.intermediate_act_fn"].output == ("fp32",)
    # gray: the scale multiply follows the fp16 matmul in front of it
    assert plan["encoder.layer.0.attention.self.mul"].output == ("fp16",)
    assert all(sim.quantizer(q).qtype.is_floating_point for q in sim.quantizers)
    ref = model(*calib[0]).last_hidden_state
    assert mixq.analysis.sqnr(ref, sim(*calib[0]).last_hidden_state) > 50


def test_qaic_node_precision_file_selects_exactly_those_ops(cnn_model, tmp_path):
    model, inputs, _ = cnn_model
    npi = tmp_path / "npi.yaml"
    npi.write_text("FP16NodeInstanceNames: [block.relu, fc]\nFP32NodeInstanceNames: [pool]\n")
    sim = mixq.quantize(model, inputs, Config().load_qaic_npi(npi))
    by_precision = {}
    for op in sim.plan:
        if not op.rule.startswith("inherits"):
            by_precision.setdefault(op.output[0], []).append(op.name)
    assert by_precision["fp32"] == ["pool"]
    # block.relu is fused with its conv and batch-norm: the whole kernel runs in fp16
    assert by_precision["fp16"] == ["block.conv1", "block.bn1", "block.relu", "fc"]


def test_keep_original_precision_by_glow_kind(cnn_model):
    model, inputs, _ = cnn_model
    cfg = Config().keep_original_precision(["Add"]).execute_in_fp16(["FullyConnected"])
    plan = mixq.quantize(model, inputs, cfg).plan
    assert plan["block.add"].output == ("fp32",) and plan["fc"].output == ("fp16",)


def test_fixed_range_from_config_and_coverage_note(cnn_model):
    model, inputs, calib = cnn_model
    cfg = Config().set_range("x", 0.0, 0.5)  # the inputs reach 1.0
    sim = mixq.quantize(model, inputs, cfg)
    with pytest.warns(UserWarning, match=r"fixed range \[0, 0.5\] of 'x' does not cover"):
        sim.calibrate(calib)
    assert sim.quantizer("x").scale.item() == pytest.approx(0.5 / 255)
    assert "does not cover" in sim.resolution_report()
    ok = mixq.quantize(model, inputs, Config().set_threshold("x", 1.0)).calibrate(calib)
    assert ok.calibration_notes == [] and ok.quantizer("x").scale.item() == pytest.approx(2.0 / 255)
    with pytest.raises(ConfigError, match="no quantizer"):
        mixq.quantize(model, inputs, Config().set_range("nope", 0, 1))


def test_full_config_round_trips_through_yaml(tmp_path):
    rows = tmp_path / "sens.json"
    rows.write_text('{"rows": [{"op": "fc", "kind": "activation", "score": 2.0}]}')
    cfg = Config(
        default=("int8", "int4"),
        target="int8-int16-npu",
        setters=[SensitivitySetter(str(rows), ratio=0.5)],
    )
    cfg.set_precision("encoder.*", activation="int16", weight={"weight": "int8"})
    cfg.set_model_input_precision([None, "int16"]).set_model_output_precision(["fp32"])
    cfg.precision_mode(
        "allow_mix_precision_bf16",
        trust=["Gelu"],
        block=["add"],
        modify_mixlist={"black-list": {"to-add": ["Mul"]}},
    )
    cfg.set_range("x", 0, 200)
    again = Config.load(cfg.save(tmp_path / "cfg.yaml"))
    assert again == cfg and again.to_dict() == cfg.to_dict()


def test_misspelled_keys_get_the_closest_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'rules'"):
        Config.from_dict({"rule": []})
    with pytest.raises(ConfigError, match="did you mean 'activation'"):
        Config.from_dict({"rules": [{"target": "fc", "activaton": "int8"}]})
    with pytest.raises(ConfigError, match="did you mean 'block'"):
        Config.from_dict({"rules": [{"precision_mode": "fp16", "blocks": ["softmax"]}]})


def test_cli_plan_writes_plan_and_report(tmp_path):
    from typer.testing import CliRunner

    from mixq.cli.main import app

    cfg = tmp_path / "cfg.yaml"
    Config(target="int8-int16-npu").set_precision("block", activation="int16", weight="int16").save(
        cfg
    )
    runner = CliRunner()
    strict = runner.invoke(app, ["plan", "mixq.zoo:resnet_like", "--config", str(cfg)])
    # the CLI's error boundary turns the ConflictError into one line and exit code 2
    said = strict.output + str(strict.exception)
    assert strict.exit_code == 2 and "allows int16 on only one" in said
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["plan", "mixq.zoo:resnet_like", "--config", str(cfg), "--best-effort", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "adjusted: block.conv1: weight int16 -> int8" in result.output
    report = (out / "resolution_report.txt").read_text()
    assert "After propagation" in report and "Conversions" in report
    assert mixq.Plan.load(out / "plan.yaml")["block.conv1"].weight == {"weight": "int8"}
    generic = runner.invoke(
        app, ["plan", "mixq.zoo:resnet_like", "--config", str(cfg), "--target", "generic"]
    )
    assert generic.exit_code == 0 and "adjusted" not in generic.output


def test_strict_plan_from_dict_targets_real_names(cnn_model):
    model, inputs, calib = cnn_model
    sim = mixq.quantize(model, inputs, {"default": "int8", "ops": {"fc": "fp16"}})
    assert torch.isfinite(sim.calibrate(calib)(*inputs)).all()


def test_atc_files_feed_the_precision_mode(cnn_model, tmp_path):
    model, inputs, _ = cnn_model
    keep = tmp_path / "keep_dtype.cfg"
    keep.write_text("fc\nOpType::Add\n")
    mixlist = tmp_path / "mixlist.json"
    mixlist.write_text('{"black-list": {"to-add": ["AdaptiveAvgPool2d", "Conv2D"]}}')
    cfg = Config().precision_mode_from_files("allow_mix_precision", keep, mixlist)
    sim = mixq.quantize(model, inputs, cfg)
    plan = sim.plan
    assert plan["fc"].output == ("fp32",) and plan["block.add"].output == ("fp32",)
    assert plan["stem.0"].output == ("fp32",)  # Conv2D moved to the block list
    bad = tmp_path / "bad.json"
    bad.write_text('{"black-list": {"to-add": ["MatMul"]}, "white-list": {"to-add": ["MatMul"]}}')
    with pytest.raises(ConfigError, match="MatMul"):
        Config().precision_mode_from_files("allow_mix_precision", modify_mixlist=bad)


def test_apply_resolves_all_requests_strict_or_best_effort(cnn_model):
    model, inputs, _ = cnn_model
    cfg = mixq.Config("int8", target="int8-int16-npu")
    cfg.set_precision("block.conv1", activation="int16", weight="int16")  # a forbidden pair
    with pytest.raises(mixq.ConflictError, match=r"block\.conv1"):
        mixq.apply(cfg, model, inputs, strict=True)
    sim = mixq.apply(cfg, model, inputs, strict=False)
    assert sim.plan["block.conv1"].weight == {"weight": "int8"}
    assert "block.conv1" in sim.resolution_report()
