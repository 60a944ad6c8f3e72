from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import mixq
from mixq.analysis.metrics import float_leaves, sqnr
from mixq.transforms.stats import record_inputs, run_batches
from tests.transforms.models import bert_batches, outlier_bert


@pytest.fixture(scope="session")
def outlier_model():
    """(model, inputs, calibration batches) for the BERT with planted outlier channels."""
    model, inputs = outlier_bert()
    return model, inputs, bert_batches()


def calibrated_sim(model, inputs, calib, config="int8", transforms=()):
    sim = mixq.quantize(model, inputs, config, transforms=list(transforms), calib=calib)
    return sim.calibrate(calib, progress=False)


def output_sqnr(sim, model, inputs, weights_only=False):
    """SQNR (dB) of the Sim's first output against the float model's; with
    ``weights_only`` the activation quantizers are off."""
    weights = {p.name for p in sim.points if p.kind == "weight"}
    off = [n for n in sim.quantizers if n not in weights] if weights_only else []
    with torch.no_grad(), sim.disabled(off):
        out, ref = sim(*inputs), model(*inputs)
    return sqnr(float_leaves(ref)[0], float_leaves(out)[0])


def layer_output_mse(model, calib, layer, *weights):
    """Output MSE of the linear ``layer`` of ``model`` with each of ``weights`` against its
    own weight, on its float inputs recorded over ``calib`` (apart from any transform's own
    bookkeeping)."""
    with record_inputs(model, [layer], keep=4096) as stats:
        run_batches(model, calib)
    x = stats[layer].samples()
    w = model.get_submodule(layer).weight.detach()
    ref = F.linear(x, w)
    return [float((F.linear(x, wq) - ref).pow(2).mean()) for wq in weights]


def quantized_sqnr(model, inputs, calib, config="int8", transforms=()):
    return output_sqnr(calibrated_sim(model, inputs, calib, config, transforms), model, inputs)


@pytest.fixture(scope="session")
def outlier_sims(outlier_model):
    """Calibrated Sims of the outlier BERT by (config, transforms), built once per session."""
    cache = {}

    def get(config, *transforms):
        key = (str(config), transforms)
        if key not in cache:
            cache[key] = calibrated_sim(*outlier_model, config, transforms)
        return cache[key]

    return get
