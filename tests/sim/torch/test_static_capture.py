"""Shapes a capture cannot take. MobileViT's patch grid is computed from the image size:
torch.export keeps its input dynamic only under a relation between the sizes it records as a
guard; a Sim run on shapes that break it raises a ValueError naming both shapes, not torch's
bare ``Guard failed`` assertion. A model it cannot keep dynamic at all (Swin in the corpus)
is captured for the example's shapes and says so (``capture_notes``, ``static_shapes``)."""

from __future__ import annotations

import pytest
import torch

import mixq
from tests.conformance import corpus

pytestmark = pytest.mark.slow


def test_shapes_that_break_a_recorded_guard_raise_a_value_error_naming_both():
    model, (x,) = corpus.mobilevit()
    sim = mixq.quantize(model, x, "int8")
    sim.calibrate([x], progress=False)
    with torch.no_grad():
        sim(x)
        with pytest.raises(ValueError, match=r"input shapes \[\(1, 3, 32, 32\)\] break .* "
                           r"example shapes \[\(2, 3, 32, 32\)\]"):  # fmt: skip
            sim(torch.randn(1, 3, 32, 32))


def test_a_static_capture_refuses_other_shapes_by_name():
    model, (x,) = corpus.resnet()
    sim = mixq.quantize(model, x, "int8")
    sim.static_shapes = [tuple(x.shape)]  # as a capture that fell back to fixed shapes sets it
    sim.calibrate([x], progress=False)
    with pytest.raises(ValueError, match=r"captured for input shapes \[\(2, 3, 32, 32\)\] only"):
        sim(torch.randn(1, 3, 32, 32))


def test_a_dynamic_capture_takes_other_shapes():
    model, (x,) = corpus.resnet()
    sim = mixq.quantize(model, x, "int8")
    assert sim.static_shapes is None
    sim.calibrate([x], progress=False)
    with torch.no_grad():
        sim(torch.randn(1, 3, 32, 32))


@pytest.mark.onnx
def test_a_static_capture_exports_for_its_shapes_and_says_so(tmp_path):
    import onnx

    model, (x,) = corpus.resnet()
    sim = mixq.quantize(model, x, "int8")
    sim.static_shapes = [tuple(x.shape)]
    sim.calibrate([x], progress=False)
    report = sim.export_onnx(tmp_path / "static.onnx")
    assert any("example's input shapes only" in n for n in report.notes)
    dims = onnx.load(str(tmp_path / "static.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == list(x.shape)
