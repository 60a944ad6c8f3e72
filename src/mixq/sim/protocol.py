"""What the layers above the Sim (analysis, search, transforms, export) may read from one:
the typed interface both `mixq.sim.torch.sim.Sim` and `mixq.sim.onnx.sim.OnnxSim` have.

Write ``sim: SimLike`` instead of ``sim: Any`` where a function takes either Sim; what only
one backend has (the torch Sim's ``module``, the ONNX Sim's ``session``) stays outside it.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    >>> sim = mixq.quantize(model, (torch.randn(3, 4),), "int8")
    >>> isinstance(sim, SimLike)
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mixq.graph.ir import Graph
from mixq.plan.encodings import Encodings
from mixq.plan.plan import Plan
from mixq.plan.points import QuantPoint
from mixq.rules.resolve import Resolution

__all__ = ["SimLike"]


@runtime_checkable
class SimLike(Protocol):
    """A simulated model: a Graph and its Plan, quantizers switchable by name.

    Attributes:
        graph: the captured Graph.
        plan / resolution: the Plan and how it was resolved.
        points: every quantization point, in graph order.
        example_inputs: ``(args, kwargs)`` as given to `mixq.quantize`.
        value_nodes: tensor -> where the runner finds its value as the model sees it.
        calibration_notes: what the last calibration warned about.
    """

    graph: Graph
    plan: Plan
    resolution: Resolution
    points: list[QuantPoint]
    example_inputs: tuple[tuple[Any, ...], dict[str, Any]]
    value_nodes: dict[str, str]
    calibration_notes: list[str]

    @property
    def quantizers(self) -> list[str]: ...

    def named_quantizers(self) -> Mapping[str, Any]: ...

    def quantizer(self, name: str) -> Any: ...

    def set_enabled(self, names: Iterable[str] | None, enabled: bool) -> None: ...

    def disabled(self, names: Iterable[str] | None = None) -> AbstractContextManager[Any]: ...

    def only(self, names: Iterable[str]) -> AbstractContextManager[Any]: ...

    def set_range(self, name: str, lo: float, hi: float) -> None: ...

    def calibrate(
        self,
        batches: Iterable[Any],
        observer: str | dict[str, str] | None = None,
        progress: bool = True,
        histogram_bins: int = 0,
    ) -> Any: ...

    def encodings(self) -> Encodings: ...

    def weight_shapes(self) -> dict[str, tuple[int, ...]]: ...

    def op_stats(self) -> dict[str, Any]: ...

    def resolution_report(self, path: str | Path | None = None) -> str: ...

    def __call__(self, *inputs: Any, **named: Any) -> Any: ...
