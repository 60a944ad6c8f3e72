"""The search under a runtime's placement (issue 12 part 2): under ``ort-cpu`` the units ORT
computes in float are not searched, fp32 is an ordinary option of the others, and the cost
model counts a MatMulIntegerToFloat at its integer cost and float ops at fp32's."""

from __future__ import annotations

import pytest
import torch

import mixq
from mixq import zoo
from mixq.plan.cost import plan_cost
from mixq.rules.resolve import resolve
from mixq.search.engine import Evaluator, Trials
from mixq.search.sims import SimFactory
from mixq.search.space import Candidate, SearchSpace, parse_candidates

INT8, FP32 = Candidate("int8", "int8"), Candidate("fp32", "fp32")


@pytest.fixture(scope="module")
def bert_space():
    def make(target: str) -> SearchSpace:
        model, inputs = zoo.bert()
        factory = SimFactory(model, inputs, [inputs])
        base = resolve(factory.graph, mixq.Config(default="int8", target=target), strict=False)
        stats = factory.build(base).op_stats()
        space = SearchSpace(factory.graph, base, parse_candidates(["int8", "int16"]), stats)
        space.factory = factory  # type: ignore[attr-defined]
        return space

    return make


def test_float_units_are_fixed_and_integer_units_offer_fp32(bert_space):
    space = bert_space("ort-cpu")
    by_kind = {}
    for u in space.units.values():
        by_kind.setdefault(u.kind, []).append(u)
    for kind in ("layer_norm", "softmax", "gelu", "add"):
        assert all(u.fixed and u.options == [FP32] for u in by_kind[kind]), kind
    # a lookup table stays 8-bit (the export gathers its integer rows), computed in float
    assert all(u.fixed and u.options == [Candidate("fp32", "int8")] for u in by_kind["embedding"])
    for kind in ("linear", "matmul"):
        assert all(not u.fixed and u.style == "to_float" for u in by_kind[kind]), kind
        assert all(u.options[:2] == [INT8, FP32] for u in by_kind[kind]), kind  # fp32 < int16


def test_npu_target_searches_every_unit_and_adds_no_fp32(bert_space):
    space = bert_space("int8-int16-npu")
    assert all(FP32 not in u.options for u in space.free)
    assert any(u.kind == "layer_norm" for u in space.free)


def test_all_int8_plan_is_the_resolved_placement(bert_space):
    space = bert_space("ort-cpu")
    plan = space.plan(space.uniform(cand=INT8))
    for name, op in space.base.ops.items():
        assert (plan[name].input, plan[name].output) == (op.input, op.output), name


def test_a_linear_at_fp32_reads_float_and_the_others_keep_their_edge(bert_space):
    space = bert_space("ort-cpu")
    q = "encoder.layer.0.attention.self.query"
    plan = space.plan({**space.uniform(cand=INT8), q: FP32})
    assert plan[q].input == ("fp32",) and plan[q].weight == {"weight": "fp32"}
    assert plan["encoder.layer.0.attention.self.key"].input == ("int8",)
    mm = plan["encoder.layer.0.attention.self.matmul"]
    assert mm.input == ("int8", "int8") and mm.output == ("fp32",)


def test_cost_counts_to_float_ops_at_integer_cost_and_fp32_dearer(bert_space):
    space = bert_space("ort-cpu")
    trials = Trials(space, space.factory, Evaluator("cosine", []), 0.9, "latency")
    int8 = trials.plan(space.uniform(cand=INT8))[1]["latency"]
    fp32 = trials.plan(space.uniform(cand=FP32))[1]["latency"]
    q = "encoder.layer.0.attention.self.query"
    one = trials.plan({**space.uniform(cand=INT8), q: FP32})[1]["latency"]
    assert int8 < one < fp32
    assert space.move_cost(space.uniform(cand=INT8), q, FP32, "latency") > 0


DYN = Candidate("uint8_dynamic", "int8")


def test_dynamic_inputs_are_an_option_of_weighted_integer_linears_only(bert_space):
    """ORT's quantize_dynamic form (DynamicQuantizeLinear -> MatMulIntegerToFloat) is fast
    only where a linear's weight is constant: a matmul of two activations, or any unit
    computed in float, is not offered it."""
    space = bert_space("ort-cpu")
    model_space = SearchSpace(
        space.graph, space.base, parse_candidates(["int8", DYN, "fp32"]), space.stats
    )
    for u in model_space.units.values():
        weighted = any(space.graph.ops[n].weights for n in u.ops)
        offered = DYN in u.options
        assert offered == (weighted and u.style == "to_float" and u.kind == "linear"), u.name
    q = "encoder.layer.0.attention.self.query"
    assert model_space.units[q].options == [INT8, DYN, FP32]  # by cost: the range pass
    plan = model_space.plan({**model_space.uniform(cand=INT8), q: DYN})
    assert plan[q].input == ("uint8_dynamic",) and plan[q].output == ("fp32",)
    assert plan["encoder.layer.0.attention.self.key"].input == ("int8",)
    trials = Trials(model_space, space.factory, Evaluator("cosine", []), 0.9, "latency")
    costs = [trials.plan({**model_space.uniform(cand=INT8), q: c})[1]["latency"]
             for c in (INT8, DYN, FP32)]  # fmt: skip
    assert costs[0] < costs[1] < costs[2]


