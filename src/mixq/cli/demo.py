"""`mixq demo`: train a small CNN on scikit-learn's digits and compare precisions end to end.

Example:
    >>> # table = run_demo(out=None)   # ~10 s: trains, quantizes 7 ways, prints a table
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mixq.analysis.metrics import sqnr
from mixq.api import quantize
from mixq.core.progress import progress_bar
from mixq.core.qtypes import qtype
from mixq.core.table import Table
from mixq.rules.config import Config, Request
from mixq.zoo import DigitsData, train_digits_cnn

__all__ = ["demo_configs", "evaluate_precision", "mixed_config", "run_demo"]


def demo_configs() -> dict[str, Config | None]:
    """The uniform precisions the demo compares (fp32 is the float model itself)."""
    return {
        "fp32": None,
        "fp16": Config(default="fp16"),
        "bf16": Config(default="bf16"),
        "int16": Config(default="int16"),
        "int8": Config(default="int8"),
        "w4a8": Config(default=("int8", "int4")),
    }


def mixed_config(model: torch.nn.Module, data: DigitsData, top: int = 2) -> Config:
    """int8, with the ``top`` activations whose int8 error alone hurts the output most in int16.

    Each activation quantizer is enabled alone and the output SQNR measured (a preview of
    the sensitivity analysis); the worst ones are raised.
    """
    x = data.x_test
    sim = quantize(model, (x[:32],), "int8").calibrate(data.calibration_batches(), progress=False)
    with torch.no_grad():
        ref = model(x)
        scores = {}
        for point in sim.points:
            if point.kind == "activation" and point.op is not None:
                with sim.only([point.name]):
                    scores[point.op] = sqnr(ref, sim(x))
    config = Config(default="int8")
    for op in sorted(scores, key=scores.__getitem__)[:top]:
        config.set_precision(op, activation="int16")
    return config


def _weight_kib(sim: Any) -> float:
    params = dict(sim.module.named_parameters())
    bits = 0
    for name, p in params.items():
        point = next((q for q in sim.points if q.kind == "weight" and q.target == name), None)
        bits += p.numel() * (qtype(point.precision).bits if point else 32)
    return bits / 8 / 1024


def evaluate_precision(
    model: torch.nn.Module, data: DigitsData, config: Config | None
) -> dict[str, Any]:
    """Accuracy, output SQNR vs float, weight size and quantizer count for one config."""
    x = data.x_test
    with torch.no_grad():
        ref = model(x)
        if config is None:
            out, kib, count = ref, sum(p.numel() for p in model.parameters()) * 4 / 1024, 0
        else:
            sim = quantize(model, (x[:32],), config)
            sim.calibrate(data.calibration_batches(), progress=False)
            out, kib, count = sim(x), _weight_kib(sim), len(sim.quantizers)
    acc = float((out.argmax(1) == data.y_test).float().mean())
    return {
        "accuracy %": round(100 * acc, 2),
        "SQNR dB": round(sqnr(ref, out), 1),
        "weights KiB": round(kib, 1),
        "quantizers": count,
    }


def run_demo(out: str | Path | None = None, epochs: int = 20) -> Table:
    """Train the digits CNN, evaluate every demo precision, return (and save) the table."""
    model, data = train_digits_cnn(epochs=epochs, progress=True)
    mixed = mixed_config(model, data)
    configs = demo_configs()
    raised = [r.target for r in mixed.rules if isinstance(r, Request)]
    configs["mixed: int8, a16 on " + ", ".join(raised)] = mixed
    rows = [
        {"precision": label, **evaluate_precision(model, data, config)}
        for label, config in progress_bar(configs.items(), "quantizing", total=len(configs))
    ]
    table = Table(rows, title=f"digits CNN, {len(data.x_test)} test images")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        table.save(out / "demo.csv")
        table.save(out / "demo.txt")
        quantize(model, (data.x_test[:4],), mixed).plan.save(out / "mixed_plan.yaml")
    return table
