"""Ascend ATC precision modes, mixed-precision lists and keep_dtype over a mixq Graph."""

from __future__ import annotations

import pytest

from mixq.core.errors import ConfigError
from mixq.graph.ir import Graph, Op
from mixq.rules.ascend import (
    ASCEND_MODES,
    MixLists,
    apply_modify_mixlist,
    canonical_mode,
    default_mixlists,
    resolve_precision_mode,
    unknown_keep_dtype_ops,
)
from mixq.rules.atc_files import (
    ASCEND_OP_TYPES,
    format_keep_dtype,
    format_modify_mixlist,
    kind_of_op_type,
    op_type_of_kind,
    parse_keep_dtype,
    parse_modify_mixlist,
)

WEIGHTED = {"linear", "matmul", "conv"}


def _graph(*ops: tuple[str, str, list[str]]) -> Graph:
    """Ops as (name, kind, inputs) reading model input ``x``; every tensor quantizable."""
    g = Graph()
    g.add_input("x", "float32")
    for name, kind, inputs in ops:
        weights = {"weight": f"{name}.weight"} if kind in WEIGHTED else {}
        g.add_op(Op(name, kind, name, inputs=inputs, outputs=[name], weights=weights))
    g.outputs = [ops[-1][0]]
    for t in g.tensors.values():
        t.quantizable = True
    return g


def _block() -> Graph:
    """x -> fc -> act -> res(+x) -> sm -> mm(sm, fc) -> ln."""
    return _graph(
        ("fc", "linear", ["x"]),
        ("act", "gelu", ["fc"]),
        ("res", "add", ["act", "x"]),
        ("sm", "softmax", ["res"]),
        ("mm", "matmul", ["sm", "fc"]),
        ("ln", "layer_norm", ["mm"]),
    )


def _dtypes(graph: Graph, mode: str, **kwargs) -> dict[str, tuple[str, str, str]]:
    plan = resolve_precision_mode(graph, mode, **kwargs)
    return {name: (d.input, d.output, d.weight) for name, d in plan.items()}


