"""A search unit: one fusion group (or float model input) and the options it may take.

Example:
    >>> u = Unit("fc", ("fc", "relu"), "linear", options=[Candidate("int8", "int8")])
    >>> nearest(u, Candidate("int16", "int16"))
    Candidate('int8', 'int8')
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixq.core.qtypes import qtype
from mixq.search.candidates import Candidate
from mixq.targets.kernels import QLINEAR

__all__ = ["Unit", "nearest", "rank"]


@dataclass
class Unit:
    """One fusion group the search decides for.

    Attributes:
        name: the group's first op (its anchor).
        ops: the group's ops that the plan lists.
        kind: the anchor's op kind.
        reads: (op, input position) of every read of the unit's output, through
            data-movement ops.
        options: the candidates the target runs for it, cheapest first.
        fixed: kept as the base plan has it (no option, or the user asked to keep it).
        base: its choice in the base plan.
        input: for a model-input unit, the input tensor (its ops are empty).
        style: how the target runs it (`mixq.targets.kernels`: ``qlinear``, ``to_float``;
            None: in float, so the unit is fixed).
    """

    name: str
    ops: tuple[str, ...]
    kind: str
    reads: list[tuple[str, int]] = field(default_factory=list)
    options: list[Candidate] = field(default_factory=list)
    fixed: bool = False
    base: Candidate = field(default_factory=lambda: Candidate("fp32", "fp32"))
    input: str | None = None
    style: str | None = QLINEAR


def rank(c: Candidate) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The order of a candidate among others of equal cost: activation, then weight."""
    return (qtype(c.activation).rank(), qtype(c.weight).rank())


def nearest(unit: Unit, cand: Candidate) -> Candidate:
    """The option closest to ``cand`` in rank (activation first, then weight)."""

    def distance(c: Candidate) -> tuple[int, int]:
        ra, rw = qtype(c.activation).rank(), qtype(c.weight).rank()
        ta, tw = qtype(cand.activation).rank(), qtype(cand.weight).rank()
        return (abs(ra[0] - ta[0]) + (ra[1] != ta[1]), abs(rw[0] - tw[0]) + (rw[1] != tw[1]))

    return min(unit.options, key=distance)
