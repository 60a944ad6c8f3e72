"""Automatic mixed-precision search (`mixq.search.entry.search`): strategies in
`mixq.search.strategies` and `mixq.search.milp`, registered in `mixq.search.registry`."""

from mixq.search.engine import Point, Target
from mixq.search.entry import search
from mixq.search.registry import STRATEGIES
from mixq.search.result import SearchResult
from mixq.search.space import Candidate, SearchSpace

__all__ = [
    "STRATEGIES",
    "Candidate",
    "Point",
    "SearchResult",
    "SearchSpace",
    "Target",
    "search",
]
