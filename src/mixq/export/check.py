"""The export check: does ONNX Runtime reproduce the Sim on the written file, output by output?

`check_outputs` compares every float output of the Sim with ONNX Runtime's and fails (an
`ExportCheckError`) when the counts differ, when ORT gives NaN / Inf where the Sim's value is
finite, a constant where the Sim's varies (an all-zero output, say), or an SQNR under the
threshold (`DEFAULT_MIN_SQNR_DB` unless ``ExportOptions.min_sqnr_db`` says otherwise). The
Sim's own NaN / Inf positions are left out of the SQNR.

Only on failure, `locate_divergence` runs the file again with the values the Sim also knows
exposed as extra outputs (each quantizer's ``DequantizeLinear`` / rounding ``Cast``, and for
an ONNX Sim every tensor that keeps its name) and names the first, in the file's topological
order, where ORT and the Sim part. It is slow and exposing values stops ORT fusing the nodes
around them, so it locates a difference; it does not measure one.

An SQNR under the threshold is not yet a defect. ORT's float kernels (a fused LayerNorm, an
integer matmul scaled once) round differently from torch's in the last bits; where that moves
a value across a rounding boundary of the next quantizer, one code differs by one step, and
in a deep model attention spreads it to every token of the row and the next layers multiply
it (the real 6-layer MiniLM embedder: bit-identical through layer 0, 27.7 dB at the output,
before the Sim computed int8 linears as ORT's integer kernel does:
`mixq.sim.torch.integer_linear`).
So `local_divergence` runs the Sim once more with ORT's value forced at every quantizer
(and, for an ONNX Sim, at every tensor the file keeps by name) and compares, value by value,
ORT's with the Sim's computed from the same inputs. A defect (a missing quantizer, a
saturating kernel, a bias off its grid) shows there as it does end to end; compounding
rounding does not. The export passes when every quantizer and output agrees locally, and its
report says so.

Example:
    >>> import torch
    >>> want = torch.arange(4.0)
    >>> check_outputs(["y"], [want], [want.clone()], 35.0).sqnr_db
    [inf]
    >>> compare_values(want, torch.zeros(4), 35.0)
    (0.0, "constant (0) where the Sim's varies")
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from mixq.analysis.metrics import sqnr
from mixq.core.errors import MixqError
from mixq.export.io_types import ort_session
from mixq.sim.torch.runner import make_runner

__all__ = [
    "DEFAULT_MIN_SQNR_DB",
    "Checked",
    "ExportCheckError",
    "check_outputs",
    "compare_values",
    "local_divergence",
    "locate_divergence",
]

DEFAULT_MIN_SQNR_DB = 35.0
_WHAT_TO_DO = (
    "The file was removed. Export with check=False to write it anyway and inspect it, or "
    "report this with the model"
)


class ExportCheckError(MixqError):
    """ONNX Runtime does not reproduce the Sim on the exported file (the file is removed)."""


@dataclass
class Checked:
    """What a passing check measured: SQNR(Sim vs ORT) per float output, notes, and where
    the outputs passed on the local comparison, its lowest SQNR (else None)."""

    sqnr_db: list[float]
    notes: list[str] = field(default_factory=list)
    local_sqnr_db: float | None = None


def compare_values(
    want: torch.Tensor, got: torch.Tensor, min_db: float | None
) -> tuple[float, str | None]:
    """SQNR(Sim vs ORT) in dB over the Sim's finite values, and what is wrong (None: nothing).

    Example:
        >>> compare_values(torch.ones(2), torch.tensor([1.0, float("nan")]), 35.0)
        (nan, "1 of 2 values are NaN / Inf where the Sim's are finite")
    """
    w, g = want.detach().double(), got.detach().double()
    if w.shape != g.shape:
        return math.nan, f"shape {tuple(g.shape)} where the Sim's is {tuple(w.shape)}"
    finite = torch.isfinite(w)
    if w.numel() and not bool(finite.any()):
        return math.nan, "the Sim's values are all NaN / Inf, so nothing can be compared"
    broken = int((finite & ~torch.isfinite(g)).sum())
    if broken:
        return math.nan, f"{broken} of {g.numel()} values are NaN / Inf where the Sim's are finite"
    w, g = w[finite], g[finite]
    db = sqnr(w, g)
    if g.numel() > 1 and _varies(w) and bool(g.max() == g.min()):
        return db, f"constant ({float(g[0]) + 0.0:g}) where the Sim's varies"  # no -0
    if min_db is not None and db < min_db:
        return db, f"SQNR {db:.1f} dB, under the {min_db:g} dB threshold"
    return db, None


def _varies(values: torch.Tensor) -> bool:
    if values.numel() < 2:
        return False
    spread = float(values.max() - values.min())
    return spread > 1e-6 * float(values.abs().max())


def check_outputs(
    names: Sequence[str],
    want: Sequence[torch.Tensor],
    got: Sequence[torch.Tensor],
    min_db: float | None,
    locate: Callable[[], str] | None = None,
    localize: Callable[[], tuple[float, str | None]] | None = None,
) -> Checked:
    """SQNR(Sim vs ORT) per float output; raise `ExportCheckError` naming every bad one.

    Args:
        names: the file's float output names (for the message).
        want / got: the Sim's and ORT's float outputs, in order.
        min_db: the SQNR under which an output fails (None: no threshold).
        locate: called on failure only; a sentence saying where ORT and the Sim part.
        localize: called when outputs fail on SQNR alone; `local_divergence` bound to the
            file: (the lowest local SQNR, what parts locally or None). With None the
            outputs pass, the note saying why.
    """
    if len(want) != len(got):
        raise ExportCheckError(
            f"the Sim gives {len(want)} float outputs where the exported file gives "
            f"{len(got)} ({list(names)[:8]}), so the file does not compute what the Sim "
            f"does. {_WHAT_TO_DO}"
        )
    results = [compare_values(w, g, min_db) for w, g in zip(want, got, strict=True)]
    failed = [f"output {n!r}: {p}" for n, (_, p) in zip(names, results, strict=True) if p]
    sqnrs = [db for db, _ in results]
    if not failed:
        return Checked(sqnrs)
    where = ""
    if localize is not None and all(p is None or p.startswith("SQNR") for _, p in results):
        try:
            local_db, problem = localize()
        except Exception as exc:  # never mask the check's own failure
            local_db, problem = math.nan, f"(the local comparison failed: {exc}) "
        if problem is None:
            return Checked(sqnrs, [_compounding_note(min(sqnrs), local_db, min_db)], local_db)
        where = problem
    where = where or (_safely(locate) if locate is not None else "")
    raise ExportCheckError(
        "ONNX Runtime does not reproduce the Sim on the exported file: "
        f"{'; '.join(failed)}. {where}{_WHAT_TO_DO}"
    )


def _compounding_note(end_db: float, local_db: float, min_db: float | None) -> str:
    return (
        f"SQNR(Sim vs ONNX Runtime) {end_db:.1f} dB at the outputs, under the {min_db:g} dB "
        f"threshold, but every quantizer and output agrees with the Sim computed from ORT's "
        f"own inputs (>= {local_db:.1f} dB): the file computes what the Sim does, and "
        "one-step rounding differences of ORT's float kernels compound over the model's "
        "depth"
    )


def _safely(locate: Callable[[], str]) -> str:
    """The locating sentence; its own failure must not hide the check's."""
    try:
        return locate()
    except Exception as exc:  # a second session, a Sim run: report, never mask the check
        return f"(Locating the first differing value failed: {type(exc).__name__}: {exc}) "


