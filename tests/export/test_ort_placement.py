"""Placement under ``ort-cpu``: what ONNX Runtime's CPU provider runs in integer, read back
from its optimised graph (``SessionOptions.optimized_model_filepath``).

Every int8 MatMul / Conv becomes an integer kernel, and no float op sits between a
DequantizeLinear and a QuantizeLinear (quantization error with no integer kernel to show for
it). Issue 12 part 1; the NPU targets keep full-integer placement (tests/rules).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

import mixq

pytestmark = [pytest.mark.onnx, pytest.mark.slow]

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_MOVE = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand",
         "Slice", "Gather", "Concat", "Split", "MaxPool"}  # fmt: skip
_INTEGER = {"MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul",
            "QLinearConv", "ConvInteger", "QGemm", "QLinearAdd", "QAttention"}  # fmt: skip


_GEMM = {"Gemm", "FusedGemm"}
# The torch capture records no intermediate shapes, so the resolver cannot tell a linear
# that ONNX writes as Gemm (2-D input: a classifier head, BERT's pooler) from one written
# as MatMul; ORT fuses a Gemm only with a quantized output (QGemm), so those heads keep a
# float Gemm behind a Q/DQ until the capture records shapes (see test_gemm_heads...).
GEMM_OK = True


def _optimised(path: Path) -> onnx.GraphProto:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return onnx.load(opts.optimized_model_filepath).graph


def _wasted_quantizers(graph: onnx.GraphProto, gemm_ok: bool = False) -> list[str]:
    """QuantizeLinear nodes ORT left in its optimised graph that no integer kernel reads
    (through DequantizeLinear and data movement): a Q -> DQ round trip into a float op,
    quantization error with no integer kernel to show for it. (A Q that feeds an integer
    kernel is fused into it; a float op between a QLinear output and a Q an integer kernel
    reads, as a CNN's global mean before its classifier, is the price of ORT having no
    integer kernel for it, not a wasted pair.)"""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def integer_reader(q: onnx.NodeProto) -> bool:
        stack = list(q.output)
        while stack:
            for c in consumers.get(stack.pop(), []):
                if c.op_type in _INTEGER or (gemm_ok and c.op_type in _GEMM):
                    return True
                if c.op_type == "DequantizeLinear" or c.op_type in _MOVE:
                    stack += list(c.output)
        return False

    return [
        f"{q.name} -> {[c.op_type for o in q.output for c in consumers.get(o, [])]}"
        for q in graph.node
        if q.op_type == "QuantizeLinear" and not integer_reader(q)
    ]


def _export(fixture, config, tmp_path: Path) -> tuple[Counter[str], onnx.GraphProto]:
    model, inputs, calib = fixture
    sim = mixq.quantize(model, inputs, config).calibrate(calib)
    sim.export_onnx(tmp_path / "m.onnx", check=False)
    graph = _optimised(tmp_path / "m.onnx")
    return Counter(n.op_type for n in graph.node), graph


ORT_CPU = mixq.Config(default="int8", target="ort-cpu")


def test_bert_under_ort_cpu_runs_every_matmul_in_integer_and_no_float_op_in_qdq(
    bert_model, tmp_path
):
    kinds, graph = _export(bert_model, ORT_CPU, tmp_path)
    assert _wasted_quantizers(graph, gemm_ok=GEMM_OK) == [], _wasted_quantizers(graph)
    assert kinds["MatMulIntegerToFloat"] >= 12, kinds  # every linear of both layers, at least
    assert not {"MatMul", "FusedMatMul"} & set(kinds), kinds  # no float matmul left
    # each linear's bias is inside its integer kernel, so the GELU stands alone, and the
    # residual adds are Sums ORT does not fuse into its slower SkipLayerNormalization
    # (mixq.export.ort_kernels)
    assert kinds["Gelu"] >= 2 and kinds["LayerNormalization"] >= 4, kinds
    assert "SkipLayerNormalization" not in kinds, kinds
    assert "BiasGelu" not in kinds and _bias_adds(graph) == [], _bias_adds(graph)


def _bias_adds(graph: onnx.GraphProto) -> list[str]:
    """Adds of a constant to an integer kernel's float output (a bias left out of it)."""
    made = {o: n.op_type for n in graph.node for o in n.output}
    consts = {i.name for i in graph.initializer}
    return [
        n.name
        for n in graph.node
        if n.op_type == "Add"
        and any(made.get(i) == "MatMulIntegerToFloat" for i in n.input)
        and any(i in consts for i in n.input)
    ]


def test_bert_under_npu_target_leaves_float_ops_in_qdq(bert_model, tmp_path):
    """The check above can fail: full-integer placement quantizes ops ORT runs in float."""
    _, graph = _export(bert_model, mixq.Config(default="int8", target="generic"), tmp_path)
    assert len(_wasted_quantizers(graph, gemm_ok=True)) >= 6


@pytest.mark.parametrize("fixture", ["cnn_model", "digits"])
def test_cnn_under_ort_cpu_runs_every_conv_in_integer(fixture, request, tmp_path):
    if fixture == "digits":
        model, example = mixq.zoo.digits_cnn()
        case = (model, example, [example])
    else:
        case = request.getfixturevalue(fixture)
    kinds, graph = _export(case, ORT_CPU, tmp_path)
    assert _wasted_quantizers(graph, gemm_ok=GEMM_OK) == [], _wasted_quantizers(graph)
    assert kinds["QLinearConv"] >= 2, kinds
    assert not {"Conv", "FusedConv", "MatMul"} & set(kinds), kinds


def test_gemm_head_of_an_onnx_model_runs_as_qgemm(cnn_model, tmp_path):
    """An ONNX model says which linear is a Gemm: its head gets a quantized output (QGemm)."""
    model, inputs, calib = cnn_model
    torch.onnx.export(model, inputs, tmp_path / "f.onnx", dynamo=False)
    feeds = [(b[0].numpy(),) for b in calib]
    kinds, graph = _export(
        (str(tmp_path / "f.onnx"), (inputs[0].numpy(),), feeds), ORT_CPU, tmp_path
    )
    assert _wasted_quantizers(graph) == [], _wasted_quantizers(graph)
    assert kinds["QGemm"] == 1 and "Gemm" not in kinds and "FusedGemm" not in kinds, kinds
