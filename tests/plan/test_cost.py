"""The cost model: MACs, BOPs, bytes, conversions, latency, effective bits."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import mixq
from mixq.plan.cost import OpStats, cost_table, op_cost
from mixq.plan.plan import OpPlan


def _linear():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 4)), (torch.randn(2, 8),)


def test_linear_costs_by_hand():
    model, x = _linear()
    cost = mixq.quantize(model, x, ("int8", "int4")).plan.cost()
    assert cost.macs == 2 * 8 * 4
    assert cost.bops == 2 * 8 * 4 * 8 * 4
    assert cost.weight_bytes == 32 * 4 / 8  # the quantized weight; biases are not counted
    assert cost.effective_bits == 4
    assert cost.activation_bytes == 2 * 8 + 2 * 4  # the int8 input and output
    assert cost.latency == 64  # int8 costs 1.0 per MAC on the generic target


def test_a_kept_plan_does_not_keep_its_sims_alive():
    """A Sim binds itself into its own copy of the plan for `Plan.cost`: a caller holding
    many plans (a search caches one per evaluated assignment) keeps none of the Sims
    built from them, each a copy of the model (a search on the real MiniLM grew by 180 MB
    per evaluation until the machine ran out of memory)."""
    model, x = _linear()
    plan = mixq.quantize(model, x, "int8").plan  # kept: the Sim it came from measures it
    sims = [mixq.quantize(model, x, plan) for _ in range(3)]
    refs = [weakref.ref(s) for s in sims]
    assert sims[0].plan.cost().macs == 2 * 8 * 4  # the Sim's own plan measures
    del sims
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    assert plan.cost().macs == 2 * 8 * 4  # still bound to its own Sim, not to the later ones


def test_conv_macs_and_float_weighting(cnn_model):
    model, inputs, _ = cnn_model
    sim = mixq.quantize(model, inputs, "int8")
    stem = model.stem[0]
    out = model.stem(inputs[0]).numel()
    per_output = stem.in_channels * stem.kernel_size[0] * stem.kernel_size[1]
    assert sim.op_stats()["stem.0"].macs == out * per_output
    generic = mixq.quantize(model, inputs, "fp16").plan.cost()
    npu = mixq.quantize(model, inputs, mixq.Config("fp16", target="fp16-npu")).plan.cost()
    assert generic.macs == npu.macs
    # fp16 costs what int16 costs on the generic target: 16 x 16 bits per MAC
    assert generic.bops == pytest.approx(generic.macs * 16 * 16)


def test_float_precision_costs_by_the_target(bert_model):
    model, inputs, _ = bert_model
    base_cfg = mixq.Config(("int16", "int8"), target="int8-int16-npu")
    base = mixq.quantize(model, inputs, base_cfg).plan.cost()
    cfg = mixq.Config(("int16", "int8"), target="int8-int16-npu")
    cfg.set_precision("kind:softmax", activation="fp16")
    sim = mixq.quantize(model, inputs, cfg)
    assert sim.plan["encoder.layer.0.attention.self.softmax"].output == ("fp16",)
    # the matmul after it still reads int16 (a conversion per layer): same BOPs, and
    # the softmax's elements now cost fp16's 8 instead of int16's 2
    after = sim.plan.cost()
    assert after.bops == base.bops
    assert after.conversions == 2
    softmax = sim.op_stats()["encoder.layer.0.attention.self.softmax"].elements
    conversion = 2 * softmax * 2  # the two int16 conversions' elements at int16's cost
    assert after.latency - base.latency == pytest.approx(2 * softmax * (8 - 2) + conversion)


def test_a_float_mac_weighs_its_cost_ratio():
    op = OpPlan("fc", "linear", "fc", ("fp16",), ("fp16",), {"weight": "fp16"})
    cost = op_cost(op, OpStats(macs=10), {"int16": 2.0, "fp16": 8.0})
    assert cost["bops"] == 10 * 64 * 64  # 16 bits x (8 / 2)
    assert cost["latency"] == 10 * 8.0
    int8 = OpPlan("fc", "linear", "fc", ("int8",), ("int8",), {"weight": "int4"})
    assert op_cost(int8, OpStats(macs=10), {"int8": 1.0, "int4": 0.5})["bops"] == 10 * 8 * 4


def test_conversions_are_counted(bert_model):
    model, inputs, _ = bert_model
    cfg = {"default": "int8", "ops": {"encoder.layer.0.output.dense": {"activation": "int16"}}}
    mixed = mixq.quantize(model, inputs, cfg).plan.cost()
    plain = mixq.quantize(model, inputs, "int8").plan.cost()
    assert mixed.conversions >= 1 and plain.conversions == 0
    assert mixed.conversion_bytes > 0
    assert mixed.activation_bytes > plain.activation_bytes


def test_cost_table_sorts_by_latency(bert_model):
    model, inputs, _ = bert_model
    sim = mixq.quantize(model, inputs, "int8")
    rows = cost_table(sim.graph, sim.plan, sim.op_stats()).rows
    assert rows[0]["kind"] == "linear" and rows[0]["macs"] > 0
    assert [r["latency"] for r in rows] == sorted((r["latency"] for r in rows), reverse=True)
    matmuls = [r for r in rows if r["kind"] == "matmul"]
    assert matmuls and all(r["macs"] == 4 * 4 * 16 * 16 * 16 for r in matmuls)


def test_plan_without_a_model_says_how_to_cost_it():
    model, x = _linear()
    plan = mixq.Plan.from_dict(mixq.quantize(model, x, "int8").plan.to_dict())
    with pytest.raises(mixq.ConfigError, match=r"sim\.plan"):
        plan.cost()


class _Residual(torch.nn.Module):
    """fc1, then fc2 whose output a residual add reads (one fused kernel on ``generic``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 8)
        self.fc2 = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.fc1(x))


def test_an_op_reading_a_narrower_tensor_costs_its_bits():
    """A linear fused with an int16 residual add runs at int16, but it reads fc1's int8
    output as produced (no conversion widens it): its MACs are 8-bit x 8-bit, as the file
    counts them. The cost model counted them at the group's 16 bits (a MiniLM plan with
    int16 residual adds: 90.3 bits per MAC in the cost model, 65.3 in the file)."""
    torch.manual_seed(0)
    model, x = _Residual(), (torch.randn(2, 8),)
    config = mixq.Config(default="int8", target="generic").set_precision("kind:add", "int16")
    sim = mixq.quantize(model, x, config)
    fc2 = next(op for op in sim.plan if op.module == "fc2")
    assert fc2.input == ("int16",) and fc2.output == ("int16",)  # the fused group's
    macs = 2 * 8 * 8
    assert sim.plan.cost().bops == pytest.approx(macs * 8 * 8 + macs * 8 * 8)
    table = {row["op"]: row for row in cost_table(sim.graph, sim.plan, sim.op_stats()).rows}
    assert table[fc2.name]["input"] == "int8"
