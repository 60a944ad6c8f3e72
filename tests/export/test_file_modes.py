"""Written files get a plain ``open``'s mode (0644 under umask 022), not mkstemp's 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import helper

from mixq.export.core import save_model
from mixq.export.formats.registry import atomic_write


@pytest.fixture(params=[0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tiny_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph)


def test_atomic_write_respects_the_umask(tmp_path: Path, umask: int) -> None:
    path = atomic_write(tmp_path / "model.aimet.encodings", "{}")
    assert _mode(path) == 0o666 & ~umask
    assert path.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_save_model_respects_the_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "model.onnx"
    save_model(_tiny_model(), path)
    assert _mode(path) == 0o666 & ~umask
    assert onnx.load(path).graph.node[0].op_type == "Relu"


def test_the_default_umask_gives_0644(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        save_model(_tiny_model(), tmp_path / "m.onnx")
        atomic_write(tmp_path / "m.json", "{}")
    finally:
        os.umask(before)
    assert {_mode(p) for p in tmp_path.iterdir()} == {0o644}
