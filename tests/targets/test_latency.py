"""The measured latency model (issue 12, part 2): the table, its YAML form, the one-op models
ONNX Runtime times (they must fuse into the integer kernels the exporter's files get), and
plan costs that use it. Timings themselves are never asserted (machines are noisy): only
their shape, and that the cost model adds up what the table says."""

from __future__ import annotations

from typing import Any

import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

import mixq
from mixq.cli.main import app
from mixq.core.errors import ConfigError
from mixq.targets import TargetProfile
from mixq.targets.latency import LatencyTable, kernel_precision
from mixq.targets.timing import BUILDERS, SIZES, _fit, profile_target

TABLE = LatencyTable(
    {
        "linear": {"fp32": (10.0, 0.1), "int8": (20.0, 0.025)},
        "elementwise": {"fp32": (1.0, 0.5)},
    },
    {"int8": 1.0, "int16": 1.0, "fp16": 0.5},
    "runtime",
    "machine",
    call_us=7.0,
)


def test_the_table_predicts_fixed_plus_work_and_falls_back_by_kind():
    assert TABLE.op_us("linear", "int8", 4000) == pytest.approx(20.1)
    assert TABLE.op_us("linear", "fp16", 4000) == pytest.approx(10.4)  # no fp16 line: fp32's
    assert TABLE.op_us("gelu", "fp32", 2000) == pytest.approx(2.0)  # an untimed kind
    assert TABLE.op_us("reshape", "fp32", 10**6) == 0.0  # a view
    assert TABLE.op_us("permute", "fp32", 2000) == pytest.approx(2.0)  # a copy (no entry)
    assert TABLE.convert_us("uint8", 1000) == pytest.approx(1.0)
    assert TABLE.convert_us("fp32", 1000) == 0.0


def test_kernel_precision_follows_what_the_inputs_arrive_in():
    assert kernel_precision(("uint8", "int8"), integer=True) == "int8"
    assert kernel_precision(("uint8", "int8"), integer=False) == "fp32"
    assert kernel_precision(("int16", "int8"), integer=True) == "fp32"
    assert kernel_precision(("fp16",), integer=True) == "fp16"


def test_a_profile_with_a_table_round_trips_through_yaml(tmp_path):
    profile = TargetProfile.load("ort-cpu")
    from dataclasses import replace

    measured = replace(profile, name="mine", latency=TABLE)
    again = TargetProfile.load(measured.save(tmp_path / "mine.yaml"))
    assert again == measured and again.latency == TABLE


@pytest.mark.parametrize(
    ("latency", "message"),
    [
        ({"convert": {}}, "must be a mapping with 'ops'"),
        ({"ops": {"linear": {"fp32": [1.0]}}}, r"\[fixed_us, ns_per_unit\]"),
        ({"ops": {"linear": {"fp32": [1.0, -2.0]}}}, "number >= 0"),
    ],
)
def test_a_bad_table_says_what_is_wrong(latency, message):
    data = TargetProfile.load("generic").to_dict() | {"latency": latency}
    with pytest.raises(ConfigError, match=message):
        TargetProfile.from_dict(data)


@pytest.mark.parametrize(
    ("kind", "kernel"),
    [("linear", "MatMulIntegerToFloat"), ("matmul", "MatMulIntegerToFloat"),
     ("conv", "QLinearConv"), ("add", "QLinearAdd")],
)  # fmt: skip
def test_the_int8_one_op_models_run_on_ort_integer_kernels(kind, kernel, tmp_path):
    model, _, work = BUILDERS[kind](SIZES[kind][0], "int8")
    assert work > 0
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    kinds = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert kernel in kinds, kinds


@pytest.fixture(scope="module")
def measured() -> TargetProfile:
    return profile_target("ort-cpu", repeats=3, progress=False)


def test_profile_target_times_every_kind_and_int8_only_where_ort_has_kernels(measured):
    table = measured.latency
    assert table is not None and measured.name == "ort-cpu-measured"
    assert set(table.ops) == set(BUILDERS)
    for kind, lines in table.ops.items():
        assert {"fp32", "fp16"} <= set(lines), kind
        assert ("int8" in lines) == (kind in ("linear", "matmul", "conv", "add")), kind
        assert all(fixed >= 0 and slope >= 0 for fixed, slope in lines.values())
    # "dynamic": DynamicQuantizeLinear (timings are compared in bench/, never in tests)
    assert set(table.convert) == {"int8", "int16", "fp16", "dynamic"} and table.call_us > 0
    assert "onnxruntime" in table.runtime
    assert measured.integer_kernels == TargetProfile.load("ort-cpu").integer_kernels


