"""Fusion groups as a target fuses them: `mixq.graph.fusion` finds the groups, the target
profile says whether a residual add joins the conv / linear before it.

Example:
    >>> from mixq.graph.ir import Graph, Op
    >>> g = Graph(); g.add_input("x", "float32")
    >>> g.add_op(Op("fc", "linear", "fc", inputs=["x"], outputs=["y"]))
    >>> g.add_op(Op("add", "add", "", inputs=["y", "x"], outputs=["z"]))
    >>> [len(target_fusion_groups(g, t)["fc"].ops) for t in ("generic", "ort-cpu")]
    [2, 1]
"""

from __future__ import annotations

from mixq.graph.fusion import FusionGroup, find_fusion_groups
from mixq.graph.ir import Graph
from mixq.targets.loading import fuses_residual_add

__all__ = ["target_fusion_groups"]


def target_fusion_groups(graph: Graph, target: str) -> dict[str, FusionGroup]:
    """`find_fusion_groups` as deployment ``target`` fuses (a built-in name or a profile's
    path; its ``fuse_residual_add`` decides): what every user of a Plan's groups calls."""
    return find_fusion_groups(graph, fuses_residual_add(target))
