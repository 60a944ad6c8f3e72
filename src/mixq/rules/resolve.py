"""Resolve a Config against a Graph into a Plan (and a report of how).

Precedence, one rule at a time (each has its own test):

1. Every op starts at the config's ``default`` (rule ``default``).
2. The setter chain, if any, replaces the default on the ops it matches; within the
   chain the first setter that matches an op decides (Horizon's order).
3. ``rules`` apply in the order they were made and a later rule wins, across APIs:
   a sub-tree request then a leaf request leaves the leaf at its own precision; a leaf
   then a sub-tree request gives the leaf the sub-tree's. A precision mode is one rule
   over every op. Model input / output requests set those tensors' precision.
4. A fusion group (the target's: ``ort-cpu`` does not fuse a residual add into the conv
   before it) runs at one activation precision: the member decided by the latest
   rule sets it for all (two different explicit requests inside one group are a
   conflict: strict mode raises, best-effort keeps the later and notes it).
   With a target that lists ``integer_kernels`` (``ort-cpu``), ops it computes in float
   then get fp32 activations unless a rule named them; ``to_float`` kernels (MatMul-
   IntegerToFloat) keep quantized inputs and give a float output.
5. Data-movement ops take the precision of the tensor they read (``inherits <tensor>``).
6. The target profile checks every op: strict mode raises `ConflictError` naming the op,
   what it wants and what the target allows; best-effort moves it to the nearest
   supported precision and notes what changed.

Example:
    >>> from mixq.rules.config import Config
    >>> from mixq.graph.ir import Graph, Op
    >>> g = Graph(); g.add_input("x", "float32")
    >>> g.add_op(Op("fc", "linear", "fc", inputs=["x"], outputs=["fc"],
    ...             weights={"weight": "fc.weight"}))
    >>> resolve(g, Config().set_precision("fc", activation="int16"))["fc"].output
    ('int16',)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mixq.core.errors import ConfigError, ConflictError
from mixq.core.qtypes import qtype
from mixq.graph.ir import Graph, Op
from mixq.graph.kinds import is_data_movement
from mixq.graph.match import match_ops, suggest
from mixq.plan.plan import OpPlan, Plan
from mixq.plan.tensors import aliases, tensor_precisions
from mixq.plan.types import Precision
from mixq.rules import ascend
from mixq.rules.ascend import MixLists
from mixq.rules.config import Config
from mixq.rules.requests import ModelIORequest, PrecisionModeRequest, Request, Rule
from mixq.targets.fusion import target_fusion_groups
from mixq.targets.kernels import QLINEAR, QLINEAR_IF_QUANTIZED, TO_FLOAT, writes_as_gemm
from mixq.targets.loading import load_target

__all__ = ["Resolution", "resolve", "resolve_with_report"]


@dataclass
class _Decision:
    act_in: str
    act_out: str
    weight: dict[str, str]
    rule: str
    order: int = -2  # index of the rule that decided (-2: default, -1: a setter)


@dataclass
class Resolution:
    """What resolution produced and how: the record the resolution report prints."""

    plan: Plan
    requests: list[dict[str, object]] = field(default_factory=list)
    expanded: list[dict[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Resolver:
    def __init__(self, graph: Graph, config: Config, strict: bool) -> None:
        self.graph, self.config, self.strict = graph, config, strict
        self.res = Resolution(
            Plan(
                default=config.default,
                scheme=config.scheme,
                target=config.target,
                fixed_ranges=dict(config.fixed_ranges),
            )
        )
        d = config.default
        self.ops = [op for op in graph if graph.is_quantizable(op)]
        self.decisions = {op.name: self._decision(op, d, "default") for op in self.ops}
        self.inputs: dict[str, str] = {}

    def _decision(self, op: Op, p: Precision, rule: str, order: int = -2) -> _Decision:
        act = p.activation or "fp32"
        return _Decision(act, act, {r: p.weight or "fp32" for r in op.weights}, rule, order)

    def run(self) -> Resolution:
        self._setters()
        for i, rule in enumerate(self.config.rules):
            self.res.requests.append(rule.to_dict())
            self._apply(i, rule)
        self._unify_groups()
        self._runtime_placement()
        self._input_scales()
        ops = self._inherit(self._check_target(self._op_plans()))
        produced = tensor_precisions(self.graph, ops, self.inputs)
        model_inputs = {t: produced[t] for t in self.graph.inputs if t in produced}
        self.res.plan = replace(self.res.plan, ops=ops, inputs=model_inputs)
        return self.res

    # -- requests ------------------------------------------------------------------------
    def _setters(self) -> None:
        decided: set[str] = set()
        for setter in self.config.setters:
            self.res.requests.append(setter.to_dict())
            for target, precision, label in setter.requests():
                names = [n for n in self._match(target, label) if n not in decided]
                for name in names:
                    op = self.graph.ops[name]
                    full = Precision(
                        precision.activation or self.config.default.activation,
                        precision.weight or self.config.default.weight,
                    )
                    self.decisions[name] = self._decision(op, full, f"setter {label}", -1)
                decided.update(names)
                self.res.expanded.append({"rule": f"setter {label}", "ops": names})

    def _match(self, target: str, label: str) -> list[str]:
        names = match_ops(self.graph, target)
        if not names:
            close = suggest(self.graph, target)
            hint = f"; close matches: {close}" if close else ""
            message = (
                f"{label}: no op matches {target!r}{hint}. Run `mixq plan` (or "
                "sim.plan.table()) to list op names, modules and kinds"
            )
            if self.strict:
                raise ConfigError(message)
            self.res.notes.append(f"warning: {message}")
        return names

    def _apply(self, i: int, rule: Rule) -> None:
        if isinstance(rule, Request):
            self._request(i, rule)
        elif isinstance(rule, ModelIORequest):
            self._model_io(i, rule)
        else:
            self._precision_mode(i, rule)

    def _request(self, i: int, r: Request) -> None:
        label = f"rules[{i}] {r.target!r}"
        names = self._match(r.target, label)
        for name in names:
            d = self.decisions[name]
            # a dynamic precision is how a kernel reads its inputs; the outputs keep theirs
            dynamic = r.activation is not None and qtype(r.activation).dynamic
            act = d.act_out if dynamic else r.activation or d.act_out
            weight = {
                role: (r.params or {}).get(role) or r.weight or p for role, p in d.weight.items()
            }
            self.decisions[name] = _Decision(r.activation or d.act_in, act, weight, label, i)
        self.res.expanded.append({"rule": label, "ops": names})

    def _model_io(self, i: int, r: ModelIORequest) -> None:
        label = f"rules[{i}] model_{r.which}"
        tensors = self.graph.inputs if r.which == "input" else self.graph.outputs
        tensors = [t for t in tensors if self.graph.tensors[t].quantizable]
        if len(r.precisions) > len(tensors):
            raise ConfigError(
                f"{label} gives {len(r.precisions)} precisions but the model has "
                f"{len(tensors)} float {r.which}s: {tensors}"
            )
        touched = []
        root = aliases(self.graph)
        for t, p in zip(tensors, r.precisions, strict=False):
            if p is None:
                continue
            if r.which == "input":
                self.inputs[t] = p
            else:
                producer = self.graph.tensors[root[t]].producer
                if producer in self.decisions:
                    d = self.decisions[producer]
                    self.decisions[producer] = _Decision(d.act_in, p, d.weight, label, i)
            touched.append(t)
        self.res.expanded.append({"rule": label, "tensors": touched})

    def _precision_mode(self, i: int, r: PrecisionModeRequest) -> None:

        lists = _mixlists(r)
        names = [e for e in r.keep_dtype if not e.startswith("OpType::")]
        kinds = [
            ascend.kind_of_op_type(e[len("OpType::") :])
            for e in r.keep_dtype
            if e.startswith("OpType::")
        ]
        decisions = ascend.resolve_precision_mode(
            self.graph, r.mode, lists, names, kinds, r.modify_mixlist
        )
        for name, md in decisions.items():
            if name in self.decisions:
                weight = {role: md.weight for role in self.decisions[name].weight}
                label = f"rules[{i}] {md.reason}"
                self.decisions[name] = _Decision(md.input, md.output, weight, label, i)
        if r.modify_mixlist:
            _, notes = ascend.apply_modify_mixlist(lists, r.modify_mixlist)
            self.res.notes += [f"modify_mixlist: {n}" for n in notes]
        for unknown in ascend.unknown_keep_dtype_ops(self.graph, names):
            self.res.notes.append(f"warning: keep_dtype names {unknown!r}, not an op of the model")
        self.res.expanded.append(
            {"rule": f"rules[{i}] precision_mode {r.mode}", "ops": list(decisions)}
        )

    # -- propagation -------------------------------------------------------------------------
    def _unify_groups(self) -> None:
        seen: set[tuple[str, ...]] = set()
        for group in target_fusion_groups(self.graph, self.config.target).values():
            members = [n for n in group.ops if n in self.decisions]
            if len(members) < 2 or group.ops in seen:
                continue
            seen.add(group.ops)
            self._unify(group.anchor, members)

    def _unify(self, anchor: str, members: list[str]) -> None:
        ds = {n: self.decisions[n] for n in members}
        win = max(members, key=lambda n: (ds[n].order, n == anchor))
        explicit = {n: d for n, d in ds.items() if d.order >= 0 and d.order != ds[win].order}
        for n, d in explicit.items():
            if (d.act_in, d.act_out) != (ds[win].act_in, ds[win].act_out):
                message = (
                    f"{n} ({d.rule}) wants {d.act_out} activations but {win} "
                    f"({ds[win].rule}) wants {ds[win].act_out}; they are fused into one "
                    f"kernel ({', '.join(members)}) that runs at one precision"
                )
                if self.strict:
                    raise ConflictError(message)
                self.res.notes.append(f"adjusted: {message}; kept {ds[win].act_out}")
        for n in members:
            d = ds[n]
            rule = d.rule if n == win else f"group {anchor} ({ds[win].rule})"
            self.decisions[n] = _Decision(
                ds[win].act_in, ds[win].act_out, d.weight, rule, ds[win].order
            )

    def _runtime_placement(self) -> None:
        """Ops the target computes in float get no activation quantizers (step 4b).

        With a profile's ``integer_kernels`` (``ort-cpu``), a fusion group whose anchor has
        no integer kernel runs in fp32; a ``to_float`` anchor (MatMulIntegerToFloat) keeps
        its quantized inputs and gives a float output; ``qlinear`` anchors keep both. An
        explicit request still wins, except over the output of an op it asked to read its
        inputs dynamically (``uint8_dynamic``: ORT's quantize_dynamic form, float out). The
        quantizer a float-produced tensor needs then sits on the integer readers' edge (a
        conversion point, `mixq.plan.points`).
        """
        profile = load_target(self.config.target)
        if profile.integer_kernels is None:
            return
        groups = target_fusion_groups(self.graph, self.config.target)
        root = aliases(self.graph)
        for op in self.ops:  # topological order: producers are decided first
            d = self.decisions[op.name]
            if (d.order >= 0 and not qtype(d.act_in).dynamic) or is_data_movement(op.kind):
                continue
            group = groups.get(op.name)
            anchor = self.graph.ops[group.anchor] if group is not None else op
            style = self._kernel_style(profile.kernel(anchor.kind), anchor, root)
            if style == QLINEAR:
                continue
            act_in = d.act_in if style == TO_FLOAT and anchor.name == op.name else "fp32"
            weight = d.weight if style == TO_FLOAT else _stored_weights(anchor.kind, d.weight)
            where = "in float" if style is None else f"in integer with a float output ({style})"
            rule = f"{d.rule}; {profile.name} runs {anchor.kind} {where}"
            self.decisions[op.name] = _Decision(act_in, "fp32", weight, rule, d.order)

    def _input_scales(self) -> None:
        """An op that only scales a layer's input (`Graph.is_input_scale`) reads it as it
        was produced: its own output's quantizer is the layer's input quantizer, and a
        quantizer on its input edge would round the values the scale is there to reshape."""
        root = aliases(self.graph)
        for op in self.ops:
            if not self.graph.is_input_scale(op):
                continue
            (tensor,) = self.graph.float_inputs(op)
            producer = self.decisions.get(self.graph.tensors[root[tensor]].producer or "")
            d = self.decisions[op.name]
            if producer is not None and producer.act_out != d.act_in:
                rule = f"{d.rule}; scales a layer's input, reads it as produced"
                self.decisions[op.name] = replace(d, act_in=producer.act_out, rule=rule)

    def _kernel_style(self, style: str | None, anchor: Op, root: dict[str, str]) -> str | None:
        if style == QLINEAR_IF_QUANTIZED:
            return QLINEAR if self._inputs_quantized(anchor, root) else None
        if style == TO_FLOAT and writes_as_gemm(self.graph, anchor):
            return QLINEAR  # ORT fuses a Gemm only with a quantized output (QGemm)
        return style

    def _inputs_quantized(self, op: Op, root: dict[str, str]) -> bool:
        """Whether every float input of ``op`` is produced quantized (by its decision now)."""
        for t in self.graph.float_inputs(op):
            producer = self.graph.tensors[root[t]].producer
            if producer is None:
                if self.inputs.get(t, "fp32") == "fp32":
                    return False
                continue
            d = self.decisions.get(producer)
            if d is None or d.act_out == "fp32":
                return False
        return True

    def _op_plans(self) -> dict[str, OpPlan]:
        g = self.graph
        ops: dict[str, OpPlan] = {}
        for op in self.ops:
            d = self.decisions[op.name]
            ops[op.name] = OpPlan(
                op.name,
                op.kind,
                op.module,
                (d.act_in,) * len(g.float_inputs(op)),
                (d.act_out,) * len(g.float_outputs(op)),
                dict(d.weight),
                d.rule,
            )
        return ops

    def _inherit(self, ops: dict[str, OpPlan]) -> dict[str, OpPlan]:
        """Data-movement ops carry the precision their input was produced at, as the
        (target-checked) producers left it."""
        g = self.graph
        root = aliases(g)
        produced = tensor_precisions(g, ops, self.inputs)
        for op in self.ops:
            ins = g.float_inputs(op)
            if is_data_movement(op.kind) and ins:
                read = tuple(produced.get(root[t], "fp32") for t in ins)
                out = (read[0],) * len(g.float_outputs(op))
                ops[op.name] = OpPlan(
                    op.name, op.kind, op.module, read, out, {}, f"inherits {root[ins[0]]}"
                )
        return ops

    def _check_target(self, ops: dict[str, OpPlan]) -> dict[str, OpPlan]:
        profile = load_target(self.config.target)
        for name, op in ops.items():
            if is_data_movement(op.kind) and op.rule.startswith("inherits"):
                continue
            problems = profile.violations(op)
            if not problems:
                continue
            if self.strict:
                raise ConflictError(
                    problems[0] + " (strict mode; pass strict=False to let "
                    "mixq move it to the nearest supported precision)"
                )
            ops[name], notes = profile.repair(op)
            self.res.notes += [f"adjusted: {n}" for n in notes]
        return ops


def _mixlists(r: PrecisionModeRequest) -> MixLists:

    lists = ascend.default_mixlists()
    white, black, gray = set(lists.white), set(lists.black), set(lists.gray)
    for names, target in ((r.trust, white), (r.block, black), (r.gray, gray)):
        for name in names:
            kind = ascend.kind_of_op_type(name) if name[:1].isupper() else name
            for s in (white, black, gray):
                s.discard(kind)
            target.add(kind)
    return ascend.MixLists(frozenset(white), frozenset(black), frozenset(gray))


def resolve_with_report(graph: Graph, config: Config, strict: bool = True) -> Resolution:
    """Resolve and keep the record of how (see `mixq.rules.report`)."""
    return _Resolver(graph, config, strict).run()


def resolve(graph: Graph, config: Config, strict: bool = True) -> Plan:
    """The Plan for ``graph`` under ``config`` (see the module docstring for precedence)."""
    return resolve_with_report(graph, config, strict).plan


_GATHERED = ("int8", "uint8", "int16", "uint16")  # what ORT's Gather reads (not 4-bit)


def _stored_weights(kind: str, weights: dict[str, str]) -> dict[str, str]:
    """The weights of an op its target computes in float. A quantized weight there would be
    dequantized whole on every run (ONNX Runtime does not fold a DequantizeLinear into a
    LayerNorm or a Gather), buying size at a cost in time; except an embedding's 8- or 16-bit
    table, whose rows the export gathers before dequantizing them
    (`mixq.export.ort_gather.gather_quantized_rows`)."""
    if kind != "embedding":
        return {r: "fp32" for r in weights}
    widened = {"int4": "int8", "uint4": "uint8"}  # ORT gathers no 4-bit tensors
    return {r: widened.get(p, p if p in _GATHERED else "fp32") for r, p in weights.items()}