def test_plan_cost_adds_up_the_measured_table(measured, tmp_path):
    from dataclasses import replace

    path = replace(measured, latency=TABLE).save(tmp_path / "t.yaml")
    torch.manual_seed(0)
    model, x = torch.nn.Sequential(torch.nn.Linear(16, 8)), torch.randn(1, 5, 16)
    costs = {}
    for precision in ("fp32", "int8", "int16"):
        sim = mixq.quantize(model, x, mixq.Config(default=precision, target=str(path)))
        costs[precision] = sim.plan.cost().latency
    macs = 5 * 16 * 8
    assert costs["fp32"] == pytest.approx(7.0 + 10.0 + 0.1 * macs / 1000)
    # int8: the integer kernel, plus quantizing its 80 input elements
    assert costs["int8"] == pytest.approx(7.0 + 20.0 + 0.025 * macs / 1000 + 80 / 1000)
    # int16: the float kernel, the input quantized, then input and weights dequantized
    float_op = 10.0 + 0.1 * macs / 1000
    assert costs["int16"] == pytest.approx(7.0 + float_op + 80 / 1000 + 80 / 1000 + 128 / 1000)


def test_cli_profile_target_writes_a_profile_other_commands_take(tmp_path):
    out = tmp_path / "cpu.yaml"
    result = CliRunner().invoke(app, ["profile-target", "--out", str(out), "--repeats", "3"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert TargetProfile.load(out).latency is not None
    plan = CliRunner().invoke(app, ["plan", "mixq.zoo:mlp", "--target", str(out),
                                    "--out", str(tmp_path / "plan")])  # fmt: skip
    assert plan.exit_code == 0, (plan.output, plan.exception)
    bad = CliRunner().invoke(app, ["profile-target", "--out", str(tmp_path / "no" / "p.yaml")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_the_fitted_line_keeps_small_ops_near_their_measured_time():
    """Sizes span four orders of magnitude: a 5 % error on the largest must not move the
    small op's prediction (an absolute least-squares fit put its fixed cost at -0.5 µs,
    clamped to 0, predicting 1.05 µs for a 3 µs op)."""
    points = [(1_000, 3.0), (100_000, 102.0), (10_000_000, 10_500.0)]
    fixed, ns_per_unit = _fit(points, call_us=0.0)
    predicted = fixed + ns_per_unit * 1_000 / 1000
    assert predicted == pytest.approx(3.0, rel=0.1)
    assert ns_per_unit == pytest.approx(1.0, rel=0.1)


def _op_us(kind: str, weight: str, stats: Any) -> float:
    from dataclasses import replace

    from mixq.plan import OpPlan
    from mixq.plan.cost import op_cost

    profile = replace(TargetProfile.load("ort-cpu"), latency=TABLE)
    op = OpPlan("op", kind, "op", ("fp32",) * len(stats.inputs), ("fp32",), {"weight": weight})
    return op_cost(op, stats, profile)["latency"]


def test_an_embedding_table_dequantizes_only_the_rows_it_gathers():
    from mixq.plan.cost import OpStats

    # 10 rows of 64 gathered from a 50000 x 64 table: 640 elements dequantized, not 3.2 M
    stats = OpStats(elements=640, weights={"emb.w": 3_200_000}, roles={"weight": "emb.w"})
    fp32 = _op_us("embedding", "fp32", stats)
    assert _op_us("embedding", "int8", stats) == pytest.approx(fp32 + 0.64)
    assert _op_us("embedding", "int4", stats) == pytest.approx(fp32 + 3200)  # ORT gathers no int4


def test_an_attention_pays_for_its_scores_and_a_mask():
    from mixq.plan.cost import OpStats

    ins = {t: 4 * 12 * 48 * 32 for t in "qkv"}
    bare = OpStats(macs=10**6, elements=ins["q"], inputs=ins, scores=110_592)
    masked = OpStats(**{**bare.__dict__, "masked": True})
    matmuls = TABLE.op_us("attention", "fp32", 10**6)
    softmax = TABLE.op_us("softmax", "fp32", 110_592)
    assert _op_us("attention", "fp32", bare) == pytest.approx(matmuls + softmax)
    extra = 3 * TABLE.op_us("add", "fp32", 110_592)  # the mask's add, IsNaN, Where
    assert _op_us("attention", "fp32", masked) == pytest.approx(matmuls + softmax + extra)


@pytest.mark.parametrize("dynamic_ns", [None, 3.0, 0.5])  # None: a table from before them
def test_a_dynamic_input_costs_its_range_pass_over_a_calibrated_one(dynamic_ns):
    from dataclasses import replace

    from mixq.plan import OpPlan
    from mixq.plan.cost import OpStats, op_cost

    convert = dict(TABLE.convert) | ({"dynamic": dynamic_ns} if dynamic_ns else {})
    profile = replace(TargetProfile.load("ort-cpu"), latency=replace(TABLE, convert=convert))
    stats = OpStats(macs=10**6, elements=2000, inputs={"x": 2000}, roles={"weight": "w"},
                    weights={"w": 500})  # fmt: skip

    def at(act: str) -> float:
        op = OpPlan("fc", "linear", "fc", (act,), ("fp32",), {"weight": "int8"})
        return op_cost(op, stats, profile)["latency"]

    per_element = dynamic_ns if dynamic_ns else 2 * TABLE.convert["int8"]
    extra = max(per_element - TABLE.convert["int8"], 0.0) * 2000 / 1000  # 0.5: timed cheaper
    assert at("uint8") == pytest.approx(TABLE.op_us("linear", "int8", 10**6))
    assert at("uint8_dynamic") == pytest.approx(at("uint8") + extra)
    assert (extra > 0) == (per_element > TABLE.convert["int8"])
