"""What the torch and ONNX Sims share: quantizers by name, switched on and off, calibration,
fixed ranges, encodings, profiles, the resolution report and the convenience methods that
hand the Sim to the layers above it.

A backend brings its quantizers (``self._quantizers``, built in its ``__init__`` between
`SimBase.init_plan` and `SimBase.finish_init`) and one calibration hook,
``_calibration_step(quantizers)``: how one batch runs with the observers watching.

The one upward seam of mixq's layers (``tests/test_layers.py`` allows exactly it): `report`,
`export_onnx`, `export`, `dump_profile` and `load_profile` import the analysis and export
layers inside the method, so a user can call them on the Sim while the sim layer itself stays
below analysis / export.

Example:
    >>> # with sim.disabled(): ...            # the float model
    >>> # with sim.only(["fc.weight"]): ...   # one quantizer on, the rest off
"""

from __future__ import annotations

import copy
import difflib
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from mixq.core.errors import CalibrationError, ConfigError
from mixq.core.progress import progress_bar
from mixq.core.table import Table
from mixq.graph.ir import Graph
from mixq.plan.encodings import Encodings
from mixq.plan.plan import Plan
from mixq.plan.points import QuantPoint, quantization_points
from mixq.rules.resolve import Resolution
from mixq.sim.quantizer import ActivationBase

if TYPE_CHECKING:
    from mixq.sim.protocol import SimLike

__all__ = ["SimBase"]

S = TypeVar("S", bound="SimBase")


