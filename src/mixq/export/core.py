"""What both ONNX exporters share: the options, the report, the atomic save and the tail.

`mixq.export.qdq_torch` and `mixq.export.qdq_onnx` each turn their kind of Sim into an
``onnx.ModelProto`` and a comparison function (SQNR of Sim vs ONNX Runtime per output);
`finish_export` then checks the model, writes it, lists the 16-bit parts ORT only simulates
and, with ``options.check``, runs the comparison (`mixq.export.check`: an output ORT does not
reproduce, or a node ORT cannot run, is named, and the file removed).

Example:
    >>> options = ExportOptions(u8_weights=False)
    >>> options.check, options.resolved_u8_weights()
    (True, False)
    >>> ExportReport(Path("m.onnx"), sqnr_db=[41.5, 38.0]).min_sqnr_db
    38.0
    >>> ExportReport(Path("m.onnx"), sqnr_db=[41.5, float("nan")]).min_sqnr_db
    nan
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from mixq.core.errors import MixqError
from mixq.export.check import DEFAULT_MIN_SQNR_DB, Checked, ExportCheckError
from mixq.export.onnx_edit import exclude_pool_overhang, share_equal_constants
from mixq.export.onnx_scale_fold import fold_scales_into_linears
from mixq.export.ort_accuracy import lossy_fusion_note
from mixq.export.ort_gather import gather_quantized_rows
from mixq.export.ort_kernels import (
    fold_castlike_constants,
    fuse_integer_linears,
    unfuse_residual_norms,
)
from mixq.export.ort_nbits import fuse_nbits_linears
from mixq.export.weight_storage import store_integer_weights
from mixq.sim.protocol import SimLike
from mixq.targets.kernels import TO_FLOAT
from mixq.targets.loading import load_target

__all__ = [
    "OPSET",
    "U8_WEIGHTS_NOTE",
    "ExportOptions",
    "ExportReport",
    "finish_export",
    "has_vnni",
    "lost_quantizers",
    "save_model",
]

OPSET = 21
U8_WEIGHTS_NOTE = (
    "int8 weights stored as uint8 (zero point + 128, same grid) for ORT's CPU kernels without VNNI"
)


def has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (then ORT's u8 x s8 kernels do not saturate).

    Example:
        >>> isinstance(has_vnni(), bool)
        True
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8")) or "avx2" not in flags


@dataclass(frozen=True)
class ExportOptions:
    """The options of `mixq.export.export_onnx` (see there), as one value.

    ``min_sqnr_db`` is the check's threshold: an output whose SQNR(Sim vs ONNX Runtime) is
    lower fails the export (None: only NaN / Inf, constant outputs and count mismatches fail).

    Example:
        >>> ExportOptions(float_islands=False).keep_io_types
        True
        >>> ExportOptions().min_sqnr_db
        35.0
    """

    check: bool = True
    u8_weights: bool | None = None
    float_islands: bool = True
    keep_io_types: bool = True
    min_sqnr_db: float | None = DEFAULT_MIN_SQNR_DB

    def resolved_u8_weights(self) -> bool:
        """``u8_weights``, decided from this machine's CPU when it is None."""
        return not has_vnni() if self.u8_weights is None else self.u8_weights


@dataclass
class ExportReport:
    """What the export wrote and how closely ONNX Runtime reproduces the Sim.

    ``local_sqnr_db`` is set where the outputs missed the threshold but every quantizer
    agreed with the Sim computed from ORT's own inputs: that comparison's lowest SQNR (the
    notes say so in words).

    Example:
        >>> print(ExportReport(Path("m.onnx"), sqnr_db=[40.0]).to_text())
        exported m.onnx (opset 21), 0 quantizers
        SQNR(Sim vs ONNX Runtime) per output, dB: 40.0
        >>> print(ExportReport(Path("m.onnx")).to_text().splitlines()[1])
        SQNR(Sim vs ONNX Runtime): not checked (check=False)
    """

    path: Path
    quantizers: dict[str, dict[str, str]] = field(default_factory=dict)
    sqnr_db: list[float] = field(default_factory=list)
    simulated_16bit: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: bool = False
    local_sqnr_db: float | None = None

    @property
    def min_sqnr_db(self) -> float:
        """The lowest SQNR; NaN when unchecked or when any output's is NaN (never hidden)."""
        if not self.sqnr_db or any(math.isnan(v) for v in self.sqnr_db):
            return float("nan")
        return min(self.sqnr_db)

    def to_text(self) -> str:
        values = ", ".join(_db(v) for v in self.sqnr_db)
        if self.sqnr_db:
            sqnr = f"SQNR(Sim vs ONNX Runtime) per output, dB: {values}"
        else:
            why = "no float outputs to compare" if self.checked else "not checked (check=False)"
            sqnr = f"SQNR(Sim vs ONNX Runtime): {why}"
        lines = [f"exported {self.path} (opset {OPSET}), {len(self.quantizers)} quantizers", sqnr]
        if self.simulated_16bit:
            lines.append(
                f"{len(self.simulated_16bit)} 16-bit quantizers: ONNX Runtime's CPU "
                "kernels do not fuse 16-bit Q/DQ, so those parts run as DQ -> float "
                "op -> Q (simulated): " + ", ".join(self.simulated_16bit[:8])
            )
        lines += self.notes
        return "\n".join(lines)


def _db(value: float) -> str:
    return "NaN (not comparable)" if math.isnan(value) else f"{value:.1f}"


