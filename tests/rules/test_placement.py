"""Runtime placement (resolver step 4b): under a target with ``integer_kernels`` (``ort-cpu``)
ops it runs in float get no activation quantizers; NPU targets keep full-integer placement."""

from __future__ import annotations

from mixq import Config
from mixq.graph.ir import Graph, Op
from mixq.plan.points import quantization_points
from mixq.rules.resolve import resolve


def _block() -> Graph:
    """x -> layer norm -> (q, k linears) -> matmul -> softmax -> + x (a transformer's shape)."""
    g = Graph()
    g.add_input("x", "float32")
    g.add_op(Op("ln", "layer_norm", "ln", inputs=["x"], outputs=["ln"], weights={"weight": "ln.w"}))
    for n in ("q", "k"):
        g.add_op(Op(n, "linear", n, inputs=["ln"], outputs=[n], weights={"weight": f"{n}.w"}))
    g.add_op(Op("mm", "matmul", "", inputs=["q", "k"], outputs=["mm"]))
    g.add_op(Op("sm", "softmax", "", inputs=["mm"], outputs=["sm"]))
    g.add_op(Op("add", "add", "", inputs=["sm", "x"], outputs=["y"]))
    return g


def _io(plan, name):
    op = plan[name]
    return op.input, op.output, dict(op.weight)


def test_ort_cpu_runs_float_kinds_in_float_and_linears_to_float():
    plan = resolve(_block(), Config(default="int8", target="ort-cpu"))
    assert _io(plan, "ln") == (("fp32",), ("fp32",), {"weight": "fp32"})
    assert _io(plan, "q") == (("int8",), ("fp32",), {"weight": "int8"})
    assert _io(plan, "mm") == (("int8", "int8"), ("fp32",), {})
    assert _io(plan, "sm")[1] == ("fp32",) and _io(plan, "add")[1] == ("fp32",)
    assert "ort-cpu runs layer_norm in float" in plan["ln"].rule
    assert "to_float" in plan["q"].rule


def test_ort_cpu_puts_one_quantizer_on_the_integer_readers_edge():
    plan = resolve(_block(), Config(default="int8", target="ort-cpu"))
    acts = sorted(p.name for p in quantization_points(_block(), plan) if p.kind == "activation")
    # ln's output read by q and k at int8: one shared conversion; q and k read by mm
    assert acts == ["k@int8", "ln@int8", "q@int8"]


def test_explicit_rule_wins_over_runtime_placement():
    cfg = Config(default="int8", target="ort-cpu").set_precision("sm", activation="int8")
    plan = resolve(_block(), cfg)
    assert plan["sm"].output == ("int8",) and plan["ln"].output == ("fp32",)


def test_residual_add_is_integer_only_when_its_inputs_arrive_quantized():
    g = Graph()
    g.add_input("x", "float32")
    for n, src in (("c1", "x"), ("c2", "c1")):
        g.add_op(Op(n, "conv", n, inputs=[src], outputs=[n], weights={"weight": f"{n}.w"}))
    g.add_op(Op("add", "add", "", inputs=["c2", "c1"], outputs=["y"]))
    plan = resolve(g, Config(default="int8", target="ort-cpu"))
    assert plan["add"].input == ("int8", "int8") and plan["add"].output == ("int8",)
    assert plan["c1"].output == ("int8",)
    assert resolve(_block(), Config(default="int8", target="ort-cpu"))["add"].output == ("fp32",)


def test_npu_targets_keep_full_integer_placement():
    for target in ("generic", "int8-int16-npu"):
        plan = resolve(_block(), Config(default="int8", target=target))
        assert all(p == "int8" for op in plan for p in op.output), target
