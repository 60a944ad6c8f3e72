"""Model inputs as the user gives them, normalised for both Sims and everything above them.

Example:
    >>> split_inputs({"x": 1}), split_inputs(2), split_inputs([1, 2])
    (((), {'x': 1}), ((2,), {}), ((1, 2), {}))
"""

from __future__ import annotations

from typing import Any

__all__ = ["split_inputs"]


def split_inputs(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Normalise user inputs to (args, kwargs): a dict is keyword inputs, a tuple or list
    positional ones, anything else one positional input."""
    if isinstance(batch, dict):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}
