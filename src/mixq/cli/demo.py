"""`mixq demo`: the digits CNN in six precisions, with accuracy, cost and measured latency.

Rows: the float model, uniform fp16 / int16 / int8 / w4a8, and a mixed plan `mixq.search`
finds in a few seconds. Columns: test accuracy, output SQNR against float, BOPs relative to
all-int8, weight size, and the ONNX Runtime latency of each exported model, measured in the
same run against the fp32 export (interleaved runs, medians).

Example:
    >>> # table = run_demo(out="out/demo")   # ~30 s with the CNN cached: prints, returns a table
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixq.analysis.metrics import sqnr
from mixq.api import quantize
from mixq.core.progress import progress_bar
from mixq.core.quiet import quiet_dependencies
from mixq.core.table import Table
from mixq.plan.cost import plan_cost
from mixq.plan.plan import Plan
from mixq.rules.config import Config
from mixq.search.entry import search
from mixq.zoo import DigitsData, train_digits_cnn

__all__ = [
    "DemoTable",
    "cheapest_uniform_at",
    "demo_configs",
    "evaluate_precision",
    "run_demo",
    "search_mixed",
]

NAMING = (
    "aXwY = X-bit activations, Y-bit weights: int16 = a16w16, int8 = a8w8, w4a8 = a8w4.\n"
    "BOPs = bit-operations (MACs x activation bits x weight bits), relative to all-int8."
)
CANDIDATES = ["int8", ("int8", "int4"), "int16"]  # per op: a8w8, a8w4, a16w16
LATENCY_ROUNDS = 15  # A B A B ... pairs per row; medians of these


@dataclass
class DemoTable(Table):
    """The demo's table with its notes (naming, the verdict, what to try next) below it."""

    notes: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        return "\n".join([super().to_text(), "", *self.notes])


def demo_configs() -> dict[str, Config]:
    """The uniform precisions the demo compares (fp32: the float model, as a plan)."""
    return {
        "fp32": Config(default="fp32"),
        "fp16": Config(default="fp16"),
        "int16": Config(default="int16"),
        "int8": Config(default="int8"),
        "w4a8": Config(default=("int8", "int4")),
    }


def search_mixed(model: torch.nn.Module, data: DigitsData, time_budget_s: float = 20) -> Plan:
    """The cheapest plan (in BOPs) mixing a8w8, a8w4 and a16w16 whose test accuracy is the
    float model's (no drop: a uniform int8 or a8w4 plan on this CNN often comes within 0.5 %
    already, so a looser target would only find the uniform plan again)."""
    x, y = data.x_test, data.y_test
    result = search(
        model,
        (x[:8],),
        calib=data.calibration_batches(128)[:4],
        data=[(x,)],
        labels=[y],
        evaluate="accuracy",
        target={"drop": 0.0},
        candidates=CANDIDATES,
        strategy="fallback",
        time_budget_s=time_budget_s,
        progress=False,
    )
    return result.plan


def evaluate_precision(
    model: torch.nn.Module, data: DigitsData, config: Config | Plan, onnx_dir: Path | None = None
) -> tuple[dict[str, Any], Path | str]:
    """Accuracy, SQNR vs float, BOPs and weight size of one config, and its ONNX export
    (a path, or why there is none)."""
    x = data.x_test
    sim = quantize(model, (x[:64],), config)
    sim.calibrate(data.calibration_batches(), progress=False)
    with torch.no_grad():
        ref, out = model(x), sim(x)
    cost = plan_cost(sim.graph, sim.plan, sim.op_stats())
    acc = float((out.argmax(1) == data.y_test).float().mean())
    row = {
        "accuracy %": round(100 * acc, 1),
        "SQNR dB": round(sqnr(ref, out), 1) if not torch.equal(ref, out) else "inf",
        "BOPs/int8": cost.bops,
        "weights KiB": round(cost.weight_bytes / 1024, 1),
    }
    return row, _export(sim, onnx_dir) if onnx_dir is not None else "not exported"


def _export(sim: Any, onnx_dir: Path) -> Path | str:
    path = onnx_dir / f"model{len(list(onnx_dir.iterdir()))}.onnx"
    try:
        sim.export_onnx(path, check=False)
    except Exception as exc:  # the row stays; only its latency is missing
        return str(exc).splitlines()[0][:120]
    return path


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # steady timings on a busy machine
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _paired_latency(base: Any, other: Any, x: np.ndarray) -> tuple[float, float]:
    """Median ms of ``base`` and ``other``, run alternately so load changes hit both."""
    feeds = [{s.get_inputs()[0].name: x} for s in (base, other)]
    for s, f in zip((base, other), feeds, strict=True):
        s.run(None, f)  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(LATENCY_ROUNDS):
        for s, f, t in zip((base, other), feeds, times, strict=True):
            t0 = time.perf_counter()
            s.run(None, f)
            t.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times[0]), statistics.median(times[1])


