"""Dynamic int8 (``uint8_dynamic``): a linear's input quantized with the scale of each call,
as ONNX Runtime's ``quantize_dynamic`` writes it (DynamicQuantizeLinear ->
MatMulIntegerToFloat).

On the real MiniLM embedder, the linears a calibrated int8 plan had to keep in fp32 (the
attention outputs of its last layers) held cosine >= 0.99 on every held-out sentence when
written this way by hand, at ORT dynamic's latency (issue 12). These tests hold the parts
that make it a per-linear choice: the Sim computes what the kernel computes, both exporters
write the kernel's form, ORT runs it fused, the cost model and the search see it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

import mixq
from mixq import primitives as P
from mixq.core.errors import ConfigError
from mixq.search.candidates import Candidate, parse_candidates

pytestmark = pytest.mark.onnx


class Mlp(nn.Module):
    """A LayerNorm, a GELU between two linears: the FFN of a transformer block."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(32)
        self.up = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


def _batch(seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(seed)) * scale


def _config() -> mixq.Config:
    cfg = mixq.Config(default="int8", target="ort-cpu")
    cfg.set_precision("down", activation="uint8_dynamic")
    return cfg


def _ort_dynamic(x: np.ndarray) -> tuple[np.ndarray, float, int]:
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    graph = helper.make_graph(
        [node],
        "dql",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info(n, t, None) for n, t in
         (("y", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, s, z = session.run(None, {"x": x})
    return y, float(s), int(z)


@pytest.mark.parametrize("shift", [0.0, 3.0, -3.0])  # mixed signs, all positive, all negative
def test_dynamic_qparams_are_ort_dynamicquantizelinear_s(shift):
    x = (torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) + shift).numpy()
    y, s, z = _ort_dynamic(x)
    scale, zero_point = P.dynamic_qparams(torch.from_numpy(x))
    assert float(scale) == s and int(zero_point) == z
    codes = P.quantize(torch.from_numpy(x), scale, zero_point, "uint8_dynamic")
    assert np.array_equal(codes.numpy(), y)


def test_the_sim_quantizes_each_call_at_its_own_range_without_calibrating_it():
    sim = mixq.quantize(Mlp().eval(), _batch(0), _config())
    names = [n for n in sim.quantizers if "uint8_dynamic" in n]
    assert names == ["gelu@uint8_dynamic"], sim.quantizers  # on the down linear's input edge
    assert sim.plan["down"].input == ("uint8_dynamic",) and sim.plan["down"].output == ("fp32",)
    dynamic = sim.quantizer(names[0])
    sim.calibrate([_batch(s) for s in range(3)], progress=False)
    assert dynamic.range is None and dynamic.has_qparams  # nothing calibrated, ready to run
    assert len(sim.integer_linears) == 2  # both linears run as the integer kernel computes
    # an input 20x the calibration's: the static quantizers clip, the dynamic one follows
    model, big = Mlp().eval(), _batch(7, scale=20.0)
    with torch.no_grad():
        hidden = F.gelu(model.up(model.norm(big)))
        seen = []
        dynamic.register_forward_hook(lambda m, i, o: seen.append((i[0].clone(), o.clone())))
        sim(big)
    x_in, x_out = seen[0]
    assert torch.allclose(x_in, hidden, atol=0.05)  # it reads the GELU of the int8 linear
    scale, zp = P.dynamic_qparams(x_in)
    assert torch.equal(x_out, P.fake_quantize(x_in, scale, zp, "uint8"))
    assert float(x_out.max()) == pytest.approx(float(x_in.max()), abs=float(scale))


def test_a_fixed_range_on_a_dynamic_quantizer_says_what_to_do():
    sim = mixq.quantize(Mlp().eval(), _batch(0), _config())
    name = next(n for n in sim.quantizers if "uint8_dynamic" in n)
    with pytest.raises(ValueError, match=r"quantized dynamically .* static precision"):
        sim.set_range(name, -1.0, 1.0)
    cfg = _config().set_range(sim.quantizer(name).point.target, -1.0, 1.0)
    with pytest.raises(ConfigError, match=r"all dynamic .* drop the fixed range"):
        mixq.quantize(Mlp().eval(), _batch(0), cfg)


def test_a_dynamic_quantizer_refuses_infinite_values_instead_of_giving_nan():
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    cfg = mixq.Config(default="int8", target="ort-cpu").set_precision("0", activation="dynamic")
    sim = mixq.quantize(model, torch.randn(2, 8), cfg)
    sim.calibrate([torch.randn(2, 8)], progress=False)
    x = torch.randn(2, 8)
    x[0, 3] = float("-inf")
    with pytest.raises(mixq.CalibrationError, match=r"infinite values .* static precision"):
        sim(x)


def _fused_ops(path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_the_torch_export_writes_and_ort_runs_the_dynamic_kernel(tmp_path):
    sim = mixq.quantize(Mlp().eval(), _batch(0), _config())
    sim.calibrate([_batch(s) for s in range(3)], progress=False)
    report = sim.export_onnx(tmp_path / "m.onnx")
    assert math.isinf(report.min_sqnr_db) or report.min_sqnr_db > 80, report.to_text()
    ops = [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node]
    assert ops.count("DynamicQuantizeLinear") == 1 and ops.count("MatMulIntegerToFloat") == 2
    name = next(n for n in sim.quantizers if "uint8_dynamic" in n)
    assert report.quantizers[name]["DynamicQuantizeLinear"] == f"{name}/DynamicQuantizeLinear"
    fused = _fused_ops(tmp_path / "m.onnx")
    assert "DynamicQuantizeMatMul" in fused or {
        "DynamicQuantizeLinear",
        "MatMulIntegerToFloat",
    } <= set(fused)
    # the file follows the Sim on inputs far outside the calibrated range
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    big = _batch(9, scale=10.0)
    with torch.no_grad():
        want = sim(big).numpy()
    got = session.run(None, {session.get_inputs()[0].name: big.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_the_onnx_backend_writes_the_same_kernel(tmp_path):
    path = tmp_path / "float.onnx"
    model, x = Mlp().eval(), _batch(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17)
    plan = mixq.quantize(str(path), (x.numpy(),), mixq.Config(target="ort-cpu")).plan
    down = [op.name for op in plan if op.kind == "matmul"][-1]
    cfg = mixq.Config(default="int8", target="ort-cpu")
    cfg.set_precision(down, activation="uint8_dynamic")
    sim = mixq.quantize(str(path), (x.numpy(),), cfg)
    sim.calibrate([(_batch(s).numpy(),) for s in range(3)], progress=False)
    report = sim.export_onnx(tmp_path / "q.onnx")
    assert math.isinf(report.min_sqnr_db) or report.min_sqnr_db > 80, report.to_text()
    ops = [n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2
    dql = [
        n for n in onnx.load(tmp_path / "q.onnx").graph.node if n.op_type == "DynamicQuantizeLinear"
    ]
    assert dql and all(n.name.endswith("/DynamicQuantizeLinear") for n in dql)


def test_a_forward_with_gradients_on_does_not_stop_the_export(tmp_path):
    """The integer linear kept the last weight it saw; after a forward with gradients on
    (a user's plain ``sim(x)``) that was a non-leaf tensor, and the export's copy of the Sim
    failed ("Only Tensors created explicitly by the user support the deepcopy protocol")."""
    sim = mixq.quantize(Mlp().eval(), _batch(0), mixq.Config(default="int8", target="ort-cpu"))
    sim.calibrate([_batch(s) for s in range(2)], progress=False)
    assert sim(_batch(3)).requires_grad
    report = sim.export_onnx(tmp_path / "m.onnx")
    assert report.min_sqnr_db > 60


def test_vendor_files_with_fixed_scales_refuse_dynamic_quantizers(tmp_path):
    sim = mixq.quantize(Mlp().eval(), _batch(0), _config())
    sim.calibrate([_batch(s) for s in range(2)], progress=False)
    with pytest.raises(ConfigError, match=r"dynamic .* sim\.export_onnx"):
        sim.export(tmp_path / "m.encodings", format="aimet-1.0.0")
    assert not (tmp_path / "m.encodings").exists()
    encodings = sim.encodings()
    name = next(n for n in sim.quantizers if "uint8_dynamic" in n)
    assert encodings[name].scale is None
    assert type(encodings).from_dict(encodings.to_dict())[name] == encodings[name]


def test_a_target_without_the_kernel_refuses_or_moves_a_dynamic_request():
    cfg = mixq.Config(default="int8", target="int8-int16-npu")
    cfg.set_precision("down", activation="uint8_dynamic")
    with pytest.raises(mixq.ConflictError, match=r"uint8_dynamic.*int8-int16-npu"):
        mixq.quantize(Mlp().eval(), _batch(0), cfg)
    sim = mixq.quantize(Mlp().eval(), _batch(0), cfg, strict=False)
    moved = mixq.core.qtypes.qtype(sim.plan["down"].input[0])
    assert moved.bits == 8 and moved.calibrated, sim.plan["down"]


def test_a_weight_is_never_dynamic_and_a_lone_dynamic_name_takes_int8_weights():
    with pytest.raises(ConfigError, match="only an activation needs"):
        mixq.Config().set_precision("down", weight="uint8_dynamic")
    with pytest.raises(ConfigError, match="only an activation needs"):
        parse_candidates([("int8", "uint8_dynamic")])
    assert parse_candidates(["dynamic"]) == [Candidate("uint8_dynamic", "int8")]
    assert mixq.Config(default="uint8_dynamic").default.weight == "int8"
