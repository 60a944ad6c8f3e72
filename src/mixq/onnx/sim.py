"""The simulated mixed-precision ONNX model: an ONNX Runtime session over Q/DQ and Cast nodes.

Same interface as the torch `mixq.torch.sim.Sim`: switch quantizers by name, calibrate,
fix ranges, read encodings. Switches, scales and zero points are graph inputs fed at each
run (see `mixq.onnx.rewrite`), so none of them rebuilds the session.

The session runs with graph optimisations off (``ORT_DISABLE_ALL``) on the CPU provider:
even the basic level folds and fuses nodes (Conv + BatchNorm, Q/DQ pairs into integer
kernels), which would change the simulated numerics; with them off, every quantizer off
gives exactly what the float model gives under the same options.

Example:
    >>> import numpy as np, torch
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "fc.weight")
    >>> g = helper.make_graph(
    ...     [helper.make_node("Gemm", ["x", "fc.weight"], ["y"], name="fc", transB=1)], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], [w])
    >>> model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    >>> x = torch.randn(8, 4)
    >>> sim = quantize_onnx(model, (x,), "int8").calibrate([(x,)], progress=False)
    >>> sim.quantizers
    ['x', 'y', 'fc.weight']
    >>> with sim.disabled():
    ...     bool(torch.equal(sim(x), x))
    True
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch

from mixq.config import Config
from mixq.encodings import Encodings
from mixq.errors import CalibrationError, ConfigError
from mixq.graph.ir import Graph
from mixq.graph.points import QuantPoint, quantization_points
from mixq.graph.resolve import Resolution, resolve_with_report
from mixq.onnx.capture import capture, elem_type, load_model
from mixq.onnx.quantizer import OnnxActivationQuantizer, OnnxQuantizer, OnnxWeightQuantizer
from mixq.onnx.rewrite import Rewriter, ensure_opset
from mixq.onnx.runner import OnnxRunner
from mixq.onnx.session import as_array, make_session, random_inputs, split_inputs
from mixq.plan import Plan
from mixq.progress import progress_bar
from mixq.switches import QuantizerSwitches
from mixq.table import Table
from mixq.targets import fuses_residual_add

if TYPE_CHECKING:
    from mixq.export.onnx_export import ExportReport

__all__ = ["OnnxSim", "build_sim", "quantize_onnx"]


def _random_or_none(graph: Graph) -> tuple[torch.Tensor, ...]:
    try:
        return random_inputs(graph)
    except ValueError:  # an input type torch does not know: no example inputs
        return ()


class OnnxSim(QuantizerSwitches):
    """A Graph + Plan made executable in ONNX Runtime; every quantizer switchable by name.

    Args:
        model: the captured ModelProto (see `mixq.onnx.capture`).
        graph: its Graph.
        resolution: the Plan (or its Resolution) for ``graph``.
        example_inputs: inputs as for ``sim(*inputs)``, kept for exports (None: random
            inputs of the declared shapes, see `mixq.onnx.session.random_inputs`).
    """

    runner_class = OnnxRunner

    def __init__(
        self,
        model: onnx.ModelProto,
        graph: Graph,
        resolution: Resolution | Plan,
        example_inputs: Any = None,
    ) -> None:
        self.resolution = (
            resolution if isinstance(resolution, Resolution) else Resolution(resolution)
        )
        self.graph, self.plan = graph, self.resolution.plan
        self.points: list[QuantPoint] = quantization_points(graph, self.plan)
        self.source = model
        self.example_inputs = split_inputs(
            _random_or_none(graph) if example_inputs is None else example_inputs
        )
        self.calibration_notes: list[str] = []
        self._quantizers: dict[str, OnnxQuantizer] = {p.name: self._make(p) for p in self.points}
        self.input_names = list(graph.inputs)
        self.model = ensure_opset(load_model(model), list(self._quantizers.values()))
        fuse_add = fuses_residual_add(self.plan.target)
        Rewriter(self.model, graph, self._quantizers, fuse_add).run()
        self._expose_values()
        self.session = make_session(self.model)
        self._fix_ranges()
        self.plan.bind_stats(self.graph, self.op_stats)

    def _make(self, point: QuantPoint) -> OnnxQuantizer:
        if point.kind == "weight":
            return OnnxWeightQuantizer(point)
        return OnnxActivationQuantizer(point, self.plan.scheme.observer)

    def _expose_values(self) -> None:
        """Make every float tensor, raw and as the model sees it, a graph output."""
        q_out = {q.point.target: q.output_name for q in self._quantizers.values()
                 if isinstance(q, OnnxActivationQuantizer) and not q.point.readers}  # fmt: skip
        floats = [t for t in self.graph.tensors.values() if t.is_float]
        self.value_nodes = {t.name: q_out.get(t.name, t.name) for t in floats}
        self.value_dtypes = {v: t.dtype for t in floats for v in (t.name, self.value_nodes[t.name])}
        self.output_names = [o.name for o in self.model.graph.output]
        present = set(self.output_names) | set(self.input_names)
        extra = [v for v in self.value_dtypes if v not in present]
        self.model.graph.output.extend(
            onnx.helper.make_tensor_value_info(v, elem_type(self.value_dtypes[v]), None)
            for v in extra
        )
        self.fetch_names = self.output_names + extra

    def _fix_ranges(self) -> None:
        acts = [q for q in self._quantizers.values() if isinstance(q, OnnxActivationQuantizer)]
        targets = {q.point.target for q in acts}
        for tensor, (lo, hi) in self.plan.fixed_ranges.items():
            if tensor not in targets:
                close = difflib.get_close_matches(tensor, sorted(targets), n=3)
                raise ConfigError(
                    f"fixed range on {tensor!r}, which has no quantizer in this "
                    f"plan; close tensor names: {close}"
                )
            for q in acts:
                if q.point.target == tensor:
                    q.set_range(lo, hi)

    # -- running -----------------------------------------------------------------------
    def input_feeds(self, batch: Any) -> dict[str, np.ndarray]:
        """Model inputs (positional, or a dict by input name) as ORT feeds."""
        args, kwargs = split_inputs(batch)
        if len(args) > len(self.input_names):
            raise ValueError(f"got {len(args)} inputs; the model takes {self.input_names}")
        given = {**dict(zip(self.input_names, args, strict=False)), **kwargs}
        unknown = sorted(set(given) - set(self.input_names))
        missing = [n for n in self.input_names if n not in given]
        if unknown or missing:
            raise ValueError(
                f"model inputs are {self.input_names}: missing {missing}, unknown {unknown}"
            )
        return {n: as_array(v, self.graph.tensors[n].dtype) for n, v in given.items()}

    def run_feeds(
        self, feeds: dict[str, np.ndarray], names: list[str], enabled: Iterable[str] | None = None
    ) -> list[np.ndarray]:
        """Run with the named quantizers on (None: as switched) and fetch ``names``."""
        on = None if enabled is None else set(enabled)
        if on is not None:
            self._check_names(on)
        control: dict[str, np.ndarray] = {}
        for q in self._quantizers.values():
            flag = q.enabled if on is None else q.name in on
            if flag and not q.has_qparams:
                raise CalibrationError(
                    f"quantizer {q.name!r} has no range yet: call "
                    "sim.calibrate(batches) first, or disable it"
                )
            control[q.enabled_input] = np.array(flag)
            if isinstance(q, OnnxActivationQuantizer):
                control.update(q.feeds())
        # ORT reads an empty list of names as "every output"
        return list(self.session.run(names, {**feeds, **control})) if names else []

    def __call__(self, *inputs: Any, **named: Any) -> Any:
        """The outputs as torch tensors: the tensor for one output, else a list."""
        feeds = self.input_feeds(
            {**dict(zip(self.input_names, inputs, strict=False)), **named} if named else inputs
        )
        outs = [torch.from_numpy(v) for v in self.run_feeds(feeds, self.output_names)]
        return outs[0] if len(outs) == 1 else outs

    def calibrate(
        self,
        batches: Iterable[Any],
        observer: str | dict[str, str] | None = None,
        progress: bool = True,
        histogram_bins: int = 0,
    ) -> OnnxSim:
        """Run ``batches`` with activation quantizers off and set every activation range.

        Args:
            batches: an iterable of input tuples, tensors / arrays or dicts by input name.
            observer: one observer name for all activation quantizers, or a dict
                quantizer name -> observer name (others use the plan's default).
            progress: show a progress bar.
            histogram_bins: also keep a histogram of every activation (for `dump_profile`).

        Raises:
            CalibrationError: no batches, or a tensor holds NaN / Inf (named).
        """
        per_name = observer if isinstance(observer, dict) else {}
        self._check_names(per_name)
        default = observer if isinstance(observer, str) else self.plan.scheme.observer
        acts = [
            q
            for q in self._quantizers.values()
            if isinstance(q, OnnxActivationQuantizer) and not q.qtype.is_floating_point
        ]
        for q in acts:
            q.start_observing(per_name.get(q.name, default), histogram_bins)
        try:
            count = self._observe(batches, acts, progress)
        except BaseException:
            for q in acts:
                q.cancel_observing()
            raise
        if count == 0:
            for q in acts:
                q.cancel_observing()
            raise CalibrationError(
                "calibration data is empty: pass an iterable with at least one batch of "
                "model inputs"
            )
        self.calibration_notes = [n for n in (q.stop_observing() for q in acts) if n]
        for note in self.calibration_notes:
            warnings.warn(note, stacklevel=2)
        return self

    def _observe(
        self, batches: Iterable[Any], acts: list[OnnxActivationQuantizer], progress: bool
    ) -> int:
        """Feed every batch's values to the observers; weights stay as switched."""
        names = list(
            dict.fromkeys(q.input_name for q in acts if q.input_name not in self.input_names)
        )
        weights = [q.name for q in self._quantizers.values()
                   if isinstance(q, OnnxWeightQuantizer) and q.enabled]  # fmt: skip
        count = 0
        for batch in progress_bar(batches, "calibrating", disable=not progress):
            feeds = self.input_feeds(batch)
            values = {
                **feeds,
                **dict(zip(names, self.run_feeds(feeds, names, weights), strict=True)),
            }
            for q in acts:
                q.observe(values[q.input_name])
            count += 1
        return count

    # -- exports, encodings, reports --------------------------------------------------------
    def export_onnx(
        self, path: str | Path, check: bool = True, u8_weights: bool | None = None,
        float_islands: bool = True, keep_io_types: bool = True,
    ) -> ExportReport:  # fmt: skip
        """Write a deployable ONNX Q/DQ model (opset 21) of the current state; with
        ``check``, compare it with this Sim in ONNX Runtime (see `mixq.onnx.export`;
        ``keep_io_types=False`` gives fp16 / bf16 model inputs and outputs that type).

        Example: ``sim.export_onnx("model.onnx").min_sqnr_db``.
        """
        from mixq.onnx.export import export_onnx

        return export_onnx(self, path, check, u8_weights, float_islands, keep_io_types)

    def encodings(self) -> Encodings:
        """Scale / zero point (or float type) per quantization point."""
        return Encodings({n: q.encoding() for n, q in self._quantizers.items()})

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every initializer (the weights the graph's ops name)."""
        return {i.name: tuple(int(d) for d in i.dims) for i in self.model.graph.initializer}

    def quantizer_table(self) -> Table:
        rows = [
            {"name": p.name, "kind": p.kind, "precision": p.precision, "op": p.op,
             "axis": p.axis, "enabled": self._quantizers[p.name].enabled}
            for p in self.points
        ]  # fmt: skip
        return Table(rows, title="quantizers")

    def report(
        self, path: str | Path, data: Iterable[Any] | None = None, metric: str = "cosine",
        progress: bool = True,
    ) -> Path:  # fmt: skip
        """An HTML report (see `mixq.torch.sim.Sim.report`)."""
        from mixq.analysis.quant_analysis import QuantAnalysis
        from mixq.analysis.report import write_report

        qa = QuantAnalysis(self)
        if data is not None:
            qa.run_all(data, metric=metric, progress=progress)
        return write_report(path, qa)


def build_sim(
    model: str | Path | onnx.ModelProto,
    example_inputs: Any,
    resolve: Callable[[Graph], Resolution | Plan],
) -> OnnxSim:
    """Capture ``model``, resolve its Graph with ``resolve`` and build the Sim (what
    `mixq.quantize` calls for ONNX models)."""
    graph, proto = capture(model)
    return OnnxSim(proto, graph, resolve(graph), example_inputs)


def quantize_onnx(
    model: str | Path | onnx.ModelProto,
    example_inputs: Any = None,
    config: Config | Plan | dict[str, Any] | str | None = None,
    strict: bool = True,
) -> OnnxSim:
    """`mixq.quantize` for ONNX models: a Config (dict, precision name, YAML) or a Plan."""

    def resolve(graph: Graph) -> Resolution:
        if isinstance(config, Plan):
            return Resolution(config, notes=["plan given as is"])
        return resolve_with_report(graph, Config.coerce(config), strict)

    return build_sim(model, example_inputs, resolve)