def lost_quantizers(lost: list[str]) -> MixqError:
    """The error for enabled quantizers an export dropped (a bug: ask for the model).

    Example:
        >>> str(lost_quantizers(["fc"]))[:38]
        "the ONNX export lost quantizers ['fc']"
    """
    return MixqError(
        f"the ONNX export lost quantizers {lost[:5]} ({len(lost)} in all); "
        "please report this with the model"
    )


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write through a temporary file, so a failed write leaves nothing at ``path``.

    Example:
        >>> # save_model(model, Path("model.onnx"))
    """
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent if path.parent.exists() else None)
    os.fchmod(fd, _open_mode())  # 0644 under the usual umask, like a plain open, not 0600
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _open_mode() -> int:
    """0666 less the process umask: what ``open(path, "w")`` creates a file with."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def _simulated_16bit(sim: SimLike) -> list[str]:
    """Enabled 16-bit integer quantizers: ORT's CPU kernels run those parts in float."""
    return [
        n
        for n, q in sim.named_quantizers().items()
        if q.enabled and q.qtype.bits == 16 and not q.qtype.is_floating_point
    ]


def _not_implemented(exc: Exception, islands: list[str]) -> MixqError:
    """ORT's CPU provider has no kernel for a node (a bf16 op, say): name it."""
    message = str(exc).strip().splitlines()[0]
    found = re.search(r"node with name '([^']*)'", message)
    node = f"node {found.group(1)!r}, so it cannot run " if found else ""
    return MixqError(
        f"ONNX Runtime's CPU provider cannot run {node}this export ({message[:300]}). "
        f"The plan asks for {'; '.join(islands) or 'these precisions'}. Export with "
        "float_islands=False (fp32 compute, outputs rounded as the Sim does), or choose a "
        "precision the provider runs (fp16 instead of bf16)"
    )


_SATURATION_HINT = (
    "This CPU has no VNNI and the file stores int8 weights as int8 (u8_weights=False), "
    "which ORT's u8 x s8 kernels saturate: export with u8_weights=True (the same grid)"
)


def _saturates(options: ExportOptions, sim: SimLike) -> bool:
    """Whether int8 weights stay int8 on a CPU whose u8 x s8 kernels saturate."""
    int8_weights = any(
        q.enabled and q.point.kind == "weight" and q.qtype.name == "int8"
        for q in sim.named_quantizers().values()
    )
    return int8_weights and not options.resolved_u8_weights() and not has_vnni()


def _retarget(model: onnx.ModelProto, report: ExportReport, removed: dict[str, str]) -> None:
    """Point the report and the file's ``mixq.quantizers`` metadata at the fused nodes that
    replaced DequantizeLinear nodes (`mixq.export.ort_kernels.fuse_integer_linears`)."""
    if not removed:
        return
    for roles in report.quantizers.values():
        for role, node in list(roles.items()):
            if node in removed:
                del roles[role]
                roles.setdefault(removed[node].rsplit("/", 1)[-1], removed[node])
    meta = next(p for p in model.metadata_props if p.key == "mixq.quantizers")
    meta.value = json.dumps(report.quantizers)


def _is_not_implemented(exc: Exception) -> bool:
    return "NOT_IMPLEMENTED" in str(exc) or "NotImplemented" in type(exc).__name__


def finish_export(
    model: onnx.ModelProto,
    report: ExportReport,
    sim: SimLike,
    compare: Callable[[Path, float | None], Checked],
    check: bool | ExportOptions,
    islands: list[str],
) -> ExportReport:
    """Check ``model``, write it at ``report.path`` and, with ``check``, compare it in ORT.

    ``compare(path, min_sqnr_db)`` gives SQNR(Sim vs ORT) per output and raises
    `mixq.export.check.ExportCheckError` where ORT does not reproduce the Sim; ``check`` is
    the options (or just their ``check``: the default threshold then). On any failure the
    file is removed; where ORT has no kernel for a node the error names the node and the
    plan's ``islands``.

    Example:
        >>> # finish_export(model, ExportReport(path), sim, compare, options, islands)
    """
    options = check if isinstance(check, ExportOptions) else ExportOptions(check=check)
    exclude_pool_overhang(model.graph)
    fold_castlike_constants(model)
    fold_scales_into_linears(model)
    store_integer_weights(model)
    if load_target(sim.plan.target).kernel("linear") == TO_FLOAT:
        fused = {**fuse_integer_linears(model), **fuse_nbits_linears(model)}
        _retarget(model, report, {**fused, **gather_quantized_rows(model)})
        unfuse_residual_norms(model)
    share_equal_constants(model.graph)
    onnx.checker.check_model(model)
    save_model(model, report.path)
    report.simulated_16bit = _simulated_16bit(sim)
    if options.check:
        try:
            checked = compare(report.path, options.min_sqnr_db)
            report.sqnr_db, report.checked = checked.sqnr_db, True
            report.notes += checked.notes
            report.local_sqnr_db = checked.local_sqnr_db
            lossy = lossy_fusion_note(report.path)
            report.notes += [lossy] if lossy else []
        except Exception as exc:
            report.path.unlink(missing_ok=True)
            if isinstance(exc, ExportCheckError) and _saturates(options, sim):
                raise ExportCheckError(f"{exc}. {_SATURATION_HINT}") from exc
            if not _is_not_implemented(exc):
                raise
            raise _not_implemented(exc, islands) from exc
    return report