def _add_latency(rows: list[dict[str, Any]], exports: list[Path | str], x: np.ndarray) -> None:
    base = _session(exports[0]) if isinstance(exports[0], Path) else None
    for row, exported in zip(rows, exports, strict=True):
        try:
            if base is None or not isinstance(exported, Path):
                raise RuntimeError(exported if isinstance(exported, str) else "no fp32 export")
            if exported == exports[0]:
                ms = statistics.median(_paired_latency(base, base, x))
                row["ORT ms"], row["vs fp32"] = round(ms, 3), "1.00x"
                continue
            ref_ms, ms = _paired_latency(base, _session(exported), x)
            row["ORT ms"], row["vs fp32"] = round(ms, 3), f"{ref_ms / ms:.2f}x"
        except Exception as exc:
            row["ORT ms"], row["vs fp32"] = None, f"n/a: {str(exc).splitlines()[0][:60]}"


def cheapest_uniform_at(rows: list[dict[str, Any]], accuracy: float) -> dict[str, Any] | None:
    """The uniform row (not fp32, not mixed) with the fewest BOPs at ``accuracy`` or above."""
    uniform = [r for r in rows if r["precision"].split()[0] not in ("fp32", "mixed")]
    reaching = [r for r in uniform if r["accuracy %"] >= accuracy]
    return min(reaching, key=lambda r: r["BOPs/int8"]) if reaching else None


def _verdict(rows: list[dict[str, Any]]) -> str:
    """Whether the mixed plan beats the uniform ones, in numbers (honest either way)."""
    by = {r["precision"].split()[0]: r for r in rows}
    mixed, int16, int8, w4 = by["mixed"], by["int16"], by["int8"], by["w4a8"]
    acc, bops = mixed["accuracy %"], mixed["BOPs/int8"]
    found = []
    if acc >= int16["accuracy %"] and bops < int16["BOPs/int8"]:
        found.append(
            f"the accuracy of int16 ({acc} %) at {int16['BOPs/int8'] / bops:.1f}x fewer "
            f"BOPs and {mixed['weights KiB']} KiB of weights (int16: {int16['weights KiB']})"
        )
    if acc > int8["accuracy %"] and bops <= 1.2:
        found.append(f"more accurate than int8 at {bops:.2f}x its BOPs")
    if acc > w4["accuracy %"] and bops < 1:
        found.append(f"{acc - w4['accuracy %']:.1f} points above w4a8 at {bops:.2f}x int8's BOPs")
    cheapest = cheapest_uniform_at(rows, acc)
    if not found and cheapest is not None and bops < cheapest["BOPs/int8"]:
        found.append(
            f"{acc} % (its target, the float model's) at {cheapest['BOPs/int8'] / bops:.1f}x "
            f"fewer BOPs than the cheapest uniform plan that reaches it ({cheapest['precision']})"
        )
    if not found:
        return "mixed: no better than a uniform plan on this run (give the search more time)."
    return "mixed: " + "; ".join(found) + "."


def run_demo(out: str | Path | None = None, epochs: int = 20, latency: bool = True) -> DemoTable:
    """Train (or load) the digits CNN, compare the precisions, return (and save) the table.

    With ``out``: demo.csv, demo.txt and mixed_plan.yaml in that folder.
    """
    start = time.monotonic()
    model, data = train_digits_cnn(epochs=epochs, progress=True)
    configs: dict[str, Config | Plan] = dict(demo_configs())
    with quiet_dependencies():  # torch's pytree deprecation, once per copied graph module
        mixed = search_mixed(model, data)
    configs["mixed"] = mixed
    rows, exports = [], []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp) if latency else None
        steps = progress_bar(configs.items(), "quantizing and exporting", total=len(configs))
        for label, config in steps:
            row, exported = evaluate_precision(model, data, config, onnx_dir)
            rows.append({"precision": label, **row})
            exports.append(exported)
        if latency:
            _add_latency(rows, exports, data.x_test[:64].numpy())
    int8_bops = rows[3]["BOPs/int8"]
    for row in rows:
        row["BOPs/int8"] = round(row["BOPs/int8"] / int8_bops, 2)
    notes = [
        f"mixed = the plan mixq.search found in a few seconds: {_mix_summary(mixed)}.",
        NAMING,
        f"ORT ms: ONNX Runtime CPU, 1 thread, batch 64, median of {LATENCY_ROUNDS} runs; vs fp32:\n"
        "speed-up over fp32 runs interleaved with it (ORT's CPU runs int16 in float).",
        _verdict(rows),
        "Next: mixq analyze <module:factory> shows which ops need more bits; mixq search\n"
        "<module:factory> --candidates int8,int8/int4,int16 finds your model's mix.",
        f"demo wall time {time.monotonic() - start:.0f} s",
    ]
    title = f"digits CNN, {len(data.x_test)} test images"
    table = DemoTable(rows, title=title, notes=notes)
    if out is not None:
        _save(table, mixed, Path(out))
    return table


def _mix_summary(plan: Plan) -> str:
    counts: dict[str, int] = {}
    for op in plan:
        if op.weight:
            w = sorted(set(op.weight.values()))[0]
            name = f"a{_bits(op.output[0])}w{_bits(w)}" if op.output else w
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} on {c} ops" for n, c in sorted(counts.items()))


def _bits(precision: str) -> str:
    return "".join(ch for ch in precision if ch.isdigit()) or precision


def _save(table: DemoTable, mixed: Plan, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table.save(out / "demo.csv")
    table.save(out / "demo.txt")
    mixed.save(out / "mixed_plan.yaml")
