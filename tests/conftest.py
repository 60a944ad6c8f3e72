from __future__ import annotations

import os

import pytest
import torch

from mixq import zoo
from mixq.sim.executors import ProcessExecutor, RayExecutor

os.environ.setdefault("MIXQ_PROGRESS", "0")


@pytest.fixture(scope="session")
def bert_model():
    """(model, inputs, calibration batches) for the random-weight BERT."""
    model, inputs = zoo.bert()
    calib = []
    for s in range(4):
        g = torch.Generator().manual_seed(100 + s)
        ids = torch.randint(0, 500, (4, 16), generator=g)
        calib.append((ids, torch.ones(4, 16, dtype=torch.long)))
    return model, inputs, calib


@pytest.fixture(scope="session")
def cnn_model():
    """(model, inputs, calibration batches) for the residual CNN with live batch-norms."""
    model, inputs = zoo.resnet_like()
    g = torch.Generator().manual_seed(1)
    calib = [(torch.rand(8, 1, 8, 8, generator=g),) for _ in range(4)]
    return model, inputs, calib


@pytest.fixture(scope="session")
def mlp_model():
    model, inputs = zoo.mlp()
    g = torch.Generator().manual_seed(2)
    calib = [(torch.randn(4, 1, 8, 8, generator=g),) for _ in range(4)]
    return model, inputs, calib


# -- executors (tests/analysis, tests/search): one pool / Ray cluster per test module -------
@pytest.fixture(scope="module")
def pool():
    """A local process pool of two workers."""
    with ProcessExecutor(workers=2) as executor:
        yield executor


@pytest.fixture(scope="module")
def ray_pool():
    """Two Ray actors on a local two-CPU cluster (skipped without Ray)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mixq[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RayExecutor(workers=2) as executor:
            yield executor
    finally:
        ray.shutdown()