def locate_divergence(
    path: Path,
    feeds: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    sim: Any,
    batch: Any,
    min_db: float | None,
) -> str:
    """A sentence naming the first value, in the file's topological order, where ORT (fed
    ``feeds``) and the Sim (run on ``batch``) part; the failure path of the check.

    Example:
        >>> # locate_divergence(Path("m.onnx"), [x.numpy()], sim, (x,), 35.0)
        >>> # "The first value where they part is quantizer 'relu' (...): SQNR 3.1 dB. "
    """
    model = onnx.load(str(path), load_external_data=False)
    values = _known_values(model, sim, batch)
    if not values:
        return "No value of the file is known to the Sim, so none can be compared. "
    run = ort_session(path, extra=list(values))
    exposed = run(feeds)[len(run.names) :]
    for (want, label), value in zip(values.values(), exposed, strict=True):
        _, problem = compare_values(want, torch.from_numpy(np.asarray(value)), min_db)
        if problem is not None and not problem.startswith("shape"):
            return f"The first value where they part is {label}: {problem}. "
    last = list(values.values())[-1][1]
    return (
        f"None of the {len(values)} values the Sim also knows parts from it when exposed "
        f"(the last is {last}): the difference comes after it, or from a kernel ORT fuses "
        "only when those values are not outputs (an integer QLinear* op, say). "
    )


