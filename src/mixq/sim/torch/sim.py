"""The simulated mixed-precision model: the exported module with quantizers inserted.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> x = torch.randn(16, 4)
    >>> sim = mixq.quantize(model, (x,), "int8")
    >>> _ = sim.calibrate([(x,)], progress=False)
    >>> with sim.disabled():
    ...     bool(torch.equal(sim(x), model(x)))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from mixq.graph.ir import Op
from mixq.plan.encodings import Encodings
from mixq.plan.plan import Plan
from mixq.plan.points import QuantPoint
from mixq.rules.resolve import Resolution
from mixq.sim.base import SimBase
from mixq.sim.inputs import split_inputs
from mixq.sim.quantizer import ActivationBase
from mixq.sim.torch.bias import BiasRounding, rounds_bias
from mixq.sim.torch.capture import Captured
from mixq.sim.torch.integer_linear import IntegerLinear, accumulates_in_integer
from mixq.sim.torch.kinds import weight_arg
from mixq.sim.torch.quantizer import ActivationQuantizer, Quantizer, WeightQuantizer
from mixq.targets.fusion import target_fusion_groups

__all__ = ["Sim"]


class Sim(nn.Module, SimBase):
    """A Graph + Plan made executable: fake-quant at every quantization point.

    Every quantizer can be switched off and on by name; with all of them off the Sim
    computes exactly what the float model computes.
    """

    def __init__(self, captured: Captured, resolution: Resolution | Plan) -> None:
        super().__init__()
        self.init_plan(captured.graph, resolution)
        self.module = captured.module
        self.example_inputs = captured.example_inputs
        self._quantizers: dict[str, Quantizer] = {}
        self.value_nodes: dict[str, str] = {}  # tensor -> fx node holding its final value
        self.quantizer_nodes: dict[str, str] = {}  # quantizer name -> its fx node
        self._quantizers_by_attr: dict[str, Quantizer] = {}
        self.op_nodes: dict[str, str] = {}  # op name -> its fx node
        self.capture_notes: list[str] = list(captured.notes)  # e.g. cache outputs flattened
        self.bias_nodes: list[str] = []  # fx nodes rounding conv biases (BiasRounding)
        self.integer_linears: list[str] = []  # fx nodes of linears run as IntegerLinear
        self.static_shapes = _shapes(*captured.example_inputs) if captured.static else None
        _Inserter(self, captured).run()
        self.module.recompile()
        self.finish_init()

    # -- running ---------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(args, kwargs)

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The module on these inputs; shapes the capture cannot take raise a ValueError
        naming them and the example's, instead of torch's guard assertion."""
        if self.static_shapes is not None and _shapes(args, kwargs) != self.static_shapes:
            raise ValueError(
                f"this Sim was captured for input shapes {self.static_shapes} only "
                "(torch.export could not keep them dynamic; see sim.capture_notes), got "
                f"{_shapes(args, kwargs)}: run those shapes (pad or resize the inputs), or "
                "quantize again with example inputs of the shapes you need"
            )
        try:
            return self.module(*args, **kwargs)
        except AssertionError as e:  # export's input guards: a shape relation it recorded
            if "Guard failed" not in str(e):
                raise
            raise ValueError(
                f"input shapes {_shapes(args, kwargs)} break a relation between input sizes "
                "that torch.export recorded when it captured the model with example shapes "
                f"{_shapes(*self.example_inputs)} ({str(e).splitlines()[0][:160]}): run "
                "shapes that keep it, or quantize again with example inputs of the shapes "
                "you need"
            ) from e

    def _calibration_step(self, acts: list[ActivationBase]) -> Callable[[Any], None]:
        """One float run of the module: observing quantizers watch and pass values on."""

        def step(batch: Any) -> None:
            args, kwargs = split_inputs(batch)
            with torch.no_grad():
                self._run(args, kwargs)

        return step

    def learn_scales(self, learnable: bool = True) -> None:
        """Make activation scales trainable (LSQ-style QAT); calibrate first."""
        for q in self._quantizers.values():
            if isinstance(q, ActivationQuantizer) and q.scale is not None:
                q.set_learnable(learnable)

    def encodings(self) -> Encodings:
        """Scale / zero point (or float type) per quantization point."""
        self.compute_weight_qparams()
        return super().encodings()

    def compute_weight_qparams(self) -> None:
        """Weight scales are set on the first forward; compute any still missing."""
        with torch.no_grad():
            for q in self._quantizers.values():
                if isinstance(q, WeightQuantizer) and q.scale is None and q.enabled:
                    q(*self.weight_args(q.name))

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of the model, by the names the graph's ops use."""
        return {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every parameter and buffer, by the names the graph's ops use."""
        return {n: tuple(t.shape) for n, t in self.named_tensors().items()}

    def weight_args(self, name: str) -> list[torch.Tensor | None]:
        """The tensors a weight quantizer reads: the weight, and a batch-norm's weight and
        running variance when one is folded into it."""
        q = self.quantizer(name)
        tensors = self.named_tensors()
        return [None if t is None else tensors[t] for t in getattr(q, "sources", ())]


class _Inserter:
    """Rewrites the fx graph: one call_module node per quantization point."""

    def __init__(self, sim: Sim, captured: Captured) -> None:
        self.sim, self.cap = sim, captured
        self.fx_graph = captured.module.graph
        self.current = dict(captured.tensor_nodes)  # tensor -> node holding its latest value
        self.get_attrs = {str(n.target): n for n in self.fx_graph.nodes if n.op == "get_attr"}
        self.groups = target_fusion_groups(captured.graph, sim.plan.target)
        self.convs: list[tuple[str, WeightQuantizer]] = []  # conv op -> its weight quantizer
        self.linears: list[tuple[str, WeightQuantizer]] = []  # linear op -> its weight quantizer

    def run(self) -> None:
        for point in self.sim.points:
            if point.kind == "weight":
                self._weight(point)
            elif point.readers:
                self._conversion(point)
            else:
                self._activation(point)
        for op_name, quantizer in self.convs:
            self._bias(op_name, quantizer)
        for op_name, quantizer in self.linears:
            self._integer_linear(op_name, quantizer)
        # where the analyses find each tensor as the rest of the model sees it
        self.sim.value_nodes = {t: n.name for t, n in self.current.items()}
        self.sim.op_nodes = {op: n.name for op, n in self.cap.op_nodes.items()}
        self.sim.quantizer_nodes = {
            self.sim._quantizers_by_attr[str(n.target)].name: n.name
            for n in self.fx_graph.nodes
            if n.op == "call_module" and str(n.target).startswith("mixq_q")
        }

    def _register(self, quantizer: Quantizer) -> str:
        target = f"mixq_q{len(self.sim._quantizers)}"
        self.sim._quantizers_by_attr[target] = quantizer
        self.cap.module.add_module(target, quantizer)
        self.sim._quantizers[quantizer.name] = quantizer
        return target

    def _activation(self, point: QuantPoint) -> None:
        node = self.current[point.target]
        target = self._register(ActivationQuantizer(point, self.sim.plan.scheme.observer))
        with self.fx_graph.inserting_after(node):
            q = self.fx_graph.call_module(target, (node,))
        node.replace_all_uses_with(
            q,
            delete_user_cb=lambda u: (
                u is not q and not (u.op == "call_module" and u.target == "_guards_fn")
            ),
        )
        self.current[point.target] = q

    def _conversion(self, point: QuantPoint) -> None:
        src = self.current[point.target]
        target = self._register(ActivationQuantizer(point, self.sim.plan.scheme.observer))
        with self.fx_graph.inserting_after(src):
            q = self.fx_graph.call_module(target, (src,))
        for reader in point.readers:
            self.cap.op_nodes[reader].replace_input_with(src, q)

    def _weight(self, point: QuantPoint) -> None:
        assert point.op is not None
        op = self.cap.graph.ops[point.op]
        op_node = self.cap.op_nodes[point.op]
        w_node = op_node.args[weight_arg(op.kind, op_node.target) or 0]
        if not isinstance(w_node, fx.Node):
            raise TypeError(f"weight of {point.op!r} is not a graph value")
        bn = self._following_bn(point.op)
        args: tuple[Any, ...] = (w_node,)
        eps = None
        if bn is not None:
            args = (
                w_node,
                self._attr(bn.attrs.get("bn_weight")),
                self._attr(bn.attrs.get("bn_running_var")),
            )
            eps = float(cast(float, bn.attrs.get("bn_eps", 1e-5)))
        axis = int(cast(int, op.attrs.get("weight_axis", 0)))
        quantizer = WeightQuantizer(point, bn_eps=eps, out_axis=axis)
        quantizer.sources = tuple(None if a is None else str(a.target) for a in args)
        target = self._register(quantizer)
        with self.fx_graph.inserting_before(op_node):
            q = self.fx_graph.call_module(target, args)
        op_node.replace_input_with(w_node, q)
        if op.kind == "conv":
            self.convs.append((point.op, quantizer))
        elif op_node.target == torch.ops.aten.linear.default and bn is None:
            self.linears.append((point.op, quantizer))

    def _bias(self, op_name: str, weight: WeightQuantizer) -> None:
        """`BiasRounding` on the bias of a conv an int8 kernel runs (see mixq.sim.torch.bias)."""
        op_node = self.cap.op_nodes[op_name]
        act = self._input_quantizer(op_node.args[0])
        if act is None or not rounds_bias(act, weight):
            return
        index = (weight_arg("conv", op_node.target) or 1) + 1
        args = list(op_node.args)
        if len(args) < index:
            return
        bias = args[index] if len(args) > index else None
        bn = self._following_bn(op_name)
        names = ("bn_weight", "bn_bias", "bn_running_mean", "bn_running_var")
        bn_args = [self._attr(bn.attrs.get(n)) if bn is not None else None for n in names]
        target = f"mixq_bias{len(self.sim.bias_nodes)}"
        self.cap.module.add_module(target, BiasRounding(act, weight))
        with self.fx_graph.inserting_before(op_node):
            node = self.fx_graph.call_module(target, (bias, *bn_args))
        op_node.args = (*args[:index], node, *args[index + 1 :])
        self.sim.bias_nodes.append(node.name)

    def _integer_linear(self, op_name: str, weight: WeightQuantizer) -> None:
        """The linear becomes `IntegerLinear` where an int8 kernel runs it (see
        mixq.sim.torch.integer_linear); the export writes it back as a linear."""
        op_node = self.cap.op_nodes[op_name]
        act = self._input_quantizer(op_node.args[0])
        if act is None or not accumulates_in_integer(act, weight):
            return
        target = f"mixq_linear{len(self.sim.integer_linears)}"
        self.cap.module.add_module(target, IntegerLinear(act, weight))
        op_node.op, op_node.target = "call_module", target
        self.sim.integer_linears.append(op_node.name)

    def _input_quantizer(self, node: Any) -> ActivationQuantizer | None:
        """The activation quantizer an op's input comes from, through padding and views."""
        while isinstance(node, fx.Node):
            if node.op == "call_module":
                q = self.sim._quantizers_by_attr.get(str(node.target))
                return q if isinstance(q, ActivationQuantizer) else None
            name = getattr(node.target, "__name__", "").split(".")[0]
            if node.op != "call_function" or name not in _PASS_THROUGH:
                return None
            if name == "dropout" and (len(node.args) < 3 or node.args[2] is not False):
                return None  # a training dropout scales what it keeps: off the grid
            node = node.args[0]
        return None

    def _following_bn(self, op_name: str) -> Op | None:
        """The batch-norm fused after a conv / linear, whose scale folds into its weight."""
        group = self.groups[op_name]
        if group.anchor != op_name:
            return None
        members = [self.cap.graph.ops[n] for n in group.ops[1:]]
        return next(
            (o for o in members if o.kind == "batch_norm" and o.attrs.get("bn_running_var")), None
        )

    def _attr(self, name: object) -> fx.Node | None:
        return self.get_attrs.get(str(name)) if name else None


# ops between a quantizer and a conv / linear that keep the input's grid (ORT pads with the
# zero point; dropout only as captured for inference)
_PASS_THROUGH = frozenset({
    "pad", "constant_pad_nd", "view", "reshape", "permute", "clone", "transpose", "contiguous",
    "flatten", "squeeze", "unsqueeze", "dropout", "_unsafe_view",
})  # fmt: skip


def _shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[int, ...]]:
    """The shape of every tensor among the inputs, in order."""
    leaves = pytree.tree_leaves((args, kwargs))
    return [tuple(x.shape) for x in leaves if isinstance(x, torch.Tensor)]
