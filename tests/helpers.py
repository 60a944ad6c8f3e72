"""Shared test helpers."""

from __future__ import annotations

import torch

from mixq.analysis.metrics import sqnr

# SQNR floors (dB) of a simulated model's output against the float model, per precision of
# the whole model, on the random-weight BERT (2 layers, hidden 64) and the residual CNN,
# calibrated on 4 batches and tested on one of them. Measured values on 2026-11-23 were
# BERT / CNN: fp16 63 / 69, int16 79 / 94, bf16 45 / 51, int8 32 / 47, w4a8 19 / 26,
# fp8_e4m3 24 / 28; floors sit about 5 dB below the lower of the two.
SQNR_FLOOR_DB = {
    "fp16": 57.0,
    "int16": 70.0,
    "bf16": 40.0,
    "int8": 27.0,
    "w4a8": 14.0,
    "fp8_e4m3": 19.0,
}


def assert_sqnr(out: torch.Tensor, ref: torch.Tensor, min_db: float) -> float:
    """Assert the SQNR of ``out`` against ``ref`` is at least ``min_db``; return it."""
    value = sqnr(ref, out)
    assert value >= min_db, f"SQNR {value:.1f} dB is below the floor of {min_db} dB"
    return value
