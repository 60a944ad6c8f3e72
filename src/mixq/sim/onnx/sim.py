"""The simulated mixed-precision ONNX model: an ONNX Runtime session over Q/DQ and Cast nodes.

Same interface as the torch `mixq.sim.torch.sim.Sim`: switch quantizers by name, calibrate,
fix ranges, read encodings. Switches, scales and zero points are graph inputs fed at each
run (see `mixq.sim.onnx.rewrite`), so none of them rebuilds the session; only a calibration
that finds attention masks does, once, to add the mask pass-through to those quantizers.

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
    >>> import mixq
    >>> sim = mixq.quantize(model, (x,), "int8").calibrate([(x,)], progress=False)
    >>> sim.quantizers
    ['x', 'y', 'fc.weight']
    >>> with sim.disabled():
    ...     bool(torch.equal(sim(x), x))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from mixq.core.errors import CalibrationError
from mixq.graph.ir import Graph
from mixq.plan.plan import Plan
from mixq.plan.points import QuantPoint
from mixq.rules.resolve import Resolution
from mixq.sim.base import SimBase
from mixq.sim.inputs import split_inputs
from mixq.sim.onnx.capture import capture, elem_type, load_model
from mixq.sim.onnx.quantizer import OnnxActivationQuantizer, OnnxQuantizer, OnnxWeightQuantizer
from mixq.sim.onnx.rewrite import Rewriter, ensure_opset, mask_passthrough_names
from mixq.sim.onnx.runner import OnnxRunner
from mixq.sim.onnx.session import as_array, make_session, random_inputs
from mixq.sim.quantizer import ActivationBase
from mixq.targets import fuses_residual_add

__all__ = ["OnnxSim", "build_sim"]


def _random_or_none(graph: Graph) -> tuple[torch.Tensor, ...]:
    try:
        return random_inputs(graph)
    except ValueError:  # an input type torch does not know: no example inputs
        return ()


class OnnxSim(SimBase):
    """A Graph + Plan made executable in ONNX Runtime; every quantizer switchable by name.

    Args:
        model: the captured ModelProto (see `mixq.sim.onnx.capture`).
        graph: its Graph.
        resolution: the Plan (or its Resolution) for ``graph``.
        example_inputs: inputs as for ``sim(*inputs)``, kept for exports (None: random
            inputs of the declared shapes, see `mixq.sim.onnx.session.random_inputs`).
    """

    runner_class = OnnxRunner

    def __init__(
        self,
        model: onnx.ModelProto,
        graph: Graph,
        resolution: Resolution | Plan,
        example_inputs: Any = None,
    ) -> None:
        self.init_plan(graph, resolution)
        self.source = model
        self.example_inputs = split_inputs(
            _random_or_none(graph) if example_inputs is None else example_inputs
        )
        self._quantizers: dict[str, OnnxQuantizer] = {p.name: self._make(p) for p in self.points}
        self.input_names = list(graph.inputs)
        self._build()
        self.finish_init()

    def _build(self) -> None:
        """The rewritten model and its session, with the mask pass-through of the
        quantizers that have one now (`mixq.sim.onnx.rewrite`)."""
        self.model = ensure_opset(load_model(self.source), list(self._quantizers.values()))
        fuse_add = fuses_residual_add(self.plan.target)
        rewriter = Rewriter(self.model, self.graph, self._quantizers, fuse_add)
        rewriter.run()
        self.bias_feeds = rewriter.bias_feeds
        self._masked = mask_passthrough_names(self._quantizers)
        self._expose_values()
        self.session = make_session(self.model)

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
        self,
        feeds: dict[str, np.ndarray],
        names: list[str],
        enabled: Iterable[str] | None = None,
        session: Any = None,
    ) -> list[np.ndarray]:
        """Run with the named quantizers on (None: as switched) and fetch ``names``; in
        ``session`` (a session of an edited copy of `model`) instead of the Sim's own."""
        on = None if enabled is None else set(enabled)
        if on is not None:
            self._check_names(on)
        if mask_passthrough_names(self._quantizers) != self._masked:
            self._build()  # a calibration found attention masks (a rare, one-off rebuild)
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
        control.update({f.input_name: f.value(on) for f in self.bias_feeds})
        # ORT reads an empty list of names as "every output"
        run = (session or self.session).run
        return list(run(names, {**feeds, **control})) if names else []

    def __call__(self, *inputs: Any, **named: Any) -> Any:
        """The outputs as torch tensors: the tensor for one output, else a list."""
        feeds = self.input_feeds(
            {**dict(zip(self.input_names, inputs, strict=False)), **named} if named else inputs
        )
        outs = [torch.from_numpy(v) for v in self.run_feeds(feeds, self.output_names)]
        return outs[0] if len(outs) == 1 else outs

    def _calibration_step(self, acts: list[ActivationBase]) -> Callable[[Any], None]:
        """One run with activation quantizers off (weights as switched), fetching what the
        observing quantizers read (float casts observe nothing)."""
        watched = [
            q for q in acts if isinstance(q, OnnxActivationQuantizer) and q.observer is not None
        ]
        names = list(
            dict.fromkeys(q.input_name for q in watched if q.input_name not in self.input_names)
        )
        weights = [q.name for q in self._quantizers.values()
                   if isinstance(q, OnnxWeightQuantizer) and q.enabled]  # fmt: skip

        def step(batch: Any) -> None:
            feeds = self.input_feeds(batch)
            fetched = self.run_feeds(feeds, names, weights)
            values = {**feeds, **dict(zip(names, fetched, strict=True))}
            for q in watched:
                q.observe(values[q.input_name])

        return step

    # -- exports, encodings, reports --------------------------------------------------------
    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every initializer (the weights the graph's ops name)."""
        return {i.name: tuple(int(d) for d in i.dims) for i in self.model.graph.initializer}


def build_sim(
    model: str | Path | onnx.ModelProto,
    example_inputs: Any,
    resolve: Callable[[Graph], Resolution | Plan],
) -> OnnxSim:
    """Capture ``model``, resolve its Graph with ``resolve`` and build the Sim (what
    `mixq.quantize` calls for ONNX models)."""
    graph, proto = capture(model)
    return OnnxSim(proto, graph, resolve(graph), example_inputs)
