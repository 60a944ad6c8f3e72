"""What travels to a worker: a calibrated Sim as model state + Plan + Encodings.

`pack_sim` turns a Sim into a `SimState` (plain, picklable data); `rebuild_sim` builds the
same Sim from it on a worker, through the constructor the user's Sim came from. The model
state is the torch Sim's float fx graph and the tensors it reads (`mixq.sim.executors.
torch_graph`), or the captured ONNX model as bytes. The Plan travels as its dict, the
activation encodings as theirs (weight scales are recomputed from the weights, exactly as
the Sim computes them). The user's model is never touched: only copies travel.

Example:
    >>> import torch, mixq
    >>> x = torch.randn(8, 4)
    >>> sim = mixq.quantize(torch.nn.Linear(4, 2), (x,), "int8").calibrate([x], progress=False)
    >>> twin = rebuild_sim(pack_sim(sim))
    >>> bool(torch.equal(twin(x), sim(x)))
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mixq.graph.ir import Graph
from mixq.plan.encodings import Encodings
from mixq.plan.plan import Plan

__all__ = ["SimState", "load_encodings", "pack_sim", "rebuild_sim"]


@dataclass
class SimState:
    """A Sim as data.

    Attributes:
        backend: ``torch`` or ``onnx``.
        model: a `FloatGraph` (torch) or the captured ONNX model's bytes.
        graph: the captured `Graph`.
        plan: ``Plan.to_dict()``.
        encodings: the activation encodings, ``Encodings.to_dict()``.
        example_inputs: ``(args, kwargs)`` as the Sim keeps them.
        enabled: the quantizer switches as they were.
    """

    backend: str
    model: Any
    graph: Graph
    plan: dict[str, Any]
    encodings: dict[str, Any]
    example_inputs: Any
    enabled: dict[str, bool] = field(default_factory=dict)
    calibration_notes: list[str] = field(default_factory=list)


def _is_onnx(sim: Any) -> bool:
    return hasattr(sim, "session") and hasattr(sim, "source")


def _activation_encodings(sim: Any) -> Encodings:
    """Encodings of the activation quantizers that have one (weights follow their weight)."""
    return Encodings(
        {
            n: q.encoding()
            for n, q in sim.named_quantizers().items()
            if q.point.kind == "activation" and q.has_qparams
        }
    )


def pack_sim(sim: Any) -> SimState:
    """``sim`` as a `SimState` (copies only; the Sim and its model are left as they are)."""
    if _is_onnx(sim):
        backend, model = "onnx", sim.source.SerializeToString()
    else:
        from mixq.sim.executors.torch_graph import pack_float_graph

        backend, model = "torch", pack_float_graph(sim)
    return SimState(
        backend,
        model,
        sim.graph,
        sim.plan.to_dict(),
        _activation_encodings(sim).to_dict(),
        sim.example_inputs,
        {n: q.enabled for n, q in sim.named_quantizers().items()},
        list(sim.calibration_notes),
    )


def rebuild_sim(state: SimState) -> Any:
    """The Sim ``state`` was packed from: same quantizers, ranges and switches."""
    plan = Plan.from_dict(state.plan)
    if state.backend == "onnx":
        import onnx

        from mixq.sim.onnx.sim import OnnxSim

        sim: Any = OnnxSim(
            onnx.load_from_string(state.model), state.graph, plan, state.example_inputs
        )
    else:
        from mixq.sim.executors.torch_graph import unpack_float_graph
        from mixq.sim.torch.sim import Sim

        args, kwargs = state.example_inputs
        captured = unpack_float_graph(state.model, state.graph, (args, kwargs))
        sim = Sim(captured, plan)
    load_encodings(sim, Encodings.from_dict(state.encodings))
    for name, on in state.enabled.items():
        sim.quantizer(name).enabled = on
    sim.calibration_notes = list(state.calibration_notes)
    return sim


def load_encodings(sim: Any, encodings: Encodings) -> None:
    """Set each named activation quantizer's scale / zero point (and range, and mask
    pass-through) exactly."""
    for enc in encodings:
        q = sim.quantizer(enc.name)
        if enc.scale is None or enc.zero_point is None:
            continue
        shape: tuple[int, ...] = () if len(enc.scale) == 1 and enc.axis is None else (-1,)
        scale = torch.tensor(enc.scale, dtype=torch.float32).reshape(shape)
        zero_point = torch.tensor(enc.zero_point, dtype=torch.float32).reshape(shape)
        q.store_qparams(scale, zero_point)
        q.mask_passthrough = enc.mask_passthrough
        if q.reports_observed_range and enc.min is not None and enc.max is not None:
            q.range = (enc.min, enc.max)
