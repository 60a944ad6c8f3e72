"""Analyses of a Sim against its float model: metrics now; check, bad cases, comparison and
sensitivity build on them."""

from mixq.analysis.metrics import cosine, mse, sqnr

__all__ = ["cosine", "mse", "sqnr"]
