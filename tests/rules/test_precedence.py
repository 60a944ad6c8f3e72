"""One test per precedence rule of the resolver (see mixq.rules.resolve's docstring)."""

from __future__ import annotations

import json

import pytest

from mixq import Config, ConfigError, ConflictError
from mixq.graph.ir import Graph, Op
from mixq.rules.report import report_dict, report_json, report_text
from mixq.rules.resolve import resolve, resolve_with_report
from mixq.rules.setters import KindSetter, ModuleNameSetter, SensitivitySetter


def _graph() -> Graph:
    """enc.layer.0 / enc.layer.1 (fc -> gelu each) -> head.fc -> softmax, with classes."""
    g = Graph()
    g.add_input("x", "float32")
    prev = "x"
    for name, kind, module in [
        ("enc.layer.0.fc", "linear", "enc.layer.0.fc"),
        ("enc.layer.0.act", "gelu", "enc.layer.0.act"),
        ("enc.layer.1.fc", "linear", "enc.layer.1.fc"),
        ("enc.layer.1.act", "gelu", "enc.layer.1.act"),
        ("head.fc", "linear", "head.fc"),
        ("head.softmax", "softmax", "head"),
    ]:
        weights = {"weight": f"{name}.weight"} if kind == "linear" else {}
        g.add_op(Op(name, kind, module, inputs=[prev], outputs=[name], weights=weights))
        prev = name
    g.outputs = [prev]
    linear = ("torch.nn.modules.linear.Linear",)
    g.modules = {
        "": ("app.Net",),
        "enc": ("app.Encoder",),
        "enc.layer.0": ("app.Layer",),
        "enc.layer.1": ("app.Layer",),
        "enc.layer.0.fc": linear,
        "enc.layer.1.fc": linear,
        "head": ("app.Head",),
        "head.fc": linear,
    }
    return g


def _out(plan, name):
    return plan[name].output[0]


def test_subtree_then_leaf_keeps_the_leaf():
    cfg = Config().set_precision("enc", activation="int16")
    cfg.set_precision("enc.layer.1.fc", activation="fp16")
    plan = resolve(_graph(), cfg)
    assert _out(plan, "enc.layer.0.act") == "int16" and _out(plan, "enc.layer.1.fc") == "fp16"


def test_leaf_then_subtree_gives_the_leaf_the_subtree():
    cfg = Config().set_precision("enc.layer.1.fc", activation="fp16")
    cfg.set_precision("enc", activation="int16")
    assert _out(resolve(_graph(), cfg), "enc.layer.1.fc") == "int16"


def test_type_then_name_and_name_then_type():
    by_class = Config().set_precision("class:Linear", activation="int16")
    by_class.set_precision("head.fc", activation="fp16")
    plan = resolve(_graph(), by_class)
    assert _out(plan, "enc.layer.0.fc") == "int16" and _out(plan, "head.fc") == "fp16"
    by_name = Config().set_precision("head.fc", activation="fp16")
    by_name.set_precision("class:torch.nn.modules.linear.Linear", activation="int16")
    assert _out(resolve(_graph(), by_name), "head.fc") == "int16"


def test_later_wins_across_apis():
    cfg = Config().set_precision("kind:softmax", activation="int16")
    cfg.precision_mode("allow_mix_precision_fp16")  # softmax is on the block list: fp32
    cfg.set_model_output_precision(["fp16"])
    plan = resolve(_graph(), cfg)
    assert plan["head.softmax"].input == ("fp32",) and _out(plan, "head.softmax") == "fp16"
    assert plan["head.softmax"].rule == "rules[2] model_output"
    assert _out(plan, "enc.layer.0.fc") == "fp16"  # white list under the mode


def test_class_of_a_containing_module_covers_its_subtree():
    plan = resolve(_graph(), Config().set_precision("class:app.Layer", activation="int16"))
    assert [_out(plan, n) for n in plan.ops] == ["int16"] * 4 + ["int8", "int8"]


@pytest.mark.parametrize(
    "target, expected",
    [
        ("enc.layer.*.act", ["enc.layer.0.act", "enc.layer.1.act"]),
        ("re:enc\\.layer\\.\\d\\.fc", ["enc.layer.0.fc", "enc.layer.1.fc"]),
        ("kind:gelu", ["enc.layer.0.act", "enc.layer.1.act"]),
        ("gelu", ["enc.layer.0.act", "enc.layer.1.act"]),
        ("tensor:head.fc", ["head.fc"]),
        ("head", ["head.fc", "head.softmax"]),
    ],
)
def test_target_forms(target, expected):
    plan = resolve(_graph(), Config().set_precision(target, activation="int16"))
    assert [n for n in plan.ops if _out(plan, n) == "int16"] == expected


def test_weight_by_role_and_activation_left_alone():
    cfg = Config(default=("int8", "int8")).set_precision("head.fc", weight={"weight": "int4"})
    plan = resolve(_graph(), cfg)
    assert plan["head.fc"].weight == {"weight": "int4"} and _out(plan, "head.fc") == "int8"


def test_setter_chain_first_match_wins_and_rules_apply_on_top(tmp_path):
    table = tmp_path / "sens.csv"
    table.write_text(
        "op,kind,score\nenc.layer.1.act,activation,9\nhead.fc,weight,5\n"
        "enc.layer.0.fc,activation,1\n"
    )
    setters = [
        ModuleNameSetter({"enc.layer.1": "fp16"}),
        SensitivitySetter(str(table), ratio=0.5, kind="both", high="int16"),
        KindSetter({"gelu": "bf16"}),
    ]
    cfg = Config(setters=setters).set_precision("enc.layer.0.act", activation="int4")
    plan = resolve(_graph(), cfg)
    assert _out(plan, "enc.layer.1.act") == "fp16"  # module name beat sensitivity rank 1
    assert plan["head.fc"].weight == {"weight": "int16"}  # rank 2 of 3: inside top 50%
    assert _out(plan, "head.fc") == "int8"  # a weight row leaves the activation alone
    assert _out(plan, "enc.layer.0.act") == "int4"  # kind setter said bf16, the rule won
    assert _out(plan, "enc.layer.0.fc") == "int8"  # rank 3: outside the top 50%


