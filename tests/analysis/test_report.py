"""The HTML report: written from any state of a QuantAnalysis, and rendered by a real browser.

The rendering tests load the page in headless Chromium (``--dump-dom``), count the plots
plotly actually drew (each leaves an ``svg.main-svg``) and fail on any JavaScript error
Chromium logs to stderr.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import mixq
from mixq.analysis import report as report_module
from mixq.analysis.quant_analysis import QuantAnalysis
from mixq.analysis.report import write_report
from mixq.core.table import Table

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not on PATH: the rendering check needs headless Chromium"
)
# A fixed range far narrower than the data: the range plot must flag this quantizer.
CLIPPED = "encoder.layer.0.attention.self.query"
# SQNR, two sensitivity tables, calibration ranges, histograms of the worst tensors.
PLOTS = 5
TABLES = [
    "plan",
    "badcase_overall",
    "badcase_index",
    "badcase_value",
    "compare_accumulated",
    "compare_isolated",
    "sensitivity_activation",
    "sensitivity_weight",
    "advice",
]


def render(page: Path, profile: Path) -> tuple[str, list[str]]:
    """(DOM after scripts ran, JavaScript error lines) of ``page`` in headless Chromium."""
    assert CHROMIUM is not None
    profile.mkdir()
    # Without the background-networking flags Chromium's connections are refused here.
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
    flags += "--disable-background-networking --disable-component-update --disable-sync "
    flags += "--enable-logging=stderr --v=0 --virtual-time-budget=10000 --dump-dom"
    cmd = [CHROMIUM, *flags.split(), f"--user-data-dir={profile}", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, js_errors(done.stderr)


def js_errors(stderr: str) -> list[str]:
    """Console lines Chromium logs for uncaught exceptions and console.error calls."""
    return [
        line
        for line in stderr.splitlines()
        if "Uncaught" in line or (":CONSOLE" in line and "Error" in line)
    ]


def drawn_plots(dom: str) -> int:
    """Plot containers in which plotly rendered its SVG."""
    chunks = dom.split('<div class="plot">')[1:]
    return sum('class="main-svg"' in chunk for chunk in chunks)


@pytest.fixture(scope="module")
def sim(bert_model):
    model, inputs, calib = bert_model
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib, progress=False)
    sim.set_range(CLIPPED, -0.2, 0.2)
    return sim


@pytest.fixture(scope="module")
def analysed(sim, bert_model) -> QuantAnalysis:
    qa = QuantAnalysis(sim)
    qa.find_bad_cases(bert_model[2], progress=False)
    for view in ("accumulated", "isolated"):
        qa.compare_layers(view, progress=False)
    for kind in ("activation", "weight"):
        qa.sensitivity(kind=kind, mode="fast", progress=False)
    qa.advise()
    return qa


@pytest.fixture(scope="module")
def report(analysed, tmp_path_factory) -> Path:
    return write_report(tmp_path_factory.mktemp("report") / "report.html", analysed, title="bert")


@needs_chromium
def test_every_plot_renders_without_js_errors(report, tmp_path):
    dom, errors = render(report, tmp_path / "profile")
    assert errors == []
    assert 'data-mixq-plots="5"' in dom
    assert drawn_plots(dom) == PLOTS
    assert dom.count('class="main-svg"') >= PLOTS
    for key in TABLES:
        assert re.search(f'<details[^>]*id="table-{key}"', dom), key
    assert dom.count("<table>") == len(TABLES) + 1  # + the summary


def test_report_is_self_contained(report):
    page = report.read_text()
    assert '<script src="http' not in page
    assert "<script src=" not in page
    assert "Plotly" in page and len(page) > 1_000_000  # plotly.js itself is inline


def test_range_plot_flags_the_clipped_quantizer(report):
    page = report.read_text()
    assert "data exceeds grid" in page
    note = re.search(r"(\d+) of (\d+) quantizers see data beyond their grid: ([^<]*)", page)
    assert note is not None
    assert CLIPPED in note.group(3).split(", ")


def test_histograms_are_subsampled(analysed, tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "MAX_VALUES", 100)
    page = write_report(tmp_path / "r.html", analysed).read_text()
    # plotly writes numpy arrays as base64 typed arrays (JSON-escaped); float32: 4 bytes each
    arrays = re.findall(r'"x":\{"dtype":"f4","bdata":("[^"]*")', page)
    sizes = [len(base64.b64decode(json.loads(a))) // 4 for a in arrays]
    assert sizes == [100] * 2 * report_module.WORST_OPS  # float and quantized per op


@needs_chromium
def test_plan_only_report_notes_what_is_missing(sim, tmp_path):
    path = write_report(tmp_path / "plan.html", QuantAnalysis(sim))
    dom, errors = render(path, tmp_path / "profile")
    assert errors == []
    assert drawn_plots(dom) == 0 and 'data-mixq-plots="0"' in dom
    assert dom.count("Not available") == 4  # SQNR, sensitivity, ranges, histograms
    assert 'id="table-plan"' in dom
    assert "Not run: badcase_overall, badcase_index, badcase_value" in dom


def test_text_is_escaped(sim, tmp_path):
    qa = QuantAnalysis(sim)
    qa.tables["custom"] = Table([{"op": "<script>alert(1)</script>", "x": 0.123456789}])
    page = write_report(tmp_path / "r.html", qa).read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<td>0.1235</td>" in page


@needs_chromium
def test_the_js_error_check_catches_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>notDefined();</script></body></html>")
    _, errors = render(page, tmp_path / "profile")
    assert errors and "notDefined" in errors[0]
