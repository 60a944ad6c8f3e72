"""Candidates: the (activation, weight) precision pairs a search unit may take.

Example:
    >>> parse_candidates(["int8", ("int8", "int4"), "fp16"])
    [Candidate('int8', 'int8'), Candidate('int8', 'int4'), Candidate('fp16', 'fp16')]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mixq.core.errors import ConfigError
from mixq.core.qtypes import qtype
from mixq.core.validation import precision_name, static_weight

__all__ = ["Candidate", "parse_candidates"]


@dataclass(frozen=True)
class Candidate:
    """An (activation, weight) precision pair a unit may take.

    ``input``, when set, is the precision the unit's multiply (its anchor: the linear of a
    linear + residual add kernel) reads a tensor produced in float at, the quantizer on its
    input edge, while the unit's output (the residual stream) stays at ``activation``. The
    search space makes such options itself (`mixq.search.space`); None reads at
    ``activation``. Written ``int16/int4@int8``.
    """

    activation: str
    weight: str
    input: str | None = None

    @property
    def reads_at(self) -> str:
        """The precision the unit's multiply reads a float-produced tensor at."""
        return self.input or self.activation

    def __str__(self) -> str:
        pair = f"{self.activation}/{self.weight}"
        text = self.activation if self.activation == self.weight else pair
        return f"{text}@{self.input}" if self.input else text

    def __repr__(self) -> str:
        extra = f", input={self.input!r}" if self.input else ""
        return f"Candidate({self.activation!r}, {self.weight!r}{extra})"


def parse_candidates(candidates: Iterable[Any]) -> list[Candidate]:
    """``"int8"`` (both), ``("int8", "int4")`` or ``"int8/int4"`` (activation, weight);
    ``"uint8_dynamic"`` alone takes int8 weights; ``"int16/int4@int8"`` or ``("int16",
    "int4", "int8")`` adds the precision the multiply reads at (`Candidate.input`)."""
    out: list[Candidate] = []
    for c in candidates:
        reads: str | None = None
        if isinstance(c, Candidate):
            pair, reads = (c.activation, c.weight), c.input
        elif isinstance(c, str):
            main, _, reads_text = c.partition("@")
            a, _, w = main.partition("/")
            pair, reads = (a, w or static_weight(a)), reads_text or None
        elif isinstance(c, (tuple, list)) and len(c) in (2, 3):
            pair = (str(c[0]), str(c[1]))
            reads = str(c[2]) if len(c) == 3 else None
        else:
            raise ConfigError(
                f"candidate {c!r} is not a precision name or an (activation, weight) pair; "
                "write e.g. 'int8', ('int8', 'int4') or 'int8/int4'"
            )
        try:
            weight = precision_name(pair[1], "weight", weight=True) or pair[1]
            cand = Candidate(
                qtype(pair[0]).name, weight, qtype(reads).name if reads is not None else None
            )
        except ValueError as e:
            raise ConfigError(f"candidate {c!r}: {e}") from None
        if cand not in out:
            out.append(cand)
    if not out:
        raise ConfigError("no candidates: give at least one precision, e.g. ['int8', 'int16']")
    return out
