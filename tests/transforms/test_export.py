"""The export of a smoothed int8 model: folded pairs add no op, each linear smoothed on its
branch of a fork adds one ``Mul`` (and its input's quantizer), and ONNX Runtime matches the Sim.

The model is the outlier BERT drawn with ``initializer_range`` 0.05 and outliers 60x: with
0.1 (the other tests' model) ORT's integer kernels already differ from the Sim by more than
the floor without any transform (measured 32.5 / 32.1 dB on the BERT without outliers).
Measured 2026-11-30: the same ONNX node counts with and without smoothing; SQNR(Sim vs ORT)
smoothed 43.3 / 41.2 dB (last_hidden_state / pooler output). Floor: 35 dB, as for every
int8 export.
"""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

import mixq
from tests.transforms.conftest import calibrated_sim
from tests.transforms.models import bert_batches, outlier_bert

pytestmark = [pytest.mark.onnx, pytest.mark.slow]
FLOOR_DB = 35.0
ORT = mixq.Config(default="int8", target="ort-cpu")  # LayerNorms float: their forks smooth


def _node_kinds(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(path).graph.node)


def _compute_kinds(path) -> Counter:
    """Node kinds other than the quantizers' (QuantizeLinear, DequantizeLinear, Cast)."""
    kinds = _node_kinds(path)
    return kinds - Counter({k: kinds[k] for k in ("QuantizeLinear", "DequantizeLinear", "Cast")})


@pytest.mark.parametrize("branches", [False, True])
def test_smoothed_export_adds_a_mul_per_branch_and_matches_the_sim(tmp_path, branches):
    model, inputs = outlier_bert(factor=60.0, initializer_range=0.05)
    calib = bert_batches()
    spec = {"name": "smooth", "branches": branches}
    smoothed = calibrated_sim(model, inputs, calib, ORT, [spec])
    rows = smoothed.transform_records[0].layers
    assert [r for r in rows if r["folded"]]
    report = smoothed.export_onnx(tmp_path / "smoothed.onnx")
    assert report.min_sqnr_db >= FLOOR_DB, report.to_text()
    plain = calibrated_sim(model, inputs, calib, ORT)
    plain.export_onnx(tmp_path / "plain.onnx", check=False)
    added = sum(len(r["layer"].split(" -> ")[1].split(", ")) for r in rows if not r["folded"])
    assert bool(added) == branches
    expected = _compute_kinds(tmp_path / "plain.onnx") + Counter({"Mul": added})
    assert _compute_kinds(tmp_path / "smoothed.onnx") == expected


def _optimised_kinds(path, tmp_path) -> Counter:
    """Node kinds of the graph ONNX Runtime runs (its default optimisations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _node_kinds(tmp_path / "optimised.onnx")


def test_linears_smoothed_on_one_fork_share_its_multiply_and_quantizer_in_ort(tmp_path):
    """Query, key and value read one LayerNorm output: smoothing gives each the same
    multiply and their quantizers the same scale. The file holds them once (equal
    constants are one initializer), so ORT computes one Mul and one QuantizeLinear per
    fork; before, it ran one of each per linear (the real MiniLM: 12 Muls and 12
    QuantizeLinears too many, 2-3 % of its int8 latency)."""
    model, inputs = outlier_bert(factor=60.0, initializer_range=0.05)
    calib = bert_batches()
    smoothed = calibrated_sim(model, inputs, calib, ORT, ["smooth"])
    forks = [r for r in smoothed.transform_records[0].layers if not r["folded"]]
    linears = sum(len(r["layer"].split(" -> ")[1].split(", ")) for r in forks)
    assert linears > len(forks)  # a fork read by several linears was smoothed
    smoothed.export_onnx(tmp_path / "smoothed.onnx")
    plain = calibrated_sim(model, inputs, calib, ORT)
    plain.export_onnx(tmp_path / "plain.onnx")
    (tmp_path / "run").mkdir()
    ran = _optimised_kinds(tmp_path / "smoothed.onnx", tmp_path / "run")
    ran_plain = _optimised_kinds(tmp_path / "plain.onnx", tmp_path)
    assert ran["Mul"] - ran_plain["Mul"] == len(forks)
    assert ran["QuantizeLinear"] == ran_plain["QuantizeLinear"]
