"""The strategy registry: name -> function(trials, batch, **options) that evaluates plans.

Add a strategy by writing ``def my_search(trials, batch, **kwargs)`` (see
`mixq.search.strategies` for the four built in) and registering it here or with
``STRATEGIES["mine"] = my_search``.
"""

from __future__ import annotations

from collections.abc import Callable

from mixq.search.milp import budget_search
from mixq.search.strategies import fallback_search, pareto_search, ratio_search

__all__ = ["STRATEGIES"]

STRATEGIES: dict[str, Callable[..., None]] = {
    "ratio": ratio_search,
    "fallback": fallback_search,
    "pareto": pareto_search,
    "budget": budget_search,
}
