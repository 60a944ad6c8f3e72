"""Fusion groups per target: NPUs fuse the residual add into the conv, ORT's CPU kernels do not."""

from __future__ import annotations

import pytest

from mixq import Config
from mixq.graph.fusion import find_fusion_groups
from mixq.graph.ir import Graph, Op
from mixq.plan.points import quantization_points
from mixq.rules.resolve import resolve
from mixq.targets import fuses_residual_add


def _residual() -> Graph:
    """x -> conv1 -> relu1 -> conv2 -> bn2 -> add(bn2, relu1) -> relu2 -> y."""
    g = Graph()
    g.add_input("x", "float32")
    chain = [
        ("conv1", "conv", ["x"], {"weight": "conv1.weight"}),
        ("relu1", "relu", ["conv1"], {}),
        ("conv2", "conv", ["relu1"], {"weight": "conv2.weight"}),
        ("bn2", "batch_norm", ["conv2"], {}),
        ("add", "add", ["bn2", "relu1"], {}),
        ("relu2", "relu", ["add"], {}),
    ]
    for name, kind, inputs, weights in chain:
        g.add_op(Op(name, kind, name, inputs=inputs, outputs=[name], weights=weights))
    g.outputs = ["relu2"]
    for t in g.tensors.values():
        t.quantizable = True
    return g


def test_a_conv_group_takes_the_residual_add_by_default():
    groups = find_fusion_groups(_residual())
    assert groups["conv2"].ops == ("conv2", "bn2", "add", "relu2")
    assert groups["conv1"].ops == ("conv1", "relu1")


def test_without_add_fusion_the_group_ends_before_the_add():
    groups = find_fusion_groups(_residual(), fuse_add=False)
    assert groups["conv2"].ops == ("conv2", "bn2") and groups["conv2"].output == "bn2"
    assert groups["add"].ops == ("add", "relu2") and groups["add"].output == "relu2"


@pytest.mark.parametrize(
    "target, fused", [("ort-cpu", False), ("int8-int16-npu", True), ("fp16-npu", True)]
)
def test_the_target_decides_whether_the_add_gets_its_own_input_quantizers(target, fused):
    g = _residual()
    plan = resolve(g, Config(default="int8", target=target))
    points = {p.name: p for p in quantization_points(g, plan)}
    assert fuses_residual_add(target) is fused
    # the conv's output before the add is quantized only where the add is a kernel of its own
    assert ("bn2" in points) is not fused
    if not fused:
        assert points["bn2"].op == "bn2" and points["bn2"].kind == "activation"
        # the add's other input is relu1's quantized output; its own output is quantized
        assert {"relu1", "relu2"} <= set(points)


def test_an_add_unfused_on_ort_cpu_can_take_its_own_precision():
    cfg = Config(default="int8", target="ort-cpu").set_precision("add", activation="int16")
    plan = resolve(_residual(), cfg)
    assert plan["bn2"].output == ("int8",) and plan["add"].output == ("int16",)
    npu = resolve(_residual(), Config(default="int8").set_precision("add", activation="int16"))
    assert npu["bn2"].output == ("int16",)  # one fused kernel, one precision