class SimBase:
    """Mixed into a Sim that keeps its quantizers in ``self._quantizers`` (name -> quantizer,
    each with ``enabled``, ``point`` and, for activations, ``set_range``)."""

    _quantizers: dict[str, Any]
    graph: Graph
    plan: Plan

    def init_plan(self, graph: Graph, resolution: Resolution | Plan) -> None:
        """The state every Sim starts from: its graph, plan, resolution and points."""
        if isinstance(resolution, Plan):
            resolution = Resolution(resolution)
        # the Sim binds itself into its plan for `Plan.cost`; a copy of the caller's plan
        # keeps that binding here (a caller holding many plans, as a search does, would
        # otherwise keep every Sim built from them alive: 180 MB each for a MiniLM)
        resolution = replace(resolution, plan=copy.copy(resolution.plan))
        self.graph = graph
        self.resolution = resolution
        self.plan = resolution.plan
        self.points: list[QuantPoint] = quantization_points(graph, self.plan)
        self.calibration_notes: list[str] = []

    def finish_init(self) -> None:
        """Once the quantizers are in: apply the plan's fixed ranges, bind op stats."""
        self._fix_ranges()
        self.plan.bind_stats(self.graph, self.op_stats)

    def _activations(self) -> list[ActivationBase]:
        return [q for q in self._quantizers.values() if isinstance(q, ActivationBase)]

    def _fix_ranges(self) -> None:
        acts = self._activations()
        targets = {q.point.target for q in acts}
        for tensor, (lo, hi) in self.plan.fixed_ranges.items():
            if tensor not in targets:
                close = difflib.get_close_matches(tensor, sorted(targets), n=3)
                raise ConfigError(
                    f"fixed range on {tensor!r}, which has no quantizer in this "
                    f"plan; close tensor names: {close}"
                )
            static = [q for q in acts if q.point.target == tensor and not q.qtype.dynamic]
            if not static:
                raise ConfigError(
                    f"fixed range on {tensor!r}, whose quantizers in this plan are all dynamic "
                    "(their scale is chosen on every call); drop the fixed range or give its "
                    "readers a static precision (uint8)"
                )
            for q in static:
                q.set_range(lo, hi)

    def named_quantizers(self) -> Mapping[str, Any]:
        """Name -> quantizer object (activation, conversion and weight), in graph order: a
        read-only view, so the analyses' per-op lookups copy nothing."""
        return MappingProxyType(self._quantizers)

    @property
    def quantizers(self) -> list[str]:
        """Names of every quantization point, in graph order (activations, then weights)."""
        return list(self._quantizers)

    def quantizer(self, name: str) -> Any:
        self._check_names([name])
        return self._quantizers[name]

    def _check_names(self, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self._quantizers]
        if unknown:
            raise KeyError(
                f"no quantizer named {unknown[:3]}; sim.quantizers lists the "
                f"{len(self._quantizers)} names"
            )

    def set_enabled(self, names: Iterable[str] | None, enabled: bool) -> None:
        """Switch the named quantizers (all when ``names`` is None) on or off."""
        names = list(self._quantizers) if names is None else list(names)
        self._check_names(names)
        for n in names:
            self._quantizers[n].enabled = enabled

    @contextmanager
    def disabled(self, names: Iterable[str] | None = None) -> Iterator[Any]:
        """Switch quantizers off inside the block (all of them when ``names`` is None)."""
        before = {n: q.enabled for n, q in self._quantizers.items()}
        try:
            self.set_enabled(names, False)
            yield self
        finally:
            for n, q in self._quantizers.items():
                q.enabled = before[n]

    @contextmanager
    def only(self, names: Iterable[str]) -> Iterator[Any]:
        """Only the named quantizers on inside the block (the analyses' isolated view)."""
        names = list(names)
        self._check_names(names)
        with self.disabled():
            self.set_enabled(names, True)
            yield self

    def set_range(self, name: str, lo: float, hi: float) -> None:
        """Fix the range of an activation quantizer; calibration leaves it alone."""
        q = self.quantizer(name)
        if q.point.kind != "activation":
            raise ValueError(f"{name!r} is a weight quantizer; its range comes from the weight")
        q.set_range(lo, hi)

    def calibrate(
        self: S,
        batches: Iterable[Any],
        observer: str | dict[str, str] | None = None,
        progress: bool = True,
        histogram_bins: int = 0,
    ) -> S:
        """Run ``batches`` with activation quantizers off and set every activation range.

        Args:
            batches: an iterable of input tuples, tensors / arrays or keyword dicts.
            observer: one observer name for all activation quantizers, or a dict
                quantizer name -> observer name (others use the plan's default).
            progress: show a progress bar.
            histogram_bins: also keep a histogram of every activation (for `dump_profile`).

        Raises:
            CalibrationError: no batches, or a tensor holds NaN / Inf (named).

        Example: ``sim.calibrate(batches, observer={"fc1": "percentile"})``.
        """
        acts = self._start_observing(observer, histogram_bins)
        try:
            count = self._feed(batches, acts, progress)
            if count == 0:
                raise CalibrationError(
                    "calibration data is empty: pass an iterable with at least one batch of "
                    "model inputs"
                )
        except BaseException:
            for q in acts:
                q.cancel_observing()
            raise
        self.calibration_notes = [n for n in (q.stop_observing() for q in acts) if n]
        for note in self.calibration_notes:
            warnings.warn(note, stacklevel=2)
        return self

    def _start_observing(
        self, observer: str | dict[str, str] | None, histogram_bins: int
    ) -> list[ActivationBase]:
        per_name = observer if isinstance(observer, dict) else {}
        self._check_names(per_name)
        default = observer if isinstance(observer, str) else self.plan.scheme.observer
        acts = self._activations()
        for q in acts:
            q.start_observing(per_name.get(q.name, default), histogram_bins)
        return acts

    def _feed(self, batches: Iterable[Any], acts: list[ActivationBase], progress: bool) -> int:
        step = self._calibration_step(acts)
        count = 0
        for batch in progress_bar(batches, "calibrating", disable=not progress):
            step(batch)
            count += 1
        return count

    def _calibration_step(self, acts: list[ActivationBase]) -> Callable[[Any], None]:
        """How one batch runs with ``acts`` observing (each backend brings its own)."""
        raise NotImplementedError

    def encodings(self) -> Encodings:
        """Scale / zero point (or float type) per quantization point."""
        return Encodings({n: q.encoding() for n, q in self._quantizers.items()})

    def quantizer_table(self) -> Table:
        """One row per quantizer: name, kind, precision, op, axis and whether it is on."""
        rows = [
            {"name": p.name, "kind": p.kind, "precision": p.precision, "op": p.op,
             "axis": p.axis, "enabled": self._quantizers[p.name].enabled}
            for p in self.points
        ]  # fmt: skip
        return Table(rows, title="quantizers")

    def op_stats(self) -> dict[str, Any]:
        """MACs, output elements and weight sizes of every op on the example inputs (one
        float run, measured once; see `mixq.plan.cost`)."""
        cached = getattr(self, "_op_stats", None)
        if cached is not None:
            return cached
        from mixq.plan.cost import op_stats
        from mixq.sim.torch.runner import make_runner

        sim: Any = self
        runner = make_runner(sim)
        args, kwargs = sim.example_inputs
        run = runner.run(kwargs if kwargs and not args else args, enabled=())
        shapes = {
            t: tuple(runner.value(run, t).shape)
            for t, tensor in sim.graph.tensors.items()
            if tensor.quantizable and t in sim.value_nodes
        }
        self._op_stats = op_stats(sim.graph, shapes, sim.weight_shapes())
        return self._op_stats

    def dump_profile(self, path: str | Path) -> Path:
        """Write the qaic / Glow profile (min, max, histogram per activation tensor);
        calibrate with ``histogram_bins`` (e.g. 512) to fill the histograms."""
        from mixq.export.formats.qaic import write_profile

        sim: Any = self
        histograms = {
            n: q.histogram
            for n, q in self._quantizers.items()
            if q.point.kind == "activation" and q.histogram is not None
        }
        return write_profile(path, sim.encodings(), histograms, sim.graph)

    def load_profile(self, path: str | Path) -> Any:
        """Set activation ranges from a profile instead of calibrating again."""
        from mixq.export.formats.qaic import read_profile

        sim: Any = self
        profile = read_profile(path, sim.graph)
        needed = [
            q
            for q in self._quantizers.values()
            if q.point.kind == "activation" and q.qtype.calibrated
        ]
        missing = [q.name for q in needed if q.name not in profile]
        if missing:
            raise CalibrationError(
                f"profile {path} has no entry for {missing[:5]} "
                f"({len(missing)} in all): was it made for this plan?"
            )
        for q in needed:
            lo, hi, _ = profile[q.name]
            q.load_range(lo, hi)
        return self

    def resolution_report(self, path: str | Path | None = None) -> str:
        """How each op's precision was decided: requests as given, expanded to ops, final
        plan, conversions, adjustments. Written to ``path`` too (``.json`` gives JSON)."""
        from mixq.rules.report import report_dict, report_text

        sim: Any = self
        text = report_text(sim.graph, sim.resolution, sim.points)
        if sim.calibration_notes:
            text += "\nCalibration:\n" + "\n".join(f"  {n}" for n in sim.calibration_notes)
        records = getattr(sim, "transform_records", None) or []  # see mixq.transforms
        if records:
            lines = [line for r in records for line in r.report_lines()]
            text += "\nTransforms:\n" + "\n".join(lines)
        if path is not None:
            path = Path(path)
            if path.suffix == ".json":
                data = report_dict(sim.graph, sim.resolution, sim.points)
                data["calibration"] = list(sim.calibration_notes)
                data["transforms"] = [
                    {**r.spec(), "layers": r.layers, "notes": r.notes} for r in records
                ]
                path.write_text(json.dumps(data, indent=2, default=str))
            else:
                path.write_text(text)
        return text

    def export(self, path: str | Path, format: str) -> Path:
        """Write a vendor file: aimet-0.6.1, aimet-1.0.0, qaic-npi, qaic-profile,
        ascend-keep-dtype, ascend-mixlist, ascend-customize-dtypes, ort-overrides.

        Example: ``sim.export("model.encodings", format="aimet-1.0.0")``.
        """
        from mixq.export.formats import write_format

        return write_format(path, format, self.plan, self.encodings(), self.graph)

    def report(
        self,
        path: str | Path,
        data: Iterable[Any] | None = None,
        metric: str = "cosine",
        progress: bool = True,
    ) -> Path:
        """An HTML report: with ``data``, bad cases, both comparison views, sensitivity and
        advice (see `mixq.QuantAnalysis.run_all`); without, the plan and ranges only."""
        from mixq.analysis.quant_analysis import QuantAnalysis
        from mixq.analysis.report import write_report

        qa = QuantAnalysis(cast("SimLike", self))
        if data is not None:
            qa.run_all(data, metric=metric, progress=progress)
        return write_report(path, qa)

    def export_onnx(
        self,
        path: str | Path,
        check: bool = True,
        u8_weights: bool | None = None,
        float_islands: bool = True,
        keep_io_types: bool = True,
        min_sqnr_db: float | None = 35.0,
    ) -> Any:
        """Write an ONNX Q/DQ model (opset 21) and check it against this Sim in ONNX Runtime.

        Returns an `ExportReport` (SQNR of Sim vs ORT per output, 16-bit parts ORT only
        simulates). ``float_islands=False`` keeps fp32 compute with rounding Cast pairs;
        ``keep_io_types=False`` gives fp16 / bf16 model inputs and outputs their precision;
        below ``min_sqnr_db`` (None: no threshold) the check fails and names where Sim and
        file part (see `mixq.export.export_onnx`).
        Example: ``sim.export_onnx("model.onnx").min_sqnr_db``.
        """
        from mixq.export import export_onnx

        return export_onnx(
            cast("SimLike", self),
            path,
            check=check,
            u8_weights=u8_weights,
            float_islands=float_islands,
            keep_io_types=keep_io_types,
            min_sqnr_db=min_sqnr_db,
        )