def local_divergence(
    path: Path,
    feeds: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    sim: Any,
    batch: Any,
    min_db: float | None,
) -> tuple[float, str | None]:
    """ORT's value at every quantizer and output vs the Sim's computed from ORT's values
    upstream (forced into a Sim run): (the lowest SQNR, a sentence naming the first value
    that parts, or None). An ONNX Sim's run forces every tensor the file keeps by name
    too, so each op is compared from ORT's own inputs.

    Example:
        >>> # local_divergence(Path("m.onnx"), [x.numpy()], sim, (x,), 35.0)
        >>> # (52.3, None)
    """
    runner = make_runner(sim)
    if not hasattr(runner, "run_forced"):
        return math.nan, "(an ONNX Sim cannot be run with ORT's values forced into it) "
    model = onnx.load(str(path), load_external_data=False)
    points = _known_points(model, sim, runner, runner.run(batch))
    run = ort_session(path, extra=list(points))
    values = run(feeds)
    ort = {
        node: torch.from_numpy(np.asarray(v))
        for (node, _), v in zip(points.values(), values[len(run.names) :], strict=True)
    }
    env, own = runner.run_forced(batch, ort)
    worst = math.inf
    for node, label in points.values():
        db, problem = compare_values(own[node], ort[node], min_db)
        if problem is not None and not problem.startswith("shape"):
            return db, (
                f"The first value where they part is {label}, computed by the Sim from "
                f"ORT's own inputs: {problem}. "
            )
        worst = min(worst, db) if problem is None else worst
    outs = [(n, np.asarray(v)) for n, v in zip(run.names, values, strict=False)]
    floats = [(n, torch.from_numpy(v)) for n, v in outs if v.dtype.kind == "f"]
    for (name, have), want in zip(floats, runner.outputs(env), strict=True):
        db, problem = compare_values(want, have, min_db)
        if problem is not None:
            return db, (
                f"Every quantizer agrees; output {name!r}, computed by the Sim from ORT's "
                f"last quantized values, parts: {problem}. "
            )
        worst = min(worst, db)
    return worst, None


def _known_values(model: onnx.ModelProto, sim: Any, batch: Any) -> dict[str, tuple[Any, str]]:
    """File value name -> (the Sim's value, a label), in the file's topological order."""
    runner = make_runner(sim)
    run = runner.run(batch)
    return {
        name: (run[node], label)
        for name, (node, label) in _known_points(model, sim, runner, run).items()
    }


def _known_points(
    model: onnx.ModelProto, sim: Any, runner: Any, run: Any
) -> dict[str, tuple[Any, str]]:
    """File value name -> (the runner's node holding it, a label), in topological order."""
    by_quantizer = _quantizer_points(sim, runner, run)
    nodes = _quantizer_nodes(model)
    raw = _raw_points(sim, runner, run)
    out: dict[str, tuple[Any, str]] = {}
    for node in model.graph.node:
        qname = nodes.get(node.name)
        if qname in by_quantizer:
            op = sim.named_quantizers()[qname].point.op
            after = f", after op {op!r}" if op else ""
            label = f"quantizer {qname!r} (node {node.name!r}{after})"
            out[node.output[0]] = (by_quantizer[qname], label)
            continue
        for name in node.output:
            if name in raw and name not in out:
                out[name] = (raw[name], f"op {node.name!r} (output {name!r})")
    return out


def _quantizer_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """DequantizeLinear / rounding Cast node name -> its quantizer (the file's metadata); a
    quantizer whose DequantizeLinear an integer kernel absorbed is read at its
    QuantizeLinear (`mixq.export.io_types.ort_session` exposes that value dequantized)."""
    meta = next((p.value for p in model.metadata_props if p.key == "mixq.quantizers"), "{}")
    out = {}
    for qname, nodes in json.loads(meta).items():
        last = [n for n in nodes.values() if "/DequantizeLinear" in n or n.endswith("/Cast_1")]
        last = last or [n for n in nodes.values() if n.endswith("/QuantizeLinear")]
        out.update(dict.fromkeys(last, qname))
    return out


def _quantizer_points(sim: Any, runner: Any, run: Any) -> dict[str, Any]:
    """Enabled activation quantizer -> the runner's node of its value in ``run``. Weights
    are left out (the file folds batch-norms into them, so they differ from the Sim's on
    purpose), and so are quantizers passing attention masks (their DequantizeLinear is not
    their last node)."""
    fx_nodes = getattr(sim, "quantizer_nodes", None)  # torch Sims; ONNX ones name values
    out = {}
    for name, q in sim.named_quantizers().items():
        if not q.enabled or q.point.kind == "weight" or getattr(q, "mask_passthrough", False):
            continue
        key = fx_nodes.get(name) if fx_nodes is not None else q.output_name
        node = runner.by_name.get(key)
        if node is not None and node in run:
            out[name] = node
    return out


def _raw_points(sim: Any, runner: Any, run: Any) -> dict[str, Any]:
    """An ONNX Sim's tensors -> their runner nodes, by name (the file keeps them); none for
    a torch Sim, whose exported values take the ONNX exporter's names."""
    if hasattr(sim, "quantizer_nodes"):
        return {}
    tensors = sim.graph.tensors
    return {
        t: runner.by_name[t]
        for t in tensors
        if tensors[t].is_float and t in runner.by_name and runner.by_name[t] in run
    }
