"""Exporting a small model prints no dependency chatter: no FutureWarning from torch's pytree,
no "torchvision is not installed" log lines (filtered by message where mixq triggers them)."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mixq.core.quiet import quiet_dependencies

pytestmark = pytest.mark.onnx

# a fresh interpreter: torch logs the torchvision lines only on the first export of a process
_SCRIPT = """
import sys, warnings, torch, mixq
warnings.simplefilter("always")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
x = torch.randn(4, 8)
sim = mixq.quantize(model.eval(), (x,), "int8").calibrate([(x,)], progress=False)
sim.export_onnx(sys.argv[1])
print("exported")
"""


def test_an_export_emits_no_dependency_warnings(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"MIXQ_PROGRESS": "0", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exported" in done.stdout
    for text in ("torchvision is not installed", "FutureWarning", "LeafSpec", "training mode"):
        assert text not in done.stderr, done.stderr[-2000:]


def test_other_warnings_still_show() -> None:
    with warnings.catch_warnings(record=True) as seen, quiet_dependencies():
        warnings.simplefilter("always")
        warnings.warn("something about the user's model", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something about the user's model"]


def test_filters_end_with_the_block() -> None:
    before = list(warnings.filters)
    with quiet_dependencies():
        pass
    assert warnings.filters == before
    assert not logging.getLogger("torch.onnx._internal.exporter._registration").filters
