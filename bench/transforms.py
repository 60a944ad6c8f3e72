"""Quantization-friendly transforms side by side: int8 quality and exported ORT latency.

Run: `python bench/transforms.py`. For the BERT with planted outlier channels
(`tests/transforms/models.py`) and the digits CNN, each variant (none, each transform, all)
is quantized to int8 (and w4a8), calibrated, and reported with its output SQNR against the
float model (and test accuracy for the CNN); each int8 variant is exported to ONNX and the
ORT sessions are timed in turn (A B C ... A B C ..., median per variant, ratio to none).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.transforms.models

import mixq
from mixq import zoo
from mixq.analysis.metrics import float_leaves, sqnr
from tests.transforms.models import bert_batches, outlier_bert

VARIANTS: dict[str, list[str]] = {
    "none": [],
    "smooth": ["smooth"],
    "equalize": ["equalize"],
    "bias_correct": ["bias_correct"],
    "adaround": ["adaround"],
    "all": ["smooth", "equalize", "adaround", "bias_correct"],
}


def _first(out: Any) -> torch.Tensor:
    return float_leaves(out)[0]


def _quantize(model: Any, inputs: Any, calib: list[Any], config: Any, transforms: list[str]):
    start = time.perf_counter()
    sim = mixq.quantize(model, inputs, config, transforms=transforms, calib=calib)
    seconds = time.perf_counter() - start
    return sim.calibrate(calib, progress=False), seconds


def _session(sim: Any, path: Path) -> tuple[ort.InferenceSession, float]:
    report = sim.export_onnx(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), (
        report.min_sqnr_db
    )


def _latencies(sessions: dict[str, ort.InferenceSession], inputs: Any, rounds: int = 30):
    """Median ms per session, timed in turn (A B C ... A B C ...)."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    arrays = [np.asarray(t) for t in inputs]
    feeds = {
        name: {i.name: a for i, a in zip(s.get_inputs(), arrays, strict=True)}
        for name, s in sessions.items()
    }
    for _ in range(3):
        for name, s in sessions.items():
            s.run(None, feeds[name])
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[name])
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def bench(
    title: str, model: Any, inputs: tuple[Any, ...], calib: list[Any], labels: Any = None
) -> None:
    print(f"\n{title}")
    with torch.no_grad():
        ref = _first(model(*inputs))
    header = f"{'variant':<13} {'int8 dB':>8} {'w4a8 dB':>8} {'transform s':>12}"
    header += f" {'ORT vs Sim dB':>14} {'ORT ms':>8} {'ratio':>6}"
    print(header + (f" {'int8 acc':>9}" if labels is not None else ""))
    sessions, rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, transforms in VARIANTS.items():
            sim, seconds = _quantize(model, inputs, calib, "int8", transforms)
            w4, _ = _quantize(model, inputs, calib, ("int8", "int4"), transforms)
            with torch.no_grad():
                out, out4 = _first(sim(*inputs)), _first(w4(*inputs))
            sessions[name], match = _session(sim, Path(tmp) / f"{name}.onnx")
            acc = float((out.argmax(1) == labels).float().mean()) if labels is not None else None
            rows[name] = (sqnr(ref, out), sqnr(ref, out4), seconds, match, acc)
        latency = _latencies(sessions, inputs)
    for name, (db, db4, seconds, match, acc) in rows.items():
        line = f"{name:<13} {db:8.2f} {db4:8.2f} {seconds:12.2f} {match:14.1f}"
        line += f" {latency[name]:8.3f} {latency[name] / latency['none']:6.2f}"
        print(line + (f" {acc:9.4f}" if acc is not None else ""))


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ORT {ort.__version__}")
    model, inputs = outlier_bert()
    bench(
        "BERT 2 x 64 with planted outlier channels (SQNR of last_hidden_state)",
        model,
        inputs,
        bert_batches(),
    )
    cnn, data = zoo.train_digits_cnn()
    with torch.no_grad():
        float_acc = float((cnn(data.x_test).argmax(1) == data.y_test).float().mean())
    bench(
        f"digits CNN, test set of {len(data.x_test)} (float accuracy {float_acc:.4f})",
        cnn,
        (data.x_test,),
        data.calibration_batches()[:8],
        data.y_test,
    )


if __name__ == "__main__":
    main()
