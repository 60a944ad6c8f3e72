"""What the search measures on a plan's Sim, shared by this process and the workers: the
output error of a set of quantizers (normalised MSE) and which quantizers a unit owns.

Example:
    >>> import torch
    >>> nmse(torch.ones(4), torch.ones(4))
    0.0
"""

from __future__ import annotations

from typing import Any

import torch

from mixq.search.space import Unit
from mixq.sim.protocol import SimLike

__all__ = ["nmse", "outputs", "own_quantizers"]


def nmse(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Normalised mean squared error (0 = equal)."""
    ref, out = ref.double(), out.double()
    return float(((ref - out) ** 2).sum() / (ref**2).sum().clamp_min(1e-30))


def outputs(runner: Any, run: Any) -> torch.Tensor:
    """A run's model outputs, flattened into one vector."""
    return torch.cat([t.reshape(-1).double() for t in runner.outputs(run)])


def own_quantizers(sim: SimLike, unit: Unit) -> list[str]:
    """The quantizers a unit's choice decides: its ops' outputs and weights, and the
    conversions on its input edge (a ``to_float`` unit reading a float-produced tensor);
    a model input's own quantizer for an input unit."""
    if unit.input is not None:
        return [p.name for p in sim.points if p.op is None and p.target == unit.input]
    ops = set(unit.ops)
    return [p.name for p in sim.points if (p.op in ops and not p.readers) or ops & set(p.readers)]
