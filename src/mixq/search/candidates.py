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
    """An (activation, weight) precision pair a unit may take."""

    activation: str
    weight: str

    def __str__(self) -> str:
        if self.activation == self.weight:
            return self.activation
        return f"{self.activation}/{self.weight}"

    def __repr__(self) -> str:
        return f"Candidate({self.activation!r}, {self.weight!r})"


def parse_candidates(candidates: Iterable[Any]) -> list[Candidate]:
    """``"int8"`` (both), ``("int8", "int4")`` or ``"int8/int4"`` (activation, weight);
    ``"uint8_dynamic"`` alone takes int8 weights."""
    out: list[Candidate] = []
    for c in candidates:
        if isinstance(c, Candidate):
            pair = (c.activation, c.weight)
        elif isinstance(c, str):
            a, _, w = c.partition("/")
            pair = (a, w or static_weight(a))
        elif isinstance(c, (tuple, list)) and len(c) == 2:
            pair = (str(c[0]), str(c[1]))
        else:
            raise ConfigError(
                f"candidate {c!r} is not a precision name or an (activation, weight) pair; "
                "write e.g. 'int8', ('int8', 'int4') or 'int8/int4'"
            )
        try:
            weight = precision_name(pair[1], "weight", weight=True) or pair[1]
            cand = Candidate(qtype(pair[0]).name, weight)
        except ValueError as e:
            raise ConfigError(f"candidate {c!r}: {e}") from None
        if cand not in out:
            out.append(cand)
    if not out:
        raise ConfigError("no candidates: give at least one precision, e.g. ['int8', 'int16']")
    return out
