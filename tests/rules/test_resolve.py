"""One test per precedence rule of mixq.rules.resolve, plus quantization-point placement."""

from __future__ import annotations

import pytest

from mixq import Config, ConfigError
from mixq.graph.fusion import find_fusion_groups
from mixq.graph.ir import Graph, Op
from mixq.plan.points import quantization_points
from mixq.rules.resolve import resolve


def _graph() -> Graph:
    """x -> conv -> bn -> relu -> flatten -> fc -> softmax (conv-bn-relu fuse)."""
    g = Graph()
    g.add_input("x", "float32")
    chain = [
        ("conv", "conv", {"weight": "conv.weight"}),
        ("bn", "batch_norm", {}),
        ("relu", "relu", {}),
        ("flatten", "flatten", {}),
        ("fc", "linear", {"weight": "fc.weight"}),
        ("softmax", "softmax", {}),
    ]
    prev = "x"
    for name, kind, weights in chain:
        g.add_op(Op(name, kind, name, inputs=[prev], outputs=[name], weights=weights))
        prev = name
    g.outputs = [prev]
    for t in g.tensors.values():
        t.quantizable = True
    return g


def test_default_applies_to_every_op():
    plan = resolve(_graph(), Config(default=("int8", "int4")))
    assert plan["fc"].output == ("int8",) and plan["fc"].weight == {"weight": "int4"}
    assert plan["softmax"].rule == "default"


def test_request_names_the_rule_that_decided():
    plan = resolve(_graph(), Config().set_precision("fc", activation="int16"))
    assert plan["fc"].input == ("int16",) and plan["fc"].output == ("int16",)
    assert plan["fc"].weight == {"weight": "int8"}  # weight left alone by the request
    assert plan["fc"].rule == "rules[0] 'fc'"


def test_later_request_wins():
    cfg = Config().set_precision("fc", activation="int16").set_precision("fc", activation="fp16")
    assert resolve(_graph(), cfg)["fc"].output == ("fp16",)


def test_fused_group_runs_at_one_precision():
    groups = find_fusion_groups(_graph())
    assert groups["bn"].ops == ("conv", "bn", "relu") and groups["bn"].output == "relu"
    plan = resolve(_graph(), Config().set_precision("relu", activation="int16"))
    assert {plan[n].output for n in ("conv", "bn", "relu")} == {("int16",)}
    assert plan["relu"].rule == "rules[0] 'relu'"
    assert plan["conv"].rule == "group conv (rules[0] 'relu')"


def test_data_movement_inherits_its_input():
    cfg = (
        Config()
        .set_precision("relu", activation="int16")
        .set_precision("flatten", activation="int4")
    )
    plan = resolve(_graph(), cfg)
    assert plan["flatten"].output == ("int16",) and plan["flatten"].rule == "inherits relu"


def test_data_movement_inherits_what_the_target_repair_left():
    """Best-effort moves conv-bn-relu off fp16 (the NPU target runs no fp16 conv); flatten
    reads relu's output, so it carries the repaired precision, not the requested one."""
    cfg = Config(target="int8-int16-npu").set_precision("relu", activation="fp16")
    plan = resolve(_graph(), cfg, strict=False)
    assert plan["relu"].output != ("fp16",)
    assert plan["flatten"].input == plan["relu"].output == plan["flatten"].output


def test_unknown_op_name_is_an_error_with_candidates():
    with pytest.raises(
        ConfigError, match=r"no op matches 'fc2'; close matches: \['fc'\].*mixq plan"
    ):
        resolve(_graph(), Config().set_precision("fc2", activation="int16"))


def test_points_sit_at_group_outputs_inputs_and_weights():
    names = [p.name for p in quantization_points(_graph(), resolve(_graph(), Config()))]
    assert names == ["x", "relu", "fc", "softmax", "conv.weight", "fc.weight"]


def test_lowering_a_tensor_adds_one_conversion_and_fp32_adds_none():
    cfg = (
        Config()
        .set_precision("relu", activation="int16")
        .set_precision("softmax", activation="fp32")
    )
    points = {p.name: p for p in quantization_points(_graph(), resolve(_graph(), cfg))}
    assert points["x"].precision == "int16"  # a model input takes its highest reader
    assert points["relu"].precision == "int16"
    conv = points["flatten@int8"]  # fc reads the int16 tensor (through flatten) at int8
    assert conv.readers == ("fc",) and conv.target == "flatten"
    assert "softmax" not in points
