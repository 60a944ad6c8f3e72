"""Simulated int8 forward time / float forward time, measured alternately in one run.

Run: `make bench` (or `python bench/sim_overhead.py`). Prints the median of per-pair ratios
(sim / float) for a BERT from config and the digits CNN. Goal: <= 1.5x.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import mixq
from mixq import zoo


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(
    float_fn: Callable[[], Any], sim_fn: Callable[[], Any], pairs: int = 15
) -> tuple[float, float, float]:
    """Median float time, median sim time and median per-pair ratio (A B A B ...)."""
    for _ in range(3):  # warm-up
        float_fn()
        sim_fn()
    f_times, s_times = [], []
    for _ in range(pairs):
        f_times.append(_time(float_fn))
        s_times.append(_time(sim_fn))
    ratios = [s / f for s, f in zip(s_times, f_times, strict=True)]
    return statistics.median(f_times), statistics.median(s_times), statistics.median(ratios)


def bench(name: str, model: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
    sim = mixq.quantize(model, inputs, "int8").calibrate([inputs], progress=False)
    with torch.no_grad():
        f, s, r = alternate(lambda: model(*inputs), lambda: sim(*inputs))
    print(
        f"{name:<34} float {f * 1e3:8.2f} ms   sim int8 {s * 1e3:8.2f} ms   "
        f"ratio {r:5.2f}x  ({len(sim.quantizers)} quantizers)"
    )


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bert, bert_inputs = zoo.bert(layers=4, hidden=256, heads=4, seq=128, batch=8)
    bench("BERT (4 x 256, batch 8 x 128)", bert, bert_inputs)
    small, small_inputs = zoo.bert()
    bench("BERT (2 x 64, batch 4 x 16)", small, small_inputs)
    cnn, data = zoo.train_digits_cnn(epochs=2)
    bench("digits CNN (batch 360)", cnn, (data.x_test,))
    bench("digits CNN (batch 8)", cnn, (data.x_test[:8],))


if __name__ == "__main__":
    main()
