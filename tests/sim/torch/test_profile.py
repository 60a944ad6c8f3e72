"""Profile-guided quantization: dump a calibration profile, reload it without calibrating."""

from __future__ import annotations

import pytest
import torch

import mixq
from mixq import CalibrationError


def test_profile_round_trip_reproduces_the_scales(cnn_model, tmp_path):
    model, inputs, calib = cnn_model
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib, histogram_bins=64)
    path = sim.dump_profile(tmp_path / "profile.yaml")
    text = path.read_text()
    assert text.startswith("---\nGlowToolsVersion") and "NodeOutputName: block.relu" in text
    assert len(sim.quantizer("x").histogram) == 64
    assert sum(sim.quantizer("x").histogram) == pytest.approx(sum(b[0].numel() for b in calib))
    fresh = mixq.quantize(model, inputs, "int8").load_profile(path)
    for name in sim.quantizers:
        q, r = sim.quantizer(name), fresh.quantizer(name)
        if q.point.kind == "activation":
            assert torch.equal(q.scale, r.scale) and torch.equal(q.zero_point, r.zero_point)
    assert torch.equal(fresh(*inputs), sim(*inputs))


def test_profile_for_another_plan_is_rejected(cnn_model, tmp_path):
    model, inputs, calib = cnn_model
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib)
    path = sim.dump_profile(tmp_path / "profile.yaml")
    other = mixq.quantize(
        model, inputs, mixq.Config().set_precision("block.conv1", activation="int16")
    )
    with pytest.raises(CalibrationError, match="no entry for"):
        other.load_profile(path)
