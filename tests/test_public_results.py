"""One rule for what users read: every result a public function returns is a `Table` or has
``.rows`` and ``.save`` (DESIGN.md, "every table: .rows, .save"). Issue 11, class 8."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import mixq


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    batches = [(torch.randn(6, 8),) for _ in range(2)]
    sim = mixq.quantize(model, batches[0], "int8").calibrate(batches, progress=False)
    return model, sim, batches


def _assert_rows_and_save(result, tmp_path, name):
    assert isinstance(result.rows, list) and result.rows, name
    assert all(isinstance(r, dict) for r in result.rows), name
    assert callable(result.save), name


def test_every_analysis_result_has_rows_and_save(calibrated, tmp_path):
    model, sim, batches = calibrated
    qa = mixq.QuantAnalysis(sim)
    results = {
        "find_bad_cases": qa.find_bad_cases(batches, progress=False),
        "compare_layers": qa.compare_layers(progress=False),
        "compare_layers isolated": qa.compare_layers(view="isolated", progress=False),
        "sensitivity": qa.sensitivity(mode="fast", progress=False),
        "advise": qa.advise(),
        "plan.table": sim.plan.table(),
        "quantizer_table": sim.quantizer_table(),
        "check": mixq.check(model, batches[0], "int8"),
        "search": mixq.search(model, batches[0], calib=batches, candidates=["int8", "int16"],
                              max_trials=2, progress=False),
    }  # fmt: skip
    for name, result in results.items():
        _assert_rows_and_save(result, tmp_path, name)


def test_bad_cases_rows_name_each_output_and_save_as_a_table(calibrated, tmp_path):
    _, sim, batches = calibrated
    bad = mixq.QuantAnalysis(sim).find_bad_cases(batches, metric="cosine", progress=False)
    row = bad.rows[0]
    assert {"output", "cosine", "cosine_index"} <= set(row)
    assert 0 <= row["cosine_index"] < 12
    saved = bad.save(tmp_path / "bad.json")
    assert json.loads(saved.read_text())["rows"] == json.loads(json.dumps(bad.rows))
    assert bad.save(tmp_path / "dir").name == "badcase.txt"  # a folder: the old files
