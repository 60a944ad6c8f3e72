from __future__ import annotations

import pytest

from mixq import Config, ConfigError, OpPlan, Plan, Precision, Scheme
from mixq.rules.config import Granularity, Request


def _plan() -> Plan:
    ops = {
        "conv": OpPlan("conv", "conv", "conv", ("int8",), ("int16",), {"weight": "int4"}, "x"),
        "flat": OpPlan("flat", "flatten", "", ("int16",), ("int16",), {}, "inherits conv"),
    }
    return Plan(
        ops=ops,
        default=Precision("int8", "int4"),
        scheme=Scheme(weight_granularity="per_tensor", observer="mse"),
        target="t",
    )


def _config() -> Config:
    cfg = Config(default=("int8", "int4"), scheme=Scheme(activation_symmetric=True))
    return cfg.set_precision("fc", activation="int16").set_precision("conv", weight="int8")


def _target():
    from mixq import load_target

    return load_target("int8-int16-npu")


@pytest.mark.parametrize("make", [_config, _plan, _target], ids=["Config", "Plan", "Target"])
def test_round_trip_through_dict_and_yaml(make, tmp_path):
    obj = make()
    assert type(obj).from_dict(obj.to_dict()) == obj
    path = obj.save(tmp_path / "x.yaml")
    assert type(obj).load(path) == obj


def test_ops_shorthand_becomes_ordered_rules():
    cfg = Config.from_dict(
        {
            "default": {"activation": "int8", "weight": "int8"},
            "ops": {"a": {"activation": "int16"}, "b": "fp16"},
        }
    )
    assert cfg.rules == [Request("a", "int16", None), Request("b", "fp16", "fp16")]


def test_precision_forms():
    assert Precision.parse("int8") == Precision("int8", "int8")
    assert Precision.parse(("int8", "int4")) == Precision("int8", "int4")
    assert Precision.parse({"weight": "int4"}) == Precision(None, "int4")
    assert Precision("float16", "bfloat16") == Precision("fp16", "bf16")


@pytest.mark.parametrize(
    "data, words",
    [
        ({"defualt": "int8"}, ["defualt", "allowed keys"]),
        ({"default": "int9"}, ["int9", "int8", "fp16"]),
        ({"scheme": {"observr": "mse"}}, ["observr", "scheme"]),
        ({"rules": [{"activation": "int8"}]}, ["target"]),
        ({"version": 99}, ["newer", "upgrade"]),
        ({"scheme": {"weight_granularity": "per_row"}}, ["per_row", "per_channel"]),
        ({"scheme": {"weight_granularity": "per_block"}}, ["weight_block_size"]),
    ],
)
def test_invalid_config_is_rejected_with_guidance(data, words):
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    for word in words:
        assert word in str(info.value)


def test_plan_loader_rejects_a_config_and_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match="not a mixq plan"):
        Plan.from_dict(_config().to_dict())
    data = _plan().to_dict()
    data["extra"] = 1
    with pytest.raises(ConfigError, match="extra"):
        Plan.from_dict(data)
    assert Plan.is_plan_file(_plan().save(tmp_path / "p.yaml"))
    assert not Plan.is_plan_file(_config().save(tmp_path / "c.yaml"))


def test_scheme_granularity_is_an_enum_that_reads_as_text():
    s = Scheme(weight_granularity="per_block", weight_block_size=32)
    assert s.weight_granularity is Granularity.PER_BLOCK
    assert _config().to_dict()["scheme"]["weight_granularity"] == "per_channel"


def test_plan_table_lists_every_op():
    rows = _plan().table().rows
    assert [r["name"] for r in rows] == ["conv", "flat"]
    assert rows[0]["weight"] == {"weight": "int4"} and rows[1]["rule"] == "inherits conv"
