"""Pins the public surface of DESIGN.md: users and benchmarks script against these names."""

from __future__ import annotations

import inspect

import mixq
from mixq import primitives as P


def test_public_names_of_mixq():
    for name in [
        "quantize",
        "Config",
        "Plan",
        "ConflictError",
        "primitives",
        "qtype",
        "Table",
        "CalibrationError",
        "CaptureError",
        "ConfigError",
        "apply",
        "check",
        "search",
        "QuantAnalysis",
    ]:
        assert name in mixq.__all__ and hasattr(mixq, name), name


def test_primitives_signatures():
    assert list(inspect.signature(P.quantize).parameters) == [
        "x",
        "scale",
        "zero_point",
        "dtype",
        "axis",
        "block_size",
    ]
    assert list(inspect.signature(P.dequantize).parameters) == [
        "q",
        "scale",
        "zero_point",
        "dtype",
        "axis",
        "block_size",
    ]
    assert list(inspect.signature(P.fake_quantize).parameters)[:4] == [
        "x",
        "scale",
        "zero_point",
        "dtype",
    ]
    assert list(inspect.signature(P.cast).parameters) == ["x", "dtype"]


def test_config_and_sim_surface():
    cfg = mixq.Config(default="int8", target="generic")
    assert cfg.set_precision("encoder.layer.0", activation="int16") is cfg
    params = inspect.signature(mixq.quantize).parameters
    assert list(params)[:4] == ["model", "example_inputs", "config", "strict"]
    from mixq.sim.torch.sim import Sim

    for name in [
        "calibrate",
        "quantizers",
        "disabled",
        "plan",
        "resolution_report",
        "encodings",
        "set_range",
        "only",
    ]:
        assert hasattr(Sim, name) or name == "plan", name


def test_every_module_declares_all():
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(mixq.__path__, "mixq."):
        module = importlib.import_module(info.name)
        if not info.ispkg and not info.name.startswith("mixq.cli"):
            assert hasattr(module, "__all__"), info.name
