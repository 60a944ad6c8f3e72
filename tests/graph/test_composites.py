"""Kernels spelled out op by op: a layer norm written as mean / sub / pow / sqrt / div (what
TorchScript exports of BERTs contain), an RMS norm as pow / mean / rsqrt / mul (Llama's code),
GELU as erf or tanh arithmetic, and a MatMul by a weight followed by its bias Add. Each runs
as one kernel where it deploys, so no quantizer sits inside; before, every intermediate was
quantized and a real MiniLM through the ONNX path gave -1.0 dB (the variance of most tokens
rounded to zero on a grid sized for the outlier channel's square)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import mixq
from mixq.analysis.metrics import sqnr
from mixq.graph.composites import activation_regions, norm_regions
from mixq.graph.fusion import find_fusion_groups
from mixq.graph.ir import Graph, Op
from mixq.plan.points import quantization_points


class SpelledLayerNorm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)
        var = centred.pow(2).mean(-1, keepdim=True)
        return self.weight * (centred / torch.sqrt(var + 1e-12)) + self.bias


class SpelledRMSNorm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def erf_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class Block(nn.Module):
    """Linear, norm, linear, GELU, linear; the data's first token carries an outlier (what
    trained transformers carry into their norms: a few tokens ~100x the rest)."""

    def __init__(self, norm: str, gelu: str, width: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(width, width)
        norms = {
            "layer_native": nn.LayerNorm(width, eps=1e-12),
            "layer": SpelledLayerNorm(width),
            "rms_native": nn.RMSNorm(width, eps=1e-6),
            "rms": SpelledRMSNorm(width),
        }
        self.norm = norms[norm]
        self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.gelu = {"native": nn.functional.gelu, "erf": erf_gelu, "tanh": tanh_gelu}[gelu]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.gelu(self.up(self.norm(self.inp(x)))))


def _data() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(4, 16, 32, generator=g) for _ in range(3)]
    for x in data:
        x[:, 0, 3] = 150.0
    return data


def _int8_sqnr(model: nn.Module) -> float:
    torch.manual_seed(0)
    data = _data()
    sim = mixq.quantize(model, data[0], "int8").calibrate(data, progress=False)
    with torch.no_grad():
        return sqnr(model(data[0]), sim(data[0]))


def _same_weights(norm: str, gelu: str) -> nn.Module:
    torch.manual_seed(1)
    return Block(norm, gelu).eval()


@pytest.mark.parametrize(("norm", "gelu"), [("layer", "erf"), ("rms", "tanh")])
def test_a_spelled_out_norm_and_gelu_quantize_as_the_native_ops_do(norm, gelu):
    native = _int8_sqnr(_same_weights(f"{norm}_native", "native"))
    spelled = _int8_sqnr(_same_weights(norm, gelu))
    assert spelled > native - 3.0, (spelled, native)


def test_no_quantizer_inside_a_spelled_out_norm_or_gelu():
    model, data = _same_weights("layer", "erf"), _data()
    sim = mixq.quantize(model, data[0], "int8")
    regions = norm_regions(sim.graph) + activation_regions(sim.graph)
    assert len(regions) == 2, regions
    inner = {t for r in regions for n in r[:-1] for t in sim.graph.ops[n].outputs}
    quantized = {p.target for p in quantization_points(sim.graph, sim.plan)}
    assert not inner & quantized, sorted(inner & quantized)
    assert {sim.graph.ops[r[-1]].outputs[0] for r in regions} <= quantized


def test_the_onnx_path_fuses_the_exported_arithmetic(tmp_path: Path):
    model, data = _same_weights("layer", "erf"), _data()
    path = tmp_path / "block.onnx"
    with torch.no_grad(), io.StringIO():
        torch.onnx.export(model, (data[0],), str(path), dynamo=False, opset_version=14)
    sim = mixq.quantize(str(path), data[0], "int8").calibrate(data, progress=False)
    graph = sim.graph
    assert len(norm_regions(graph)) == 1 and len(activation_regions(graph)) == 1
    groups = find_fusion_groups(graph)
    matmuls = [op for op in graph if op.kind == "matmul" and op.weights]
    assert matmuls and all(len(groups[op.name].ops) >= 2 for op in matmuls)  # + its bias Add
    with torch.no_grad():
        got = sim(data[0])
    got = got[0] if isinstance(got, list | tuple) else got
    assert (
        sqnr(model(data[0]), torch.as_tensor(got))
        > _int8_sqnr(_same_weights("layer_native", "native")) - 3.0
    )


def _graph(*ops: tuple[str, str, list[str]], outputs: list[str] | None = None) -> Graph:
    g = Graph()
    g.add_input("x", "float32")
    for name, kind, inputs in ops:
        g.add_op(Op(name, kind, inputs=inputs, outputs=[name]))
    g.outputs.extend(outputs or [ops[-1][0]])
    return g


_LAYER_NORM = (
    ("m", "mean", ["x"]), ("c", "sub", ["x", "m"]), ("sq", "pow", ["c"]),
    ("v", "mean", ["sq"]), ("e", "add", ["v"]), ("s", "sqrt", ["e"]),
    ("n", "div", ["c", "s"]), ("w", "mul", ["n"]), ("b", "add", ["w"]),
)  # fmt: skip


def test_a_layer_norm_region_takes_the_centring_and_the_affine_tail():
    assert norm_regions(_graph(*_LAYER_NORM)) == [("m", "c", "sq", "v", "e", "s", "n", "w", "b")]


def test_a_region_whose_inside_is_read_elsewhere_is_left_alone():
    assert norm_regions(_graph(*_LAYER_NORM, outputs=["b", "v"])) == []


def test_a_mean_of_squares_without_a_root_is_no_norm():
    ops = (("sq", "pow", ["x"]), ("v", "mean", ["sq"]), ("n", "div", ["x", "v"]))
    assert norm_regions(_graph(*ops)) == []
