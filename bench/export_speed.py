"""Latency of mixq's exported ONNX models in ONNX Runtime vs fp32 and vs ORT's own quantizers.

Run: `python bench/export_speed.py`. For each model: the fp32 ONNX export, mixq int8 (target
generic: residual adds fused as on an NPU), mixq int8 for target ort-cpu (the add a kernel of
its own, as ORT's CPU provider runs QLinearConv then QLinearAdd), mixq mixed, ORT
`quantize_dynamic` and ORT `quantize_static` (QDQ, per-channel, u8/s8) on the same fp32
file, timed alternately (one run of each per round), median over rounds; cosine and SQNR of
each output against the float torch model beside it. Every variant is
calibrated on the same batches, shaped as the (static) fp32 export's input.
ORT runs with MIXQ_BENCH_THREADS intra-op threads (default 2; 1 is steadier on a busy
machine).
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

import mixq
from mixq import zoo
from mixq.analysis.metrics import cosine, float_leaves, sqnr

THREADS = int(os.environ.get("MIXQ_BENCH_THREADS", "2"))


class _Reader(CalibrationDataReader):
    def __init__(self, names: list[str], batches: list[tuple[torch.Tensor, ...]]) -> None:
        self.feeds = iter([{n: t.numpy() for n, t in zip(names, b, strict=True)} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _fp32_onnx(model: torch.nn.Module, inputs: tuple[Any, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), dynamo=True, opset_version=21, verbose=False)
    return path


def _variants(
    name: str, model: Any, inputs: Any, calib: list[Any], mixed: mixq.Config, tmp: Path
) -> dict[str, Path]:
    paths = {"fp32": _fp32_onnx(model, inputs, tmp / f"{name}_fp32.onnx")}
    ort_cpu = mixq.Config(default="int8", target="ort-cpu")  # residual adds unfused, as ORT
    for label, config in (("mixq int8", "int8"), ("mixq ort-cpu", ort_cpu), ("mixq mixed", mixed)):
        sim = mixq.quantize(model, inputs, config).calibrate(calib, progress=False)
        paths[label] = tmp / f"{name}_{label.replace(' ', '_')}.onnx"
        sim.export_onnx(paths[label], check=False)
    names = [i.name for i in _session(paths["fp32"]).get_inputs()]
    try:
        quantize_dynamic(
            str(paths["fp32"]), str(tmp / f"{name}_dyn.onnx"), weight_type=QuantType.QInt8
        )
        paths["ort dynamic"] = tmp / f"{name}_dyn.onnx"
    except Exception as e:  # report, keep going
        print(f"  ort quantize_dynamic failed on {name}: {str(e)[:120]}")
    try:
        quantize_static(
            str(paths["fp32"]),
            str(tmp / f"{name}_static.onnx"),
            _Reader(names, calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        paths["ort static"] = tmp / f"{name}_static.onnx"
    except Exception as e:
        print(f"  ort quantize_static failed on {name}: {str(e)[:120]}")
    return paths


def bench(
    name: str, model: Any, inputs: Any, calib: list[Any], mixed: mixq.Config, rounds: int = 15
) -> None:
    with tempfile.TemporaryDirectory() as d:
        paths = _variants(name, model, inputs, calib, mixed, Path(d))
        sessions = {k: _session(p) for k, p in paths.items()}
        names = [i.name for i in sessions["fp32"].get_inputs()]
        feeds = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
        with torch.no_grad():
            ref = float_leaves(model(*inputs))[0]
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(3):
            for s in sessions.values():
                s.run(None, feeds)
        for _ in range(rounds):
            for k, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feeds)
                times[k].append(time.perf_counter() - start)
        base = statistics.median(times["fp32"])
        print(f"{name}")
        for k, s in sessions.items():
            out = torch.from_numpy(np.asarray(s.run(None, feeds)[0]))
            med = statistics.median(times[k])
            print(
                f"  {k:<12} {med * 1e3:8.2f} ms  {med / base:5.2f}x fp32   "
                f"cosine {cosine(ref, out):.6f}   SQNR vs float {sqnr(ref, out):6.1f} dB"
            )


def main() -> None:
    torch.manual_seed(0)
    logging.getLogger().setLevel(logging.ERROR)  # ORT quantizer's pre-processing hints
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {THREADS} ORT threads")
    bert, (ids, mask) = zoo.bert(layers=4, hidden=256, heads=4, seq=128, batch=8)
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randint(0, 500, ids.shape, generator=gen), mask) for _ in range(4)]
    mixed = mixq.Config().set_precision("kind:softmax", activation="fp16")
    bench("BERT 4 x 256, batch 8 x 128", bert, (ids, mask), calib, mixed)
    cnn, data = zoo.train_digits_cnn(epochs=5)
    x = data.x_test[:256]
    cnn_mixed = mixq.Config().set_precision("fc", activation="int16")
    calib = data.calibration_batches(size=len(x))[:4]  # full batches: the export is static
    bench("digits CNN, batch 256", cnn, (x,), calib, cnn_mixed)


if __name__ == "__main__":
    main()
