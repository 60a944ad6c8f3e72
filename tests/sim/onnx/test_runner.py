from __future__ import annotations

import pytest
import torch

import mixq
from mixq.analysis import quant_analysis
from mixq.sim.onnx import OnnxRunner
from tests.sim.onnx.conftest import batches
from tests.sim.onnx.models import cnn, float_session, run_float

pytestmark = pytest.mark.onnx


@pytest.fixture
def cnn_sim():
    model, calib = cnn(), batches((8, 3, 8, 8))
    cfg = mixq.Config(default="int8").set_precision("relu2", activation="int16")
    return model, calib, mixq.quantize(model, calib[0], cfg).calibrate(calib, progress=False)


@pytest.fixture
def onnx_analysis():
    """QuantAnalysis, which runs an ONNX sim through its own runner (`make_runner`)."""
    return quant_analysis.QuantAnalysis


def test_run_keeps_raw_and_quantized_values(cnn_sim):
    model, calib, sim = cnn_sim
    runner = OnnxRunner(sim)
    float_run, quant_run = runner.run(calib[0], enabled=()), runner.run(calib[0])
    ref = run_float(float_session(model), *calib[0])
    assert torch.equal(runner.outputs(float_run)[0], ref)
    assert torch.equal(runner.outputs(quant_run)[0], sim(*calib[0]))
    raw, seen = quant_run[runner.by_name["r1"]], runner.value(quant_run, "r1")
    assert not torch.equal(raw, seen)
    q = sim.quantizer("r1")
    expected = mixq.core.primitives.fake_quantize(raw, q.scale, q.zero_point, "int8")
    assert torch.equal(seen, expected)
    assert torch.equal(runner.value(float_run, "r1"), float_run[runner.by_name["r1"]])
    assert torch.equal(quant_run[runner.by_name["x"]], calib[0][0])
    assert [n.name for n in runner.output_nodes()] == sim.output_names


def test_rerun_is_a_run_with_only_those_quantizers(cnn_sim):
    _, calib, sim = cnn_sim
    runner = OnnxRunner(sim)
    base = runner.run(calib[1], enabled=())
    again = runner.rerun(base, ["conv2.weight", "r1"])
    direct = runner.run(calib[1], enabled=["conv2.weight", "r1"])
    assert torch.equal(runner.outputs(again)[0], runner.outputs(direct)[0])
    assert not torch.equal(runner.outputs(again)[0], runner.outputs(base)[0])
    with pytest.raises(KeyError):
        runner.run(calib[1], enabled=["nope"])


def test_run_forced_feeds_the_given_values_and_keeps_the_sims_own(cnn_sim):
    """The export check's local comparison: a forced value replaces the Sim's once computed,
    what reads it computes from the forced value, and the Sim's own value is kept."""
    _, calib, sim = cnn_sim
    runner = OnnxRunner(sim)
    run = runner.run(calib[0])
    r1, x = runner.by_name["r1"], runner.by_name["x"]
    same, own = runner.run_forced(calib[0], {r1: run[r1]})
    assert torch.equal(own[r1], run[r1]) and x not in own
    assert torch.equal(runner.outputs(same)[0], runner.outputs(run)[0])
    doubled, own = runner.run_forced(calib[0], {r1: 2 * run[r1]})
    assert torch.equal(own[r1], run[r1]) and torch.equal(doubled[r1], 2 * run[r1])
    q = sim.quantizer("r1")
    expected = mixq.core.primitives.fake_quantize(2 * run[r1], q.scale, q.zero_point, "int8")
    assert torch.equal(runner.value(doubled, "r1"), expected)
    assert not torch.equal(runner.outputs(doubled)[0], runner.outputs(run)[0])
    seen = runner.by_name[sim.value_nodes["r1"]]  # the quantizer's output
    zeroed, own = runner.run_forced(calib[0], {seen: torch.zeros_like(run[seen])})
    assert torch.equal(own[seen], run[seen]) and torch.equal(zeroed[r1], run[r1])
    assert not torch.equal(runner.outputs(zeroed)[0], runner.outputs(run)[0])
    assert torch.equal(sim(*calib[0]), runner.outputs(run)[0])  # the Sim's session untouched


def test_quant_analysis_tables_on_an_onnx_sim(cnn_sim, onnx_analysis, tmp_path):
    _, calib, sim = cnn_sim
    qa = onnx_analysis(sim)
    bad = qa.find_bad_cases(calib, metric="cosine", progress=False)
    assert bad.outputs == ["y"]
    ops = ["conv1", "relu2", "pool", "fc"]  # fused-group outputs (relu1 ends conv1's group)
    for view in ("accumulated", "isolated"):
        table = qa.compare_layers(view=view, progress=False)
        assert [r["op"] for r in table.rows] == ["relu1", *ops[1:]]
        assert all(r["cosine"] > 0.99 for r in table.rows)
    iso = {r["op"]: r for r in qa.tables["compare_isolated"].rows}
    acc = {r["op"]: r for r in qa.tables["compare_accumulated"].rows}
    assert iso["fc"]["sqnr"] > acc["fc"]["sqnr"]  # own error < accumulated error
    exact = qa.sensitivity(kind="both", mode="exact", data=calib[0], progress=False)
    assert {r["quantizer"] for r in exact.rows} == set(sim.quantizers)
    assert exact.rows[0]["score"] >= exact.rows[-1]["score"] > 0
    fast = qa.sensitivity(kind="weight", mode="fast", data=calib[0], progress=False)
    assert [r["quantizer"] for r in fast.rows if r["kind"] == "weight"]
    assert all(sim.quantizer(n).enabled for n in sim.quantizers)


def test_run_all_writes_every_table(cnn_sim, onnx_analysis, tmp_path):
    _, calib, sim = cnn_sim
    tables = onnx_analysis(sim).run_all(calib, out_dir=tmp_path, progress=False)
    assert {"badcase_index", "compare_accumulated", "compare_isolated", "advice"} <= set(tables)
    assert (tmp_path / "report.html").exists() and (tmp_path / "badcase.txt").exists()
