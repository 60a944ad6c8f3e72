"""Fold weights a model computes from its parameters into parameters of the capture.

Weight normalisation (wav2vec2's positional conv, HuBERT, WavLM, EnCodec), spectral norm and
other parametrizations compute a layer's weight in the forward pass from stored parameters
(``weight = g * v / ||v||``). Exported as is, the conv reads an ordinary tensor: it gets no
weight quantizer, the Sim and ONNX Runtime quantize it differently, and the exported file
recomputes it on every run. The computed weight depends on no input, so it is evaluated once
at capture and read as a parameter, as every other weight is.

Example:
    >>> import torch
    >>> conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(2, 4, 3))
    >>> gm = torch.export.export(conv, (torch.randn(1, 2, 8),)).module()
    >>> fold_computed_weights(gm)
    ['weight']
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx
from torch.utils import _pytree as pytree

from mixq.sim.torch.kinds import canonical_kind, weight_arg

__all__ = ["fold_computed_weights"]


def _constant_chain(node: fx.Node) -> list[fx.Node] | None:
    """The pure call_function nodes ``node`` is computed by, in graph order, when every leaf
    is a parameter or buffer (``get_attr``); None when it depends on an input."""
    chain: dict[fx.Node, None] = {}
    stack = [node]
    while stack:
        n = stack.pop()
        if n in chain or n.op == "get_attr":
            continue
        if n.op != "call_function" or n.is_impure():
            return None
        chain[n] = None
        stack.extend(n.all_input_nodes)
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    return sorted(chain, key=order.__getitem__)


def _evaluate(gm: fx.GraphModule, chain: list[fx.Node]) -> torch.Tensor | None:
    values: dict[fx.Node, Any] = {}

    def value(a: Any) -> Any:
        if not isinstance(a, fx.Node):
            return a
        if a.op == "get_attr":
            return operator.attrgetter(str(a.target))(gm)
        return values[a]

    with torch.no_grad():
        for n in chain:
            args = pytree.tree_map(value, n.args)
            kwargs = pytree.tree_map(value, n.kwargs)
            values[n] = n.target(*args, **kwargs)  # type: ignore[operator]
    out = values[chain[-1]]
    return out if isinstance(out, torch.Tensor) else None


def _register(gm: fx.GraphModule, path: str, value: torch.Tensor) -> str:
    """Register ``value`` as ``<path>.weight`` (or the first free ``weight_folded<i>``)."""
    try:
        owner = gm.get_submodule(path) if path else gm
    except AttributeError:
        owner, path = gm, ""
    leaf, i = "weight", 0
    while hasattr(owner, leaf):
        i += 1
        leaf = f"weight_folded{i}"
    owner.register_parameter(leaf, torch.nn.Parameter(value.detach().clone()))
    return f"{path}.{leaf}" if path else leaf


def fold_computed_weights(
    gm: fx.GraphModule, path_of: Callable[[fx.Node], str] = lambda node: ""
) -> list[str]:
    """Replace every weight argument computed from parameters alone by a parameter holding
    its value, registered on the module ``path_of(consumer)`` names; return the new
    parameters' names. The nodes that computed them are removed."""
    folded: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        index = weight_arg(canonical_kind(node.target), node.target)
        if index is None or index >= len(node.args):
            continue
        arg = node.args[index]
        if not isinstance(arg, fx.Node) or arg.op != "call_function":
            continue
        chain = _constant_chain(arg)
        value = None if chain is None else _evaluate(gm, chain)
        if chain is None or value is None:
            continue
        name = _register(gm, path_of(node), value)
        with gm.graph.inserting_before(node):
            read = gm.graph.get_attr(name)
        read.meta = {k: v for k, v in arg.meta.items() if k in ("val", "tensor_meta")}
        node.replace_input_with(arg, read)
        for n in reversed(chain):
            if not n.users:
                gm.graph.erase_node(n)
        folded.append(name)
    if folded:
        gm.graph.lint()
        gm.recompile()
    return folded
