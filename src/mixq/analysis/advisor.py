"""The advisor: reads the analysis tables and says what to try, one line per finding.

Example:
    >>> # advise(qa).rows[0]
    >>> # {'op': 'encoder.layer.1.output.dense', 'issue': 'range +-38.2 is wide for int8 ...',
    >>> #  'advice': "try int16 on it and on what reads it at int8 (else that requantizes it):
    >>> #   set_precision('encoder.layer.1.output.dense', activation='int16'); ..."}
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

from mixq.analysis.overflow import check_overflow
from mixq.core.qtypes import qtype
from mixq.core.table import Table
from mixq.graph.kinds import is_data_movement
from mixq.observers.base import MASK_MAGNITUDE
from mixq.sim.protocol import SimLike

__all__ = ["OVERWIDE", "WIDE_INT8_RANGE", "advise"]

# |x| beyond which int8's 256 steps are coarse (Horizon's advisor uses the same idea).
WIDE_INT8_RANGE = 10.0
# a calibrated range this many times wider than the data actually seen is suspicious
OVERWIDE = 20.0
_TOP = 0.1  # "sensitive" = in the top 10 % of a sensitivity table


def _is_activation(q: Any) -> TypeGuard[Any]:
    """``q`` is an activation quantizer (not None, not a weight's)."""
    return getattr(getattr(q, "point", None), "kind", None) == "activation"


def _row(op: str, issue: str, advice: str) -> dict[str, str]:
    return {"op": op, "issue": issue, "advice": advice}


def _bad_bound(value: float, float_value: float) -> bool:
    """A NaN / inf bound of a compared output, other than a mask's -inf where the float
    model has a mask sentinel (-inf or finfo.min, which fp16 rounds to -inf)."""
    mask = value < 0 and float_value <= -MASK_MAGNITUDE
    return not math.isfinite(value) and not mask


def _nonfinite(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for r in rows:
        ends = [(side, end) for side in ("float", "quant") for end in ("min", "max")]
        if any(_bad_bound(r[f"{side}_{end}"], r[f"float_{end}"]) for side, end in ends):
            out.append(
                _row(
                    r["op"],
                    "NaN / Inf in the output",
                    "check the float model on this "
                    "input and the quantizer's scale (a zero or infinite range)",
                )
            )
    return out


def _int8_readers(sim: SimLike, op: str) -> list[str]:
    """The ops that read ``op``'s output (through data movement) at an 8-bit input of their
    own: were only ``op`` set to int16, each would requantize the tensor to int8 on its
    input edge (a conversion point), and the wide range would still meet int8 there."""
    graph, plan = sim.graph, sim.plan
    found: list[str] = []
    seen: set[str] = set()
    tensors = list(graph.float_outputs(graph.ops[op]))
    while tensors:
        tensor = tensors.pop(0)
        for reader in graph.consumers(tensor):
            if reader.name in seen or reader.name not in plan.ops:
                continue
            seen.add(reader.name)
            if is_data_movement(reader.kind):
                tensors.extend(graph.float_outputs(reader))
                continue
            reads = zip(graph.float_inputs(reader), plan.ops[reader.name].input, strict=False)
            if any(t == tensor and _is_8bit(p) for t, p in reads):
                found.append(reader.name)
    return found


def _is_8bit(precision: str) -> bool:
    t = qtype(precision)
    return not t.is_floating_point and t.bits == 8


def _wide_int8(sim: SimLike, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for r in rows:
        amax = max(abs(r["float_min"]), abs(r["float_max"]))
        if r["precision"] in ("int8", "uint8") and amax > WIDE_INT8_RANGE:
            step = f", step {r['scale']:.3g}" if r.get("scale") else ""
            ops = [r["op"], *_int8_readers(sim, r["op"])]
            calls = "; ".join(f"set_precision({o!r}, activation='int16')" for o in ops)
            why = " and on what reads it at int8 (else that requantizes it)" if ops[1:] else ""
            out.append(_row(r["op"], f"range +-{amax:.3g} is wide for int8{step}",
                            f"try int16 on it{why}: {calls}"))  # fmt: skip
    return out


def histogram_grid(sim: SimLike, op: str) -> tuple[float, float, float] | None:
    """(lo, hi, step) of the op's output quantizer, for a per-tensor integer one."""
    q = sim.named_quantizers().get(sim.graph.float_outputs(sim.graph.ops[op])[0])
    if not _is_activation(q) or q.scale is None or q.zero_point is None:
        return None
    if q.scale.numel() != 1:
        return None
    s, zp, t = float(q.scale), float(q.zero_point), qtype(q.qtype)
    return (t.qmin - zp) * s, (t.qmax - zp) * s, s


def _overwide(sim: SimLike, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for r in rows:
        grid = histogram_grid(sim, r["op"])
        width = r["float_max"] - r["float_min"]
        if grid is not None and width > 0 and grid[1] - grid[0] > OVERWIDE * width:
            ratio = (grid[1] - grid[0]) / width
            out.append(
                _row(
                    r["op"],
                    f"calibrated range [{grid[0]:.3g}, {grid[1]:.3g}] is "
                    f"{ratio:.0f}x wider than this input's [{r['float_min']:.3g}, "
                    f"{r['float_max']:.3g}]: a rare outlier in the calibration data?",
                    "try a clipping observer (percentile, mse, mix) for it, or int16",
                )
            )
    return out


def _uncovered(sim: SimLike, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for r in rows:
        grid = histogram_grid(sim, r["op"])
        if grid is None:
            continue
        lo, hi, s = grid
        if r["float_max"] > hi + s or r["float_min"] < lo - s:
            out.append(
                _row(
                    r["op"],
                    f"scale covers [{lo:.3g}, {hi:.3g}] but this input gives "
                    f"[{r['float_min']:.3g}, {r['float_max']:.3g}]",
                    "calibration data too small or biased: calibrate on more varied "
                    "samples (include this one), or use a wider observer",
                )
            )
    return out


def _asymmetric_inputs(
    sim: SimLike, inputs: dict[str, tuple[float, float]]
) -> list[dict[str, str]]:
    if not sim.plan.scheme.activation_symmetric:
        return []
    out = []
    for name, (lo, hi) in inputs.items():
        if hi > lo and abs(lo + hi) > 0.5 * (hi - lo):
            out.append(
                _row(
                    name,
                    f"model input lies in [{lo:.3g}, {hi:.3g}], far from "
                    "symmetric about 0, with symmetric activations",
                    "normalise the input symmetrically about 0, or use asymmetric "
                    "activations (scheme activation_symmetric: false)",
                )
            )
    return out


def _integer_outputs(sim: SimLike) -> list[dict[str, str]]:
    out = []
    for tensor in sim.graph.outputs:
        q = sim.named_quantizers().get(tensor)
        if _is_activation(q) and not q.qtype.is_floating_point:
            out.append(
                _row(
                    tensor,
                    f"model output leaves the model as {q.qtype.name}",
                    "float outputs are usual on the last layer: "
                    "set_model_output_precision(['fp32']) (or int16)",
                )
            )
    return out


def _float_overflow(qa: Any) -> list[dict[str, str]]:
    """fp16 / bf16 tensors whose range on the bad case overflows the type, and the first
    NaN the Sim makes on it (`mixq.analysis.overflow`)."""
    if qa.bad is None:
        return []
    overflows, nan = check_overflow(qa.sim, qa.bad.bad_case)
    rows = [_row(o.tensor, o.issue, o.advice) for o in overflows]
    return rows + ([_row(nan.tensor, nan.issue, nan.advice)] if nan is not None else [])


def _both_sensitive(tables: dict[str, Table]) -> list[dict[str, str]]:
    def top(kind: str) -> set[str]:
        rows = [
            r
            for t in tables.values()
            if t.title.startswith("sensitivity")
            for r in t.rows
            if r["kind"] == kind
        ]
        count = max(1, math.ceil(len(rows) * _TOP))
        return {r["op"] for r in rows[:count]}

    both = top("activation") & top("weight")
    return [
        _row(
            op,
            "both its activation and its weight are among the most sensitive",
            "raise both to int16 if the target allows it (int8-int16-npu does not: "
            "then fp16), or raise the activation and check the weight separately",
        )
        for op in sorted(both)
    ]


def advise(qa: Any) -> Table:
    """What to try, from the tables ``qa`` (a `QuantAnalysis`) has made so far."""
    sim = qa.sim
    compare = qa.tables.get("compare_accumulated")
    rows = compare.rows if compare is not None else []
    findings = (
        _nonfinite(rows)
        + _float_overflow(qa)
        + _wide_int8(sim, rows)
        + _overwide(sim, rows)
        + _uncovered(sim, rows)
        + _asymmetric_inputs(sim, qa.input_ranges())
        + _integer_outputs(sim)
        + _both_sensitive(qa.tables)
    )
    table = Table(findings, title="advice", columns=["op", "issue", "advice"])
    qa.tables["advice"] = table
    return table