def test_sensitivity_ratio_counts_the_whole_table_then_filters_by_kind():
    rows = [
        {"op": "head.fc", "kind": "weight", "score": 3},
        {"op": "enc.layer.0.fc", "kind": "activation", "score": 2},
        {"op": "enc.layer.1.fc", "kind": "activation", "score": 1},
    ]
    plan = resolve(_graph(), Config(setters=[SensitivitySetter(rows, topk=2)]))
    assert [n for n in plan.ops if _out(plan, n) == "int16"] == ["enc.layer.0.fc"]


def test_model_input_precision_and_conversion_are_reported():
    cfg = Config().set_model_input_precision(["int16"])
    res = resolve_with_report(_graph(), cfg)
    assert res.plan.inputs == {"x": "int16"}
    data = report_dict(_graph(), res)
    assert data["conversions"] == [
        {"tensor": "x", "from": "int16", "to": "int8", "readers": ["enc.layer.0.fc"]}
    ]


def test_unknown_target_strict_error_and_best_effort_warning():
    cfg = Config().set_precision("enc.layr.0.fc", activation="int16")
    with pytest.raises(ConfigError, match=r"close matches: \['enc.layer.0.fc'"):
        resolve(_graph(), cfg)
    res = resolve_with_report(_graph(), cfg, strict=False)
    assert any("warning" in n and "enc.layr.0.fc" in n for n in res.notes)


def test_target_conflict_strict_names_both_sides_best_effort_repairs():
    cfg = Config(target="int8-int16-npu").set_precision(
        "head.fc", activation="int16", weight="int16"
    )
    with pytest.raises(ConflictError) as info:
        resolve(_graph(), cfg)
    assert "head.fc" in str(info.value) and "int8-int16-npu" in str(info.value)
    assert "int16 weight with int16 activation" in str(info.value)
    res = resolve_with_report(_graph(), cfg, strict=False)
    assert res.plan["head.fc"].weight == {"weight": "int8"}
    assert res.plan["head.fc"].output == ("int16",)
    assert any(n.startswith("adjusted: head.fc") for n in res.notes)


def test_conflict_inside_a_fused_group():
    g = Graph()
    g.add_input("x", "float32")
    g.add_op(
        Op(
            "conv",
            "conv",
            "conv",
            inputs=["x"],
            outputs=["conv"],
            weights={"weight": "conv.weight"},
        )
    )
    g.add_op(Op("relu", "relu", "relu", inputs=["conv"], outputs=["relu"]))
    cfg = Config().set_precision("conv", activation="int16")
    cfg.set_precision("relu", activation="fp16")
    with pytest.raises(ConflictError, match=r"conv.*int16.*relu.*fp16.*one kernel"):
        resolve(g, cfg)
    res = resolve_with_report(g, cfg, strict=False)
    assert res.plan["conv"].output == ("fp16",) and "adjusted" in res.notes[0]


def test_report_has_the_three_sections():
    cfg = Config().set_precision("enc", activation="int16")
    text = report_text(_graph(), resolve_with_report(_graph(), cfg))
    for heading in [
        "Requests as given",
        "After preprocessing",
        "After propagation",
        "Conversions (1)",
    ]:
        assert heading in text
    assert "rules[0] 'enc'" in text and "enc.layer.0.fc, enc.layer.0.act" in text


def _two_inputs() -> Graph:
    """a, b -> add -> fc -> (out, fc itself), to give IO requests two slots each."""
    g = Graph()
    g.add_input("a", "float32")
    g.add_input("b", "float32")
    g.add_op(Op("add", "add", "add", inputs=["a", "b"], outputs=["sum"]))
    g.add_op(Op("fc", "linear", "fc", inputs=["sum"], outputs=["fc"], weights={"weight": "w"}))
    g.add_op(Op("act", "gelu", "act", inputs=["fc"], outputs=["act"]))
    g.outputs = ["fc", "act"]
    return g


def test_none_in_model_io_requests_leaves_that_tensor_alone():
    cfg = Config().set_precision("act", activation="fp16")
    cfg.set_model_input_precision([None, "int16"]).set_model_output_precision([None, "fp32"])
    plan = resolve(_two_inputs(), cfg)
    assert plan.inputs == {"a": "int8", "b": "int16"}
    assert _out(plan, "fc") == "int8" and plan["fc"].rule == "default"
    assert _out(plan, "act") == "fp32" and plan["act"].rule == "rules[2] model_output"
    with pytest.raises(ConfigError, match="3 precisions but the model has 2"):
        resolve(_two_inputs(), Config().set_model_input_precision(["int8"] * 3))


def test_report_json_has_the_same_sections_and_the_warnings():
    cfg = Config().set_precision("enc", activation="int16").set_precision("nope", "fp16")
    res = resolve_with_report(_graph(), cfg, strict=False)
    data = json.loads(report_json(_graph(), res))
    assert list(data)[:3] == ["requests", "after_preprocessing", "after_propagation"]
    assert [r["target"] for r in data["requests"]] == ["enc", "nope"]
    assert data["after_preprocessing"][1] == {"rule": "rules[1] 'nope'", "ops": []}
    assert len(data["after_propagation"]) == 6 and data["conversions"]
    assert any("nope" in n for n in data["notes"])
    assert "warning: rules[1] 'nope': no op matches" in report_text(_graph(), res)
