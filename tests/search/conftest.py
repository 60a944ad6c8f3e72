from __future__ import annotations

import pytest
import torch

from mixq import zoo
from tests.transforms.models import bert_batches


@pytest.fixture(scope="session")
def digits():
    """(model, example inputs, calibration batches, eval batches, eval labels): the digits
    CNN trained here (a few seconds), evaluated on the 360 test images in 3 batches."""
    model, data = zoo.train_digits_cnn(epochs=10)
    x, y = data.x_test, data.y_test
    evaluation = [(x[i : i + 120],) for i in range(0, len(x), 120)]
    labels = [y[i : i + 120] for i in range(0, len(y), 120)]
    return model, (x[:8],), data.calibration_batches(128)[:4], evaluation, labels


@pytest.fixture(scope="session")
def outlier_bert():
    """The random-weight BERT with planted outliers: two channels of each FFN output dense
    scaled by 30, so int8 activations after them lose most of their resolution."""
    model, inputs = zoo.bert()
    with torch.no_grad():
        for layer in model.encoder.layer:
            dense = layer.output.dense
            dense.weight[[3, 17]] *= 30
            dense.bias[[3, 17]] *= 30
    return model, inputs, bert_batches(count=3, batch=8, seed=200)
