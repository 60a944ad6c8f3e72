from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mixq import zoo
from mixq.analysis.calls import record_calls
from mixq.api import check
from mixq.core.errors import ConflictError
from mixq.rules.config import Config, Scheme

RESNET_CONVS = ["stem.0", "block.conv1", "block.conv2", "down.0"]


class _Shared(nn.Module):
    """relu called 3 times at scales 1, 10, 100; clip twice with the same range; spares."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.clip = nn.Hardtanh()
        self.fc = nn.Linear(4, 4)
        self.heads = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])  # heads.1 unused
        self.spare = nn.Conv2d(1, 1, 1)  # never called
        self.extra = nn.ModuleList([nn.ReLU()])  # never called; only extra.0 is listed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(x) + self.relu(10 * x) + self.relu(100 * x)
        y = y + self.clip(100 * x) + self.clip(-100 * x)
        return self.heads[0](self.fc(y))


class _ConvFeedsTwo(nn.Module):
    """conv's output feeds both relu and add, so conv + relu cannot fuse."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.relu(y) + y


class _ConvIsOutput(nn.Module):
    """conv -> dropout -> relu, with conv's output also returned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.drop = nn.Dropout()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, self.relu(self.drop(y))


SHARED_X = torch.tensor([[-1.0, 0.5, 1.0, 2.0]])


@pytest.fixture(scope="module")
def shared_result():
    torch.manual_seed(0)
    return check(_Shared().eval(), (SHARED_X,))


@pytest.fixture(scope="module")
def resnet_default():
    model, inputs = zoo.resnet_like()
    return check(model, inputs)


def _rows(table, key):
    return {row[key]: row for row in table.rows}


# -- call counts, shared and unused modules --------------------------------------------------
def test_call_counts(shared_result):
    calls = {r["module"]: r["calls"] for r in shared_result.calls.rows}
    assert calls == {
        "": 1,
        "relu": 3,
        "clip": 2,
        "fc": 1,
        "heads": 0,
        "heads.0": 1,
        "heads.1": 0,
        "spare": 0,
        "extra": 0,
        "extra.0": 0,
    }
    flagged = [r["module"] for r in shared_result.calls.rows if r["shared"]]
    assert flagged == ["relu", "clip"]


def test_unused_skips_root_and_containers(shared_result):
    assert shared_result.unused.rows == [
        {"module": "heads.1", "type": "Linear"},
        {"module": "spare", "type": "Conv2d"},
        {"module": "extra.0", "type": "ReLU"},
    ]


class _ChildOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = nn.Sequential(nn.Linear(2, 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pair[0](x)  # the Sequential itself never runs; pair.1 never runs


def test_calls_run_a_copy_in_eval_mode():
    model = nn.Sequential(nn.Dropout(0.5)).train()
    assert record_calls(model, torch.ones(64))["0"].ranges == [(1.0, 1.0)]
    assert model.training


def test_parent_of_called_modules_is_not_unused():
    records = record_calls(_ChildOnly(), torch.ones(1, 2))
    assert {n: r.calls for n, r in records.items()} == {"": 1, "pair": 0, "pair.0": 1, "pair.1": 0}
    assert check(_ChildOnly(), torch.ones(1, 2)).unused.rows == [
        {"module": "pair.1", "type": "ReLU"}
    ]


def test_shared_ranges_and_needs_separate(shared_result):
    rows = _rows(shared_result.shared, "module")
    assert list(rows) == ["relu", "clip"]
    relu, clip = rows["relu"], rows["clip"]
    assert relu["ranges"] == ["[0, 2]", "[0, 20]", "[0, 200]"]
    assert relu["range_ratio"] == pytest.approx(100.0)
    assert relu["needs_separate"] is True
    assert relu["separate_quantizers"] == "yes (mixq gives every call its own)"
    assert clip["ranges"] == ["[-1, 1]", "[-1, 1]"]
    assert clip["range_ratio"] == 1.0
    assert clip["needs_separate"] is False


def test_shifted_ranges_need_separate_and_zero_width_is_inf(tmp_path):
    class Shifted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(-x.abs()) + self.relu(x.abs())  # ranges [0, 0] and [0, 2]

    result = check(Shifted(), torch.tensor([-1.0, 2.0]), out_dir=tmp_path)
    row = result.shared.rows[0]
    assert row["range_ratio"] == float("inf") and row["needs_separate"] is True
    saved = json.loads((tmp_path / "model_check_result.json").read_text())
    assert saved["shared"]["rows"][0]["range_ratio"] == "inf"


def test_resnet_shares_its_relu_with_similar_ranges(resnet_default):
    (row,) = resnet_default.shared.rows
    assert (row["module"], row["calls"], row["needs_separate"]) == ("block.relu", 2, False)
    assert 1.0 < row["range_ratio"] < 2.0


# -- unfused patterns ----------------------------------------------------------------------
def test_conv_feeding_two_ops_is_unfused():
    result = check(_ConvFeedsTwo(), (torch.randn(1, 3, 8, 8),))
    assert result.unfused.rows == [
        {"ops": "conv -> relu", "reason": "conv's output also feeds add (2 consumers)"}
    ]


class _TwoConvsAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)
        self.b = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def test_add_already_fused_with_the_other_conv_is_not_reported():
    # a + add fuse; b cannot join an add that is already in a's group, and nothing
    # the user changes would let it, so it is no finding.
    assert check(_TwoConvsAdd(), (torch.randn(1, 3, 4, 4),)).unfused.rows == []


def test_model_output_through_dropout_is_unfused():
    result = check(_ConvIsOutput(), (torch.randn(1, 3, 4, 4),))
    assert result.unfused.rows == [
        {"ops": "conv -> drop -> relu", "reason": "conv's output is a model output"}
    ]


def test_fused_models_have_no_unfused_rows(resnet_default, mlp_model):
    # resnet_like: every conv-bn(-add)-relu fuses; stem.2 feeds two ops but a relu
    # starts no pattern, and fc is the last op.
    assert resnet_default.unfused.rows == []
    model, inputs, _ = mlp_model
    assert check(model, inputs).unfused.rows == []


# -- layers ----------------------------------------------------------------------------------
def test_layers_w4a8_resnet():
    model, inputs = zoo.resnet_like()
    rows = _rows(check(model, inputs, ("int8", "int4")).layers, "op")
    assert list(rows) == [
        "stem.0", "stem.1", "stem.2", "block.conv1", "block.bn1", "block.relu", "block.conv2",
        "block.bn2", "block.add", "block.relu#1", "down.0", "down.1", "down.2", "pool",
        "flatten", "fc",
    ]  # fmt: skip
    for name in [*RESNET_CONVS, "fc"]:
        row = rows[name]
        assert (row["weight dtype"], row["channel axis"], row["observer"]) == (
            "int4",
            "0",
            "minmax",
        )
        assert (row["input dtype"], row["output dtype"]) == ("int8", "int8")
    assert rows["stem.1"]["weight dtype"] == "-" and rows["stem.1"]["channel axis"] == "-"
    assert rows["block.add"]["input dtype"] == "int8,int8"
    assert rows["block.relu#1"]["fused into"] == "block.conv2"
    assert rows["pool"]["fused into"] == "" and rows["fc"]["fused into"] == ""
    assert rows["flatten"]["observer"] == "-"  # inherits pool's encoding


def test_layers_float_activation_with_int_weight():
    model, inputs = zoo.resnet_like()
    rows = _rows(check(model, inputs, ("fp16", "int8")).layers, "op")
    assert rows["fc"]["observer"] == "minmax (weight)"
    assert rows["pool"]["observer"] == "-"


# -- unusual configurations ------------------------------------------------------------------
def test_default_int8_flags_only_the_last_layer(resnet_default):
    assert resnet_default.unusual.rows == [
        {
            "op/tensor": "fc",
            "issue": "last layer outputs int8; consider a float/int16 output",
            "advice": "Config.set_model_output_precision(['fp32']) or ['int16'] keeps it precise",
        }
    ]


def test_target_forbidden_pair_is_reported_when_not_strict():
    model, inputs = zoo.resnet_like()
    cfg = Config(target="int8-int16-npu").set_precision(
        "stem.0", activation="int16", weight="int16"
    )
    rows = [r for r in check(model, inputs, cfg).unusual.rows if r["op/tensor"] == "stem.0"]
    assert len(rows) == 1
    assert rows[0]["issue"] == (
        "stem.0 wants int16 weight with int16 activation; "
        "target 'int8-int16-npu' allows int16 on only one of them"
    )
    assert "int16 activation, int8 weight" in rows[0]["advice"]
    assert cfg.target == "int8-int16-npu"  # the user's config is not changed
    with pytest.raises(ConflictError):
        check(model, inputs, cfg, strict=True)


def test_fixed_range_per_tensor_and_float_output_rows():
    model, inputs = zoo.resnet_like()
    cfg = Config(scheme=Scheme(weight_granularity="per_tensor")).set_range("x", 0, 1)
    cfg.set_model_output_precision(["fp32"])
    result = check(model, inputs, cfg)
    issues = [(r["op/tensor"], r["issue"]) for r in result.unusual.rows]
    assert issues == [
        ("x", "fixed range [0, 1]"),
        ("fc", "outputs in float (fp32): intended?"),
        *[(name, "per-tensor weight scale") for name in RESNET_CONVS],
        ("fc", "per-tensor weight scale"),
        ("fc", "mixed input dtype int8 and output dtype fp32"),
    ]
    assert _rows(result.layers, "op")["stem.0"]["channel axis"] == "-"


# -- report and the user's model ----------------------------------------------------------
def test_save_writes_text_and_json(resnet_default, tmp_path):
    paths = resnet_default.save(tmp_path / "out")
    assert [p.name for p in paths] == ["model_check_result.txt", "model_check_result.json"]
    text = paths[0].read_text()
    assert text == resnet_default.to_text()
    for heading in [
        "Each module's call count",
        "Modules called more than once",
        "Modules never called",
        "Fusable ops that did not fuse",
        "Each layer's precision",
        "Configurations to double-check",
    ]:
        assert heading in text
    assert "(none)" in text  # the empty unused / unfused sections say so
    data = json.loads(paths[1].read_text())
    assert list(data) == ["calls", "shared", "unused", "unfused", "layers", "unusual"]
    assert data["shared"]["rows"][0]["module"] == "block.relu"
    assert data == json.loads(json.dumps(resnet_default.to_dict()))


def test_user_model_is_not_changed():
    model, inputs = zoo.resnet_like()
    model.train()
    model.block.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {name: m.training for name, m in model.named_modules()}
    check(model, inputs)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm stats too
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert not any(m._forward_hooks for m in model.modules())
