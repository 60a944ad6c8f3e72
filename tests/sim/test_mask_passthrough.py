"""Mask pass-through: which quantizers get it, and that it survives every way a range travels
(encodings, pack_sim / rebuild_sim, the search's range cache)."""

from __future__ import annotations

import pytest
import torch

import mixq
from mixq.plan.encodings import Encoding
from mixq.search.sims import SimFactory
from mixq.sim.executors.state import pack_sim, rebuild_sim
from tests.observers.test_masks import MaskedAttention, _inputs, export_masked

ONNX_MASKED = {"/Mul_output_0", "/Add_output_0"}  # (1 - mask) * finfo.min, and scores + it


def _masked(sim):
    return {n for n, q in sim.named_quantizers().items() if q.mask_passthrough}


def _sim(backend, tmp_path, inputs=None):
    model, (x, mask) = MaskedAttention().eval(), _inputs()
    source = model if backend == "torch" else export_masked(model, (x, mask), tmp_path / "m.onnx")
    sim = mixq.quantize(source, (x, mask), "int8")
    return sim.calibrate([inputs or (x, mask)], progress=False), (x, mask)


def test_calibration_flags_only_the_tensors_that_carry_masks(tmp_path):
    sim, _ = _sim("torch", tmp_path)
    assert _masked(sim) == {"mul", "add"}
    onnx_sim, _ = _sim("onnx", tmp_path)
    assert _masked(onnx_sim) == ONNX_MASKED


def test_calibration_without_padding_sets_no_flag(tmp_path):
    x, _ = _inputs()
    sim, _ = _sim("torch", tmp_path, inputs=(x, torch.ones(2, 5)))
    assert _masked(sim) == set()


def test_onnx_sim_adds_the_pass_through_only_where_masks_were_seen(tmp_path):
    sim, (x, mask) = _sim("onnx", tmp_path)
    sim(x, mask)  # the first run after calibration rebuilds the session once
    session = sim.session
    sim(x, mask)
    assert sim.session is session
    abs_nodes = [n.name for n in sim.model.graph.node if n.op_type == "Abs"]
    assert sorted(abs_nodes) == sorted(f"{q}/mixq_abs" for q in ONNX_MASKED)


def test_encoding_keeps_the_flag_and_old_files_load(tmp_path):
    sim, _ = _sim("torch", tmp_path)
    enc = sim.quantizer("add").encoding()
    assert enc.mask_passthrough
    assert Encoding.from_dict(enc.to_dict()) == enc
    old = {k: v for k, v in enc.to_dict().items() if k != "mask_passthrough"}
    assert not Encoding.from_dict(old).mask_passthrough


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnx", marks=pytest.mark.onnx)])
def test_pack_and_rebuild_keep_the_pass_through(backend, tmp_path):
    sim, (x, mask) = _sim(backend, tmp_path)
    twin = rebuild_sim(pack_sim(sim))
    assert _masked(twin) == _masked(sim)
    assert torch.equal(twin(x, mask), sim(x, mask))


def test_the_search_range_cache_keeps_the_pass_through(tmp_path):
    sim, (x, mask) = _sim("torch", tmp_path)
    factory = SimFactory(MaskedAttention().eval(), (x, mask), [(x, mask)])
    calibrated, cached = factory.sim(sim.plan), factory.sim(sim.plan)  # the second: cache
    assert _masked(cached) == _masked(calibrated) == {"mul", "add"}
    assert torch.equal(cached(x, mask), calibrated(x, mask))
