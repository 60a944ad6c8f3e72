from __future__ import annotations

import pytest
import torch

from tests.sim.onnx.models import export_zoo_mlp


@pytest.fixture(scope="session")
def zoo_mlp_onnx(tmp_path_factory):
    """(path, torch model, calibration batches) for `mixq.zoo.mlp` exported with dynamo."""
    path, model = export_zoo_mlp(tmp_path_factory.mktemp("onnx") / "mlp.onnx")
    g = torch.Generator().manual_seed(2)
    calib = [(torch.randn(4, 1, 8, 8, generator=g),) for _ in range(4)]
    return path, model, calib


def batches(shape: tuple[int, ...], count: int = 4, seed: int = 0) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g),) for _ in range(count)]
