"""Sims for the search: `SimFactory` captures the model once and builds a Sim per Plan, with
activation ranges cached per (tensor, precision, upstream weight precisions), so a plan
reloaded later scores exactly what the search measured. Weights changed by weights
transforms (`mixq.search.weights`) are loaded into each Sim it builds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mixq.core.quiet import quiet_dependencies
from mixq.plan.plan import Plan
from mixq.rules.resolve import Resolution
from mixq.search.weights import WeightTable, load_weights

__all__ = ["SimFactory"]


class SimFactory:
    """Captures the model once; builds a calibrated Sim per Plan, ranges cached."""

    def __init__(self, model: Any, example_inputs: Any, calib: list[Any]) -> None:
        self.calib, self.example_inputs = calib, example_inputs
        self.ranges: dict[tuple[Any, ...], tuple[float, float, bool]] = {}  # lo, hi, masks
        self._ancestors: dict[str, list[str]] = {}
        self.weights: WeightTable = {}  # (op, weight precision) -> transformed tensors
        self._captured: Any = None
        self._proto: Any = None
        if isinstance(model, (str, Path)) or type(model).__name__ == "ModelProto":
            from mixq.sim.onnx.capture import capture as capture_onnx

            self.graph, self._proto = capture_onnx(model)
        else:
            from mixq.sim.torch.capture import capture

            self._captured = capture(model, example_inputs)
            self.graph = self._captured.graph

    def pack(self) -> tuple[Any, ...]:
        """What rebuilds this factory on a worker (`SimFactory.unpack`): the captured float
        model as data (`mixq.sim.executors`), its Graph, the inputs and the ranges known."""
        if self._captured is None:
            model: Any = ("onnx", self._proto.SerializeToString())
        else:
            from mixq.sim.executors.torch_graph import pack_captured

            model = ("torch", (pack_captured(self._captured), self._captured.example_inputs))
        return (model, self.graph, self.example_inputs, self.calib, dict(self.ranges),
                self.weights)  # fmt: skip

    @classmethod
    def unpack(cls, packed: tuple[Any, ...]) -> SimFactory:
        """The factory `pack` described, without capturing the model again."""
        (backend, model), graph, example_inputs, calib, ranges, weights = packed
        factory = cls.__new__(cls)
        factory.calib, factory.example_inputs, factory.graph = calib, example_inputs, graph
        factory.ranges, factory._ancestors, factory.weights = dict(ranges), {}, weights
        factory._captured, factory._proto = None, None
        if backend == "onnx":
            import onnx

            factory._proto = onnx.load_from_string(model)
        else:
            from mixq.sim.executors.torch_graph import unpack_float_graph

            float_graph, inputs = model
            factory._captured = unpack_float_graph(float_graph, graph, inputs)
        return factory

    def build(self, plan: Plan) -> Any:
        """An uncalibrated Sim of ``plan``."""
        resolution = Resolution(plan)
        if self._captured is None:
            from mixq.sim.onnx.sim import OnnxSim

            return OnnxSim(self._proto, self.graph, resolution, self.example_inputs)
        from mixq.sim.torch.sim import Sim

        sim = Sim(_copy_captured(self._captured), resolution)
        load_weights(sim, self.weights, self._captured.module)
        return sim

    def sim(self, plan: Plan) -> Any:
        """A Sim of ``plan`` with every activation range set, calibrating only when a
        range has not been seen. Calibration runs with the weights quantized, so a range
        is keyed by its tensor, its precision and the precisions of every weight upstream."""
        sim = self.build(plan)
        acts = [
            q
            for q in sim.named_quantizers().values()
            if q.point.kind == "activation" and q.qtype.calibrated
            and q.fixed_range is None
        ]  # fmt: skip
        weights = {p.op: (p.name, p.precision) for p in sim.points if p.kind == "weight"}
        keys = {q.name: self._key(q.point, weights) for q in acts}
        if any(k not in self.ranges for k in keys.values()):
            sim.calibrate(self.calib, progress=False)
            self.ranges.update(
                {keys[q.name]: (*q.range, q.mask_passthrough) for q in acts if q.range is not None}
            )
            return sim
        for q in acts:
            q.load_range(*self.ranges[keys[q.name]])
        return sim

    def _key(self, point: Any, weights: dict[str | None, tuple[str, str]]) -> tuple[Any, ...]:
        upstream = self._upstream(point.target)
        return (point.target, point.precision, tuple(weights[o] for o in upstream if o in weights))

    def _upstream(self, tensor: str) -> list[str]:
        """Every op ``tensor`` depends on, in graph order (cached)."""
        if tensor not in self._ancestors:
            seen: set[str] = set()
            stack = [tensor]
            while stack:
                producer = self.graph.tensors[stack.pop()].producer
                if producer is not None and producer not in seen:
                    seen.add(producer)
                    stack.extend(self.graph.ops[producer].inputs)
            self._ancestors[tensor] = [op for op in self.graph.ops if op in seen]
        return self._ancestors[tensor]


def _copy_captured(captured: Any) -> Any:
    """A copy for one more Sim: the module deep-copied (fx copies its graph, sharing node
    metadata), the node maps re-pointed by node name, the Graph shared (read only)."""
    from mixq.sim.torch.capture import Captured

    with quiet_dependencies():  # torch's pytree deprecation, once per copied module
        module = copy.deepcopy(captured.module)
    nodes = {n.name: n for n in module.graph.nodes}
    return Captured(
        module,
        captured.graph,
        {t: nodes[n.name] for t, n in captured.tensor_nodes.items()},
        {o: nodes[n.name] for o, n in captured.op_nodes.items()},
        captured.example_inputs,
        list(captured.notes),
        captured.static,
    )
