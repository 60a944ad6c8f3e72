"""Quantizers by name, switched on and off: what the torch and ONNX Sims share.

Example:
    >>> # with sim.disabled(): ...            # the float model
    >>> # with sim.only(["fc.weight"]): ...   # one quantizer on, the rest off
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["QuantizerSwitches"]


class QuantizerSwitches:
    """Mixed into a Sim that keeps its quantizers in ``self._quantizers`` (name -> quantizer,
    each with ``enabled``, ``point`` and, for activations, ``set_range``)."""

    _quantizers: dict[str, Any]

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

    def op_stats(self) -> dict[str, Any]:
        """MACs, output elements and weight sizes of every op on the example inputs (one
        float run, measured once; see `mixq.graph.cost`)."""
        cached = getattr(self, "_op_stats", None)
        if cached is not None:
            return cached
        from mixq.analysis.runner import make_runner
        from mixq.graph.cost import op_stats

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
        from mixq.errors import CalibrationError
        from mixq.export.formats.qaic import read_profile

        sim: Any = self
        profile = read_profile(path, sim.graph)
        needed = [
            q
            for q in self._quantizers.values()
            if q.point.kind == "activation" and not q.qtype.is_floating_point
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
        from mixq.graph.report import report_dict, report_text

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

        return write_format(path, format, self.plan, self.encodings(), self.graph)  # type: ignore[attr-defined]