F16, F32, B16 = ("fp16",) * 3, ("fp32",) * 3, ("bf16",) * 3
CUBE_16_32 = ("fp16", "fp32", "fp16")
EXPECTED = {
    "force_fp16": dict(fc=F16, act=F16, res=F16, sm=F16, mm=F16, ln=F16),
    "force_fp32": dict(fc=CUBE_16_32, act=F32, res=F32, sm=F32, mm=CUBE_16_32, ln=F32),
    "must_keep_origin_dtype": dict(fc=F32, act=F32, res=F32, sm=F32, mm=F32, ln=F32),
    "allow_fp32_to_fp16": dict(fc=F16, act=F32, res=F32, sm=F32, mm=F16, ln=F32),
    "allow_fp32_to_bf16": dict(fc=B16, act=F32, res=F32, sm=F32, mm=B16, ln=F32),
    "mix_fp16": dict(fc=F16, act=F16, res=F16, sm=F32, mm=F16, ln=F32),
    "mix_bf16": dict(fc=B16, act=B16, res=B16, sm=F32, mm=B16, ln=F32),
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_every_mode_gives_the_documented_dtypes(mode):
    assert _dtypes(_block(), mode) == EXPECTED[mode]


@pytest.mark.parametrize("name", sorted(ASCEND_MODES))
def test_every_v1_and_v2_name_decides_like_its_canonical_mode(name):
    assert _dtypes(_block(), name) == EXPECTED[canonical_mode(name)]
    plan = resolve_precision_mode(_block(), name)
    assert all(d.reason.startswith(f"precision_mode {name}: ") for d in plan.values())


@pytest.mark.parametrize(
    ("v1", "v2"),
    [
        ("force_fp16", "fp16"),
        ("force_fp32", "cube_fp16in_fp32out"),
        ("must_keep_origin_dtype", "origin"),
        ("allow_mix_precision", "mixed_float16"),
        ("allow_mix_precision_fp16", "mixed_float16"),
        ("allow_mix_precision_bf16", "mixed_bfloat16"),
    ],
)
def test_v1_and_v2_aliases_agree(v1, v2):
    assert canonical_mode(v1) == canonical_mode(v2)
    assert _dtypes(_block(), v1) == _dtypes(_block(), v2)


def test_reasons_name_the_mode_and_the_list():
    plan = resolve_precision_mode(_block(), "mixed_float16")
    assert plan["mm"].reason == "precision_mode mixed_float16: white (matmul)"
    assert plan["sm"].reason == "precision_mode mixed_float16: black (softmax)"
    assert plan["act"].reason == "precision_mode mixed_float16: gray (gelu) follows fc"
    assert plan["res"].reason == "precision_mode mixed_float16: gray (add) follows act"


def test_gray_chain_follows_a_white_op():
    g = _graph(
        ("fc", "linear", ["x"]),
        ("relu", "relu", ["fc"]),
        ("view", "reshape", ["relu"]),
        ("t", "transpose", ["view"]),
    )
    plan = resolve_precision_mode(g, "mixed_bfloat16")
    assert {n: d.output for n, d in plan.items()} == dict(
        fc="bf16", relu="bf16", view="bf16", t="bf16"
    )
    assert plan["t"].reason.endswith("gray (transpose) follows view")


def test_gray_chain_after_a_black_op_stays_fp32():
    g = _graph(
        ("sm", "softmax", ["x"]),
        ("relu", "relu", ["sm"]),
        ("view", "reshape", ["relu"]),
        ("add", "add", ["view", "x"]),
        ("fc", "linear", ["add"]),
    )
    out = {n: d.output for n, d in resolve_precision_mode(g, "mixed_float16").items()}
    assert out == dict(sm="fp32", relu="fp32", view="fp32", add="fp32", fc="fp16")


def test_gray_op_reading_only_model_inputs_keeps_fp32():
    plan = resolve_precision_mode(_graph(("relu", "relu", ["x"])), "mixed_float16")
    assert plan["relu"].output == "fp32" and "no upstream op" in plan["relu"].reason


def test_gray_op_jumps_over_a_cast():
    g = _graph(("fc", "linear", ["x"]), ("cast", "cast", ["fc"]), ("relu", "relu", ["cast"]))
    # the cast is kept fp32, but the relu still follows the linear behind it
    plan = resolve_precision_mode(g, "mixed_float16", keep_dtype_ops=["cast"])
    assert plan["cast"].output == "fp32"
    assert plan["relu"].output == "fp16" and plan["relu"].reason.endswith("follows fc")


def test_black_cast_is_not_jumped_over():
    g = _graph(("fc", "linear", ["x"]), ("cast", "cast", ["fc"]), ("relu", "relu", ["cast"]))
    edits = {"black-list": {"to-add": ["Cast"]}}
    plan = resolve_precision_mode(g, "mixed_float16", mixlist_edits=edits)
    assert plan["relu"].output == "fp32" and plan["relu"].reason.endswith("follows cast")


def test_ops_without_float_tensors_get_no_decision():
    g = Graph()
    g.add_input("x", "float32")
    g.add_input("ids", "int64")
    g.add_op(Op("shape", "size", inputs=["ids"], outputs=["n"]), dtypes={"n": "int64"})
    g.add_op(Op("relu", "relu", inputs=["x"], outputs=["y"]))
    assert set(resolve_precision_mode(g, "fp16")) == {"relu"}


def test_keep_dtype_by_op_name_forces_fp32():
    plan = resolve_precision_mode(_block(), "force_fp16", keep_dtype_ops=["act"])
    assert (plan["act"].input, plan["act"].output) == ("fp32", "fp32")
    assert plan["act"].reason == "precision_mode force_fp16: keep_dtype act"
    assert plan["res"].output == "fp16"


def test_keep_dtype_by_op_type_forces_fp32_on_every_op_of_that_kind():
    _, kinds = parse_keep_dtype("OpType::MatMulV2\n")
    out = _dtypes(_block(), "cube_fp16in_fp32out", keep_dtype_kinds=kinds)
    assert out["mm"] == F32 and out["fc"] == CUBE_16_32
    plan = resolve_precision_mode(_block(), "fp16", keep_dtype_kinds=["softmax"])
    assert plan["sm"].output == "fp32"
    assert plan["sm"].reason == "precision_mode fp16: keep_dtype OpType::SoftmaxV2"


def test_keep_dtype_on_a_white_op_carries_into_its_gray_followers():
    out = _dtypes(_block(), "mixed_float16", keep_dtype_ops=["fc"])
    assert out["fc"] == F32 and out["act"] == F32 and out["res"] == F32 and out["mm"] == F16


def test_keep_dtype_is_ignored_under_origin():
    plan = resolve_precision_mode(
        _block(), "origin", keep_dtype_ops=["act"], keep_dtype_kinds=["softmax"]
    )
    assert all(d.output == "fp32" for d in plan.values())
    assert "keep_dtype act ignored" in plan["act"].reason
    assert "keep_dtype OpType::SoftmaxV2 ignored" in plan["sm"].reason
    assert "ignored" not in plan["fc"].reason


def test_modify_mixlist_add_white_and_remove_black_change_decisions():
    edits = parse_modify_mixlist(
        '{"white-list": {"to-add": ["SoftmaxV2"]},'
        ' "black-list": {"to-remove": ["SoftmaxV2", "LayerNorm"], "to-add": ["Gelu"]}}'
    )
    plan = resolve_precision_mode(_block(), "allow_mix_precision", mixlist_edits=edits)
    out = {n: d.output for n, d in plan.items()}
    assert out == dict(fc="fp16", act="fp32", res="fp32", sm="fp16", mm="fp16", ln="fp16")
    assert plan["sm"].reason.endswith("white (softmax)")
    assert plan["ln"].reason.endswith("gray (layer_norm) follows mm")


def test_modify_mixlist_outside_mix_modes_is_an_error():
    edits = {"white-list": {"to-add": ["Gelu"]}}
    with pytest.raises(ConfigError, match=r"needs allow_mix_precision\* / mixed_\*.*'fp16'"):
        resolve_precision_mode(_block(), "fp16", mixlist_edits=edits)


def test_same_op_added_to_black_and_white_is_rejected():
    text = '{"black-list": {"to-add": ["MatMul"]}, "white-list": {"to-add": ["MatMul"]}}'
    with pytest.raises(ConfigError, match=r"MatMul.*black-list to-add \+ white-list to-add"):
        parse_modify_mixlist(text)


@pytest.mark.parametrize(
    "edits",
    [
        {"gray-list": {"to-remove": ["Relu"]}},
        {"black-list": {"to-remove": ["Relu"]}, "white-list": {"to-remove": ["Relu"]}},
        {"white-list": {"to-add": ["Relu"], "to-remove": ["Relu"]}},
    ],
)
def test_other_invalid_combinations_are_rejected(edits):
    with pytest.raises(ConfigError, match="operation on Relu is invalid"):
        format_modify_mixlist(edits)


def test_combinations_atc_accepts_are_accepted():
    edits = {
        "white-list": {"to-add": ["Relu"], "to-remove": ["Exp"]},
        "gray-list": {"to-add": ["Exp"], "to-remove": ["Relu"]},
        "black-list": {"to-add": ["Tanh"], "to-remove": ["Log"]},
    }
    assert parse_modify_mixlist(format_modify_mixlist(edits)) == edits


def test_op_types_of_one_kind_may_not_conflict():
    edits = {"black-list": {"to-add": ["MatMul"]}, "white-list": {"to-add": ["BatchMatMul"]}}
    with pytest.raises(ConfigError, match=r"matmul \(MatMul, BatchMatMul\) is invalid"):
        apply_modify_mixlist(default_mixlists(), edits)


def test_json_comments_are_rejected():
    text = '{\n  // lower MatMul\n  "white-list": {"to-add": ["MatMul"]}\n}'
    with pytest.raises(ConfigError, match="strict JSON, no // comments"):
        parse_modify_mixlist(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"grey-list": {"to-add": ["Relu"]}}', "key 'grey-list' is unknown"),
        ('{"white-list": {"add": ["Relu"]}}', "to-add / to-remove"),
        ('{"white-list": {"to-add": "Relu"}}', "list of OpType strings"),
        ('{"white-list": {"to-add": ["enc/fc/MatMul"]}}', "not node names"),
        ('["Relu"]', "JSON object"),
    ],
)
def test_malformed_modify_mixlist_is_rejected(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_modify_mixlist(text)


def test_apply_notes_removal_from_a_list_the_op_is_not_on():
    lists, notes = apply_modify_mixlist(
        default_mixlists(), {"white-list": {"to-remove": ["SoftmaxV2"]}}
    )
    assert lists.policy("softmax") == "black"
    assert notes == [
        "softmax (SoftmaxV2): to-remove names the white-list, but it is black; not removed"
    ]


def test_apply_add_gray_alone_changes_nothing():
    lists, notes = apply_modify_mixlist(default_mixlists(), {"gray-list": {"to-add": ["MatMul"]}})
    assert lists.policy("matmul") == "white"
    assert len(notes) == 1 and "changes nothing" in notes[0]


def test_apply_remove_then_add_gray_makes_gray():
    edits = {"white-list": {"to-remove": ["Conv2D"]}, "gray-list": {"to-add": ["Conv2D"]}}
    lists, notes = apply_modify_mixlist(default_mixlists(), edits)
    assert lists.policy("conv") == "gray" and notes == []
    assert "conv" not in lists.white and "conv" in lists.gray


def test_parse_keep_dtype():
    text = "fp32_vars/Relu\n\n  OpType::Relu  \nblock/OpType::Gelu\n# not a comment\nOpType::Foo\n"
    names, kinds = parse_keep_dtype(text)
    assert names == ["fp32_vars/Relu", "block/OpType::Gelu", "# not a comment"]
    assert kinds == ["relu", "foo"]


@pytest.mark.parametrize("bad", ["OpType::relu", "OpType::", "OpType::Soft_max"])
def test_keep_dtype_bad_type_names_the_line(bad):
    with pytest.raises(ConfigError, match="keep_dtype line 3"):
        parse_keep_dtype(f"a\n\n{bad}\n")


def test_keep_dtype_round_trip_writes_every_op_type_of_a_kind():
    names, kinds = ["enc/fc", "# x"], ["matmul", "layer_norm", "erf"]
    text = format_keep_dtype(names, kinds)
    assert "OpType::MatMul\nOpType::MatMulV2\nOpType::BatchMatMul\n" in text
    assert parse_keep_dtype(text) == (names, kinds)


@pytest.mark.parametrize("name", ["OpType::Relu", " padded", "two\nlines", ""])
def test_format_keep_dtype_refuses_names_it_cannot_round_trip(name):
    with pytest.raises(ConfigError, match="cannot be written"):
        format_keep_dtype([name], [])


def test_modify_mixlist_round_trip():
    edits = {
        "black-list": {"to-add": ["MatMul"], "to-remove": ["Xlog1py"]},
        "white-list": {"to-add": ["Bias"], "to-remove": ["Conv2D"]},
        "gray-list": {"to-add": ["Cast"]},
    }
    assert parse_modify_mixlist(format_modify_mixlist(edits)) == edits


def test_unknown_keep_dtype_ops_are_reported_not_raised():
    names, _ = parse_keep_dtype("act\n# comment\nmissing/op\n")
    assert unknown_keep_dtype_ops(_block(), names) == ["# comment", "missing/op"]
    assert resolve_precision_mode(_block(), "fp16", keep_dtype_ops=names)["act"].output == "fp32"


@pytest.mark.parametrize("name", ["cube_hif8", "mixed_hif8"])
def test_hif8_modes_are_rejected(name):
    with pytest.raises(ConfigError, match="Ascend 950"):
        canonical_mode(name)


@pytest.mark.parametrize(
    ("typo", "closest"),
    [("allow_mix_precison", "allow_mix_precision"), ("mixed_float32", "mixed_float16")],
)
def test_unknown_mode_suggests_the_closest(typo, closest):
    with pytest.raises(ConfigError, match=f"did you mean '{closest}'.*Valid: force_fp16"):
        resolve_precision_mode(_block(), typo)


def test_op_type_table_round_trips_and_unknown_types_lower_case():
    assert kind_of_op_type("Conv2D") == "conv" and kind_of_op_type("FullyConnection") == "linear"
    assert kind_of_op_type("Foo") == "foo" and op_type_of_kind("foo") == "Foo"
    for kind in set(ASCEND_OP_TYPES.values()):
        assert kind_of_op_type(op_type_of_kind(kind)) == kind


def test_default_lists_follow_autocast():
    lists = default_mixlists()
    assert lists.white == {"conv", "conv_transpose", "linear", "matmul", "attention"}
    assert {lists.policy(k) for k in ("softmax", "layer_norm", "exp", "sum")} == {"black"}
    assert lists.policy("batch_norm") == lists.policy("gelu") == "gray"


def test_a_kind_on_two_lists_is_an_error():
    with pytest.raises(ConfigError, match=r"\['relu'\] are on both the white and black"):
        MixLists(white=frozenset({"relu"}), black=frozenset({"relu"}))