def test_a_unit_reading_a_kept_float_tensor_reads_it_at_its_own_choice():
    """Full-integer target, GELU kept in float: the linear after it quantizes its input on
    its own edge, in a searched plan as in the resolved one (before, the search's plan had
    it read float, so its cost counted a float x int8 product the config did not ask for)."""
    model, inputs = zoo.bert()
    factory = SimFactory(model, inputs, [inputs])
    config = mixq.Config(default="int8", target="generic").set_precision("kind:gelu", "fp32")
    base = resolve(factory.graph, config, strict=False)
    space = SearchSpace(factory.graph, base, parse_candidates(["int8", "int16"]), {},
                        keep=["kind:gelu"])  # fmt: skip
    plan = space.plan(space.uniform(cand=INT8))
    gelus = [n for n, op in base.ops.items() if op.kind == "gelu"]
    graph = factory.graph
    readers = [c.name for g in gelus for t in graph.ops[g].outputs for c in graph.consumers(t)]
    assert gelus and readers
    for name in readers:
        assert plan[name].input == base.ops[name].input == ("int8",), name
    ffn2 = space.unit_of[readers[0]]
    wide = space.plan({**space.uniform(cand=INT8), ffn2: Candidate("int16", "int16")})
    assert wide[readers[0]].input == ("int16",)
    assert wide[gelus[0]].output == ("fp32",)


def test_an_outlier_side_path_keeps_8_bit_weights_among_int4_candidates():
    """The side path carries its few channels' whole range for a few MACs: int4 there
    costs the split's gain and saves next to nothing, so the search does not offer it."""
    from mixq.transforms import apply_transforms
    from tests.transforms.test_outliers import _Ffn

    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 16, 16, generator=g) for _ in range(4)]
    result = apply_transforms(_Ffn().eval(), calib[0], ["split_outliers"], calib=calib)
    assert result.records[0].layers  # the split happened
    factory = SimFactory(result.model, calib[0], calib)
    base = resolve(factory.graph, mixq.Config(default="int8", target="generic"), strict=False)
    candidates = parse_candidates([("int8", "int4"), "int8", ("int16", "int4")])
    space = SearchSpace(factory.graph, base, candidates, {})
    side = [u for u in space.units.values() if any("outlier_path" in n for n in u.ops)]
    main = [u for u in space.units.values() if u.kind == "linear" and u not in side]
    assert side and main
    assert all(c.weight == "int8" for u in side for c in u.options)
    assert all(Candidate("int8", "int4") in u.options for u in main)


def test_a_residual_unit_after_a_kept_float_tensor_may_multiply_narrower():
    """Full-integer target, GELU kept in float: the FFN output projection and the residual
    add after it are one unit, whose quantizer on the GELU edge is its own. The search may
    give that multiply int8 inputs while the residual stream stays int16 (before, the unit's
    16-bit choice made it an int16 x int8 product: real MiniLM, 72.3 -> 65.3 bits per MAC in
    the file, held-out cosine 0.9978 -> 0.9976). Units with no residual add get no such option."""
    model, inputs = zoo.bert()
    factory = SimFactory(model, inputs, [inputs])
    config = mixq.Config(default="int8", target="generic").set_precision("kind:gelu", "fp32")
    base = resolve(factory.graph, config, strict=False)
    stats = factory.build(base).op_stats()
    space = SearchSpace(factory.graph, base, parse_candidates(["int8", "int16"]), stats,
                        keep=["kind:gelu"])  # fmt: skip
    narrow = Candidate("int16", "int16", "int8")
    graph = factory.graph
    gelus = [n for n, op in base.ops.items() if op.kind == "gelu"]
    ffn2 = {space.unit_of[c.name] for g in gelus for t in graph.ops[g].outputs
            for c in graph.consumers(t)}  # fmt: skip
    assert ffn2 and all(narrow in space.units[u].options for u in ffn2)
    others = [u for u in space.free if u.name not in ffn2]
    assert others and all(c.input is None for u in others for c in u.options)
    unit = next(iter(sorted(ffn2)))
    members = space.units[unit].ops
    add = next(n for n in members if graph.ops[n].kind == "add")
    plan = space.plan({**space.uniform(cand=INT8), unit: narrow})
    assert plan[unit].input == ("int8",) and plan[unit].output == ("int16",)
    assert plan[add].output == ("int16",)
    assert space.plan(space.uniform(cand=Candidate("int16", "int16")))[unit].input == ("int16",)
    macs = stats[unit].macs
    wide = space.plan({**space.uniform(cand=INT8), unit: Candidate("int16", "int16")})
    bops = [plan_cost(graph, p, stats).bops for p in (plan, wide)]
    assert bops[0] - bops[1] == pytest.approx(macs * (8 - 16) * 16)
    assert (
        space.unit_cost(space.units[unit], narrow)[1]
        < space.unit_cost(space.units[unit], Candidate("int16", "int16"))[1]
    )
    assert parse_candidates([str(narrow)]) == [narrow]  # a search's history keeps it as text


def test_a_read_precision_is_not_a_candidate_users_give(mlp_model):
    """The '@' form is the search's own option on residual units; given for every unit it
    would change what each multiply reads everywhere, so the search refuses it up front."""
    model, inputs, calib = mlp_model
    with pytest.raises(mixq.ConfigError, match=r"int16/int4@int8.*\('int16', 'int4'\)"):
        mixq.search(model, inputs, calib=calib, candidates=["int8", "int16/int4@int8"],
                    progress=False)  # fmt: skip
