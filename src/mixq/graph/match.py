"""Which ops a request's target names.

A target is one of (checked in this order):

- ``re:<regex>`` — ops whose name or module path the regex matches in full;
- ``kind:<kind>`` — ops of a canonical kind (``kind:softmax``);
- ``class:<qualified or short class name>`` — ops run inside a module of that class
  (the module itself or any module that contains it);
- ``tensor:<name>`` — the op whose first output is that tensor (qaic's node names);
- a glob (``encoder.layer.*.output.dense``) — on the op name or module path;
- a plain name — the op of that name; else every op of that module sub-tree; else every
  op of that kind.

Example:
    >>> from mixq.graph.ir import Graph, Op
    >>> g = Graph(); g.add_input("x", "float32")
    >>> g.add_op(Op("enc.fc", "linear", "enc.fc", inputs=["x"], outputs=["enc.fc"]))
    >>> g.add_op(Op("enc.act", "gelu", "enc.act", inputs=["enc.fc"], outputs=["enc.act"]))
    >>> match_ops(g, "enc"), match_ops(g, "kind:gelu"), match_ops(g, "re:.*fc")
    (['enc.fc', 'enc.act'], ['enc.act'], ['enc.fc'])
"""

from __future__ import annotations

import difflib
import fnmatch
import re

from mixq.graph.ir import Graph, Op

__all__ = ["class_target", "match_ops", "suggest"]


def class_target(cls: type) -> str:
    """The target string for a module class (``class:torch.nn.modules.linear.Linear``)."""
    return f"class:{cls.__module__}.{cls.__qualname__}"


def _module_chain(path: str) -> list[str]:
    parts = path.split(".") if path else []
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def _in_class(graph: Graph, op: Op, name: str) -> bool:
    for path in _module_chain(op.module):
        classes = graph.modules.get(path, ())
        if any(c == name or c.rsplit(".", 1)[-1] == name for c in classes):
            return True
    return False


def _in_subtree(op: Op, path: str) -> bool:
    return op.module == path or op.module.startswith(path + ".")


def _plain(graph: Graph, ops: list[Op], target: str) -> list[str]:
    if target in graph.ops:
        return [target]
    subtree = [op.name for op in ops if _in_subtree(op, target)]
    return subtree or [op.name for op in ops if op.kind == target]


def match_ops(graph: Graph, target: str, quantizable_only: bool = True) -> list[str]:
    """Names of the ops ``target`` selects, in graph order (empty if none)."""
    ops = [op for op in graph if not quantizable_only or graph.is_quantizable(op)]
    prefix, _, rest = target.partition(":")
    if prefix == "re" and rest:
        pattern = re.compile(rest)
        return [op.name for op in ops if pattern.fullmatch(op.name) or pattern.fullmatch(op.module)]
    if prefix == "kind" and rest:
        return [op.name for op in ops if op.kind == rest]
    if prefix == "class" and rest:
        return [op.name for op in ops if _in_class(graph, op, rest)]
    if prefix == "tensor" and rest:
        return [op.name for op in ops if op.outputs and op.outputs[0] == rest]
    if any(ch in target for ch in "*?["):
        return [
            op.name
            for op in ops
            if fnmatch.fnmatchcase(op.name, target) or fnmatch.fnmatchcase(op.module, target)
        ]
    return _plain(graph, ops, target)


def suggest(graph: Graph, target: str, count: int = 3) -> list[str]:
    """Op names, module paths and kinds close to a target that matched nothing."""
    word = target.partition(":")[2] if ":" in target else target
    names = {op.name for op in graph} | {op.module for op in graph if op.module}
    names |= {op.kind for op in graph}
    return difflib.get_close_matches(word, sorted(names), n=count, cutoff=0.5)
