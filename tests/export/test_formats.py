"""Vendor formats: write -> read round trips on real sims, file contents, refusals, convert."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import yaml

import mixq
from mixq.export.formats import (
    FORMATS,
    VendorData,
    convert,
    read_format,
    read_profile,
    register_format,
    write_format,
    write_profile,
)
from mixq.plan.encodings import Encoding, Encodings
from mixq.plan.plan import OpPlan, Plan
from mixq.rules.config import Scheme

ENCODING_FORMATS = ["aimet-0.6.1", "aimet-1.0.0"]
ORT_KEYS = {
    "TensorQuantOverrides",
    "nodes_to_quantize",
    "nodes_to_exclude",
    "op_types_to_quantize",
    "per_channel",
    "activation_type",
    "weight_type",
}


def _sim(model_fixture, config):
    model, inputs, calib = model_fixture
    return mixq.quantize(model, inputs, config).calibrate(calib, progress=False)


def _mixed_config() -> mixq.Config:
    return (
        mixq.Config(default=("int8", "int8"))
        .set_precision("block.conv1", activation="int16")
        .set_precision("fc", activation="fp16")
        .set_precision("stem.0", weight="int4")
    )


@pytest.fixture(scope="module")
def cnn_mixed(cnn_model):
    """int16 block, fp16 fc, int4 stem weight, per-channel weights, one conversion."""
    return _sim(cnn_model, _mixed_config())


@pytest.fixture(scope="module")
def cnn_islands(cnn_model):
    """The mixed config plus an fp32 island (down.0 and its fused bn / relu)."""
    return _sim(cnn_model, _mixed_config().set_precision("down.0", "fp32", "fp32"))


@pytest.fixture(scope="module")
def cnn_float(cnn_model):
    """A float deployment: fp16 everywhere, fp32 island on down.0 and fc."""
    config = mixq.Config(default=("fp16", "fp16"))
    config.set_precision("down.0", "fp32", "fp32").set_precision("fc", "fp32", "fp32")
    return _sim(cnn_model, config)


@pytest.fixture(scope="module")
def bert_blocks(bert_model):
    """Per-block int8 weights, fp16 softmax, fp32 layer norms, an int16 output dense."""
    scheme = Scheme(weight_granularity="per_block", weight_block_size=8)
    config = mixq.Config(default=("int8", "int8"), scheme=scheme)
    config.set_precision("kind:softmax", activation="fp16")
    config.set_precision("kind:layer_norm", activation="fp32", weight="fp32")
    config.set_precision("encoder.layer.0.output.dense", activation="int16")
    return _sim(bert_model, config)


def _write_read(tmp_path, fmt, sim, name="out"):
    path = write_format(tmp_path / name, fmt, sim.plan, sim.encodings(), sim.graph)
    return path, read_format(path, fmt)


def _outputs(plan: Plan) -> dict[str, tuple[str, ...]]:
    return {op.name: op.output for op in plan}


def _float_ops(plan: Plan) -> dict[str, str]:
    return {
        op.name: op.output[0] for op in plan if op.output and op.output[0].startswith(("fp", "bf"))
    }


def _resolve(model_fixture, data: VendorData, default) -> Plan:
    model, inputs, _ = model_fixture
    return mixq.quantize(model, inputs, data.to_config(mixq.Config(default=default))).plan


# -- registry ------------------------------------------------------------------------------


def test_format_names_are_the_public_ones():
    assert set(FORMATS) == {
        "aimet-0.6.1",
        "aimet-1.0.0",
        "qaic-npi",
        "qaic-profile",
        "ascend-keep-dtype",
        "ascend-mixlist",
        "ascend-customize-dtypes",
        "ort-overrides",
    }
    assert all(f.description and f.suffix.startswith(".") for f in FORMATS.values())


def test_unknown_format_lists_the_formats(tmp_path, cnn_mixed):
    with pytest.raises(ValueError, match=r"did you mean 'qaic-npi'.*aimet-0\.6\.1"):
        write_format(tmp_path / "x", "qaic-np", cnn_mixed.plan, None, cnn_mixed.graph)
    assert not (tmp_path / "x").exists()


def test_a_format_name_registers_once():
    with pytest.raises(ValueError, match="already registered"):
        register_format("qaic-npi")(type("Again", (), {}))


def test_a_missing_input_is_named(tmp_path, cnn_mixed):
    with pytest.raises(ValueError, match="needs encodings"):
        write_format(tmp_path / "a.json", "aimet-1.0.0", cnn_mixed.plan)
    with pytest.raises(ValueError, match="needs graph"):
        write_format(tmp_path / "n.yaml", "qaic-npi", cnn_mixed.plan)


# -- encodings formats: exact round trips ----------------------------------------------------


@pytest.mark.parametrize("fmt", ENCODING_FORMATS)
def test_aimet_round_trip_is_exact(tmp_path, fmt, cnn_mixed):
    enc = cnn_mixed.encodings()
    kinds = {(e.precision, e.axis is not None, bool(e.readers)) for e in enc}
    assert {("int4", True, False), ("int16", False, False), ("fp16", False, False)} <= kinds
    assert ("int8", False, True) in kinds  # the block.relu@int8 conversion
    _, data = _write_read(tmp_path, fmt, cnn_mixed)
    assert data.encodings == enc
    assert data.precisions == {} and data.notes == []


def test_aimet_1_0_0_round_trips_per_block_weights(tmp_path, bert_blocks):
    enc = bert_blocks.encodings()
    assert any(e.block_size == 8 for e in enc)
    path, data = _write_read(tmp_path, "aimet-1.0.0", bert_blocks)
    assert data.encodings == enc
    params = json.loads(path.read_text())["param_encodings"]
    word = next(p for p in params if p["name"] == "embeddings.word_embeddings.weight")
    assert (word["enc_type"], word["block_size"], word["is_sym"]) == ("PER_BLOCK", 8, True)
    assert len(word["scale"]) == len(word["offset"]) == len(enc[word["name"]].scale or [])


@pytest.mark.parametrize("fmt", ENCODING_FORMATS)
def test_aimet_keeps_bf16_apart_from_fp16(tmp_path, fmt, cnn_model):
    sim = _sim(cnn_model, _mixed_config().set_precision("fc", activation="bf16"))
    path, data = _write_read(tmp_path, fmt, sim)
    assert data.encodings == sim.encodings()
    assert data.encodings["fc"].precision == "bf16"
    raw = json.loads(path.read_text())
    raw.pop("mixq")
    (tmp_path / "plain").write_text(json.dumps(raw))
    plain = read_format(tmp_path / "plain", fmt)
    assert plain.encodings is not None and plain.encodings["fc"].precision == "fp16"
    assert "no mixq section" in plain.notes[0]


def test_aimet_0_6_1_file_content_by_hand(tmp_path):
    enc = Encodings(
        {
            "a": Encoding("a", "a", "activation", "int8", [0.0185], [-14], min=-2.1, max=2.6),
            "u": Encoding("u", "u", "activation", "uint8", [0.5], [114], min=-57.0, max=70.5),
            "h": Encoding("h", "h", "activation", "fp16"),
            "a@int4": Encoding("a@int4", "a", "activation", "int4", [0.25], [1], readers=["r"]),
            "w": Encoding("w", "w", "weight", "int8", [0.1, 0.2], [0, 0], axis=0, symmetric=True),
        }
    )
    path = write_format(tmp_path / "e.encodings", "aimet-0.6.1", encodings=enc)
    data = json.loads(path.read_text())
    acts, params = data["activation_encodings"], data["param_encodings"]
    assert data["version"] == "0.6.1"
    # unsigned grid: offset = -zero_point (uint8), -(zero_point + 128) (int8) = round(min/scale)
    assert acts["u"] == [
        {"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": -57.0,
         "max": 70.5, "scale": 0.5, "offset": -114}
    ]  # fmt: skip
    assert acts["a"][0]["offset"] == -114 and acts["a"][0]["is_symmetric"] == "False"
    assert acts["a"][0]["min"] == -114 * 0.0185
    assert acts["h"] == [{"bitwidth": 16, "dtype": "float"}]
    assert acts["a@int4"][0]["offset"] == -9 and acts["a@int4"][0]["bitwidth"] == 4
    assert [(d["offset"], d["is_symmetric"]) for d in params["w"]] == [(-128, "True")] * 2
    # what AIMET cannot say: signedness, readers, and no calibrated range (the file has the grid's)
    side = {"precision": "int4", "readers": ["r"], "min": None, "max": None}
    assert data["mixq"]["points"]["a@int4"] == side
    assert read_format(path).encodings == enc


def test_aimet_1_0_0_file_content_by_hand(tmp_path):
    enc = Encodings(
        {
            "w": Encoding("w", "w", "weight", "int4", [0.1, 0.2], [0, 0], axis=0, symmetric=True),
            "h": Encoding("h", "h", "activation", "fp16"),
        }
    )
    data = json.loads(write_format(tmp_path / "e", "aimet-1.0.0", encodings=enc).read_text())
    assert data["param_encodings"] == [
        {"name": "w", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 4, "is_sym": True,
         "scale": [0.1, 0.2], "offset": [-8, -8]}
    ]  # fmt: skip
    assert data["activation_encodings"] == [
        {"name": "h", "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": 16}
    ]


def test_an_aimet_file_without_mixq_section_reads_with_aimet_conventions(tmp_path):
    text = json.dumps(
        {
            "version": "0.6.1",
            "activation_encodings": {
                "20": [
                    {"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": -2.109,
                     "max": 2.609, "scale": 0.0185, "offset": -114}
                ],
                "fp": [{"bitwidth": 32, "dtype": "float"}],
            },
            "param_encodings": {
                "conv.weight": [
                    {"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "min": -1.28,
                     "max": 1.27, "scale": 0.01, "offset": -128},
                    {"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "min": -2.56,
                     "max": 2.54, "scale": 0.02, "offset": -128},
                ]
            },
        }
    )  # fmt: skip
    (tmp_path / "qnn.encodings").write_text(text)
    data = read_format(tmp_path / "qnn.encodings")
    assert data.encodings is not None
    act, weight = data.encodings["20"], data.encodings["conv.weight"]
    assert (act.precision, act.zero_point, act.min, act.max) == ("uint8", [114], -2.109, 2.609)
    assert (weight.precision, weight.zero_point, weight.axis) == ("int8", [0, 0], 0)
    assert (weight.min, weight.max, weight.symmetric) == (-2.56, 2.54, True)
    assert data.precisions == {"tensor:fp": "fp32"}  # a 32-bit float entry is a float island


@pytest.mark.parametrize("fmt", ENCODING_FORMATS)
def test_aimet_writes_fp32_islands_as_32_bit_float_entries(tmp_path, fmt, cnn_islands, cnn_model):
    _, data = _write_read(tmp_path, fmt, cnn_islands)
    assert data.encodings == cnn_islands.encodings()
    islands = {"tensor:down.0": "fp32", "tensor:down.1": "fp32", "tensor:down.2": "fp32"}
    assert data.precisions == islands
    plan = _resolve(cnn_model, data, ("int8", "int8"))
    assert _float_ops(plan) == {
        n: p for n, p in _float_ops(cnn_islands.plan).items() if p == "fp32"
    }


# -- list formats: precisions of every op survive -----------------------------------------


LIST_CASES = [
    ("qaic-npi", "cnn_islands", "cnn_model", ("int8", "int8")),
    ("ascend-keep-dtype", "cnn_float", "cnn_model", ("fp16", "fp16")),
    ("ascend-keep-dtype", "bert_blocks", "bert_model", None),
    ("ascend-mixlist", "bert_blocks", "bert_model", ("int8", "int8")),
    ("ascend-customize-dtypes", "cnn_islands", "cnn_model", ("int8", "int8")),
    ("ascend-customize-dtypes", "bert_blocks", "bert_model", ("int8", "int8")),
]


@pytest.mark.parametrize(("fmt", "sim_name", "model_name", "default"), LIST_CASES)
def test_list_formats_keep_every_float_op(tmp_path, request, fmt, sim_name, model_name, default):
    sim = request.getfixturevalue(sim_name)
    model_fixture = request.getfixturevalue(model_name)
    _, data = _write_read(tmp_path, fmt, sim)
    if default is None:  # keep_dtype holds fp32 only: compare the fp32 ops
        plan = _resolve(model_fixture, data, ("int8", "int8"))
        expected = {n: p for n, p in _float_ops(sim.plan).items() if p == "fp32"}
        assert {n: p for n, p in _float_ops(plan).items() if p == "fp32"} == expected
        return
    plan = _resolve(model_fixture, data, default)
    assert _float_ops(plan) == _float_ops(sim.plan)
    assert _float_ops(sim.plan)  # the case has float ops to lose
    if fmt in ("ascend-customize-dtypes", "ascend-keep-dtype"):
        assert _outputs(plan) == _outputs(sim.plan)


def test_qaic_npi_content(tmp_path, cnn_islands):
    path, _ = _write_read(tmp_path, "qaic-npi", cnn_islands, "npi.yaml")
    assert yaml.safe_load(path.read_text()) == {
        "FP16NodeInstanceNames": ["fc"],
        "FP32NodeInstanceNames": ["down.0", "down.1", "down.2"],
    }


def test_keep_dtype_writes_a_kind_whose_ops_are_all_fp32_as_op_types(tmp_path, bert_blocks):
    path, data = _write_read(tmp_path, "ascend-keep-dtype", bert_blocks)
    lines = path.read_text().splitlines()
    assert "OpType::LayerNorm" in lines
    assert not any("LayerNorm" in line and "::" not in line for line in lines)
    assert data.precisions["kind:layer_norm"] == "fp32"


def test_mixlist_content_is_strict_json_by_op_type(tmp_path, bert_blocks):
    path, data = _write_read(tmp_path, "ascend-mixlist", bert_blocks)
    assert json.loads(path.read_text()) == {
        "black-list": {"to-add": ["LayerNorm"]},
        "white-list": {"to-add": ["SoftmaxV2"]},
    }
    assert data.precisions == {"kind:layer_norm": "fp32", "kind:softmax": "fp16"}


def test_customize_dtypes_content(tmp_path, cnn_islands):
    path, _ = _write_read(tmp_path, "ascend-customize-dtypes", cnn_islands)
    lines = dict(line.split("::", 1) for line in path.read_text().splitlines())
    assert lines["stem.0"] == "InputDtype:int8,int4,OutputDtype:int8"
    assert lines["block.conv1"] == "InputDtype:int16,int8,OutputDtype:int16"
    assert lines["down.0"] == "InputDtype:float32,float32,OutputDtype:float32"
    assert lines["fc"] == "InputDtype:float16,int8,OutputDtype:float16"


# -- qaic profile ---------------------------------------------------------------------------


def test_profile_round_trip_with_histograms(tmp_path, cnn_mixed):
    enc = cnn_mixed.encodings()
    histograms = {"block.relu": [0.0, 3.0, 1.5e-7, 12.0], "x": [1.0 / 3.0]}
    path = write_profile(tmp_path / "p.yaml", enc, histograms, cnn_mixed.graph)
    profile = read_profile(path, cnn_mixed.graph)
    expected = {
        e.name: (e.min, e.max, histograms.get(e.name, []))
        for e in enc
        if e.kind == "activation" and not e.is_float
    }
    assert profile == expected
    assert "block.relu@int8" in profile and "fc" not in profile
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs[0] == {"GlowToolsVersion": ""} and isinstance(docs[1]["GraphPreLowerHash"], int)
    assert "GraphPreLowerHash: 0x" in path.read_text()


def test_profile_hash_rejects_another_graph(tmp_path, cnn_mixed, bert_blocks):
    path = write_profile(tmp_path / "p.yaml", cnn_mixed.encodings(), graph=cnn_mixed.graph)
    with pytest.raises(ValueError, match="made for another model"):
        read_profile(path, bert_blocks.graph)


def test_profile_through_the_registry_gives_ranges(tmp_path, cnn_mixed):
    _, data = _write_read(tmp_path, "qaic-profile", cnn_mixed)
    enc = cnn_mixed.encodings()
    assert data.ranges == {
        e.name: (e.min, e.max) for e in enc if e.kind == "activation" and not e.is_float
    }
    config = data.to_config()
    assert "block.relu@int8" not in config.fixed_ranges
    assert config.fixed_ranges["block.relu"] == data.ranges["block.relu"]


def test_profile_refuses_a_point_without_range(tmp_path):
    enc = Encodings({"t": Encoding("t", "t", "activation", "int8", [0.1], [0])})
    with pytest.raises(ValueError, match="'t' has no calibrated min / max"):
        write_profile(tmp_path / "p.yaml", enc)
    assert not (tmp_path / "p.yaml").exists()


# -- ORT overrides -----------------------------------------------------------------------


def _without_range(e: Encoding) -> dict:
    return {k: v for k, v in asdict(e).items() if k not in ("min", "max")}


def test_ort_overrides_content(tmp_path, cnn_mixed):
    path, _ = _write_read(tmp_path, "ort-overrides", cnn_mixed)
    data = json.loads(path.read_text())
    assert set(data) == ORT_KEYS
    overrides = data["TensorQuantOverrides"]
    relu = cnn_mixed.encodings()["block.relu@int8"]
    assert overrides["block.relu"][0]["quant_type"] == "QInt16"
    assert overrides["block.relu"][0]["convert"] == {
        "quant_type": "QInt8",
        "scale": relu.scale[0],
        "zero_point": relu.zero_point[0],
        "recv_nodes": ["block.conv2"],
    }
    stem = overrides["stem.0.weight"]
    assert len(stem) == 8 and all(d["axis"] == 0 and d["quant_type"] == "QInt4" for d in stem)
    assert data["nodes_to_exclude"] == ["fc"]
    assert "fc" not in data["nodes_to_quantize"] and "block.conv1" in data["nodes_to_quantize"]
    assert {"Conv", "Add", "Relu"} <= set(data["op_types_to_quantize"])
    assert (data["per_channel"], data["activation_type"], data["weight_type"]) == (
        True,
        "QInt8",
        "QInt8",
    )


def test_ort_round_trip_keeps_every_integer_point(tmp_path, cnn_mixed):
    _, data = _write_read(tmp_path, "ort-overrides", cnn_mixed)
    enc = cnn_mixed.encodings()
    assert data.encodings is not None
    ints = [e for e in enc if not e.is_float]
    assert {e.name for e in data.encodings} == {e.name for e in ints}
    for e in ints:  # ORT holds no min / max; everything else comes back
        assert _without_range(data.encodings[e.name]) == _without_range(e)
    assert data.precisions == {"fc": "fp32"}  # the fp16 island, as ORT runs it


# -- what a format cannot express --------------------------------------------------------


@pytest.mark.parametrize("fmt", ["aimet-0.6.1", "ort-overrides"])
def test_per_block_weights_are_refused_by_name(tmp_path, fmt, bert_blocks):
    path = tmp_path / "out"
    with pytest.raises(ValueError, match=r"'embeddings\.word_embeddings\.weight' is per-block"):
        write_format(path, fmt, bert_blocks.plan, bert_blocks.encodings(), bert_blocks.graph)
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary file


def test_a_failed_write_leaves_an_existing_file_alone(tmp_path, bert_blocks):
    path = tmp_path / "out.encodings"
    path.write_text("old")
    with pytest.raises(ValueError, match="per-block"):
        write_format(path, "aimet-0.6.1", encodings=bert_blocks.encodings())
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("fmt", ENCODING_FORMATS)
def test_aimet_refuses_fp8_by_name(tmp_path, fmt):
    enc = Encodings({"t": Encoding("t", "t", "activation", "fp8_e4m3")})
    with pytest.raises(ValueError, match="'t' is fp8_e4m3"):
        write_format(tmp_path / "e", fmt, encodings=enc)


def test_ort_refuses_a_float_point_it_cannot_exclude(tmp_path, cnn_mixed):
    plan = replace(cnn_mixed.plan, ops=dict(cnn_mixed.plan.ops))
    fc = plan.ops["fc"]
    plan.ops["fc"] = replace(fc, input=("int8",), output=("int8",))  # fc no longer excluded
    with pytest.raises(ValueError, match="'fc' is fp16"):
        write_format(
            tmp_path / "o.json", "ort-overrides", plan, cnn_mixed.encodings(), cnn_mixed.graph
        )


def test_qaic_npi_refuses_bf16_by_op(tmp_path, cnn_model):
    sim = _sim(cnn_model, _mixed_config().set_precision("fc", activation="bf16"))
    with pytest.raises(ValueError, match="'fc' runs in bf16"):
        write_format(tmp_path / "n.yaml", "qaic-npi", sim.plan, None, sim.graph)


def test_mixlist_refuses_a_per_op_float_decision(tmp_path, cnn_islands):
    with pytest.raises(ValueError, match=r"'down\.0' runs in fp32 but other conv ops"):
        write_format(tmp_path / "m.json", "ascend-mixlist", cnn_islands.plan)


def test_customize_dtypes_refuses_a_precision_without_ascend_word(tmp_path):
    plan = Plan(ops={"fc": OpPlan("fc", "linear", "fc", ("uint16",), ("uint16",))})
    with pytest.raises(ValueError, match="'fc' runs in uint16"):
        write_format(tmp_path / "c.cfg", "ascend-customize-dtypes", plan)


# -- reading, guessing, converting ---------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - {"ascend-keep-dtype"}))
def test_the_format_is_guessed_from_content(tmp_path, fmt, cnn_mixed):
    path = write_format(tmp_path / "f", fmt, cnn_mixed.plan, cnn_mixed.encodings(), cnn_mixed.graph)
    assert read_format(path) == read_format(path, fmt)


def test_a_keep_dtype_file_must_be_named(tmp_path, cnn_float):
    path = write_format(tmp_path / "k.cfg", "ascend-keep-dtype", cnn_float.plan)
    with pytest.raises(ValueError, match="pass the format"):
        read_format(path)


def test_convert_npi_to_keep_dtype_and_back_keeps_the_float_op_sets(tmp_path, cnn_float):
    npi = write_format(tmp_path / "a.yaml", "qaic-npi", cnn_float.plan, None, cnn_float.graph)
    with pytest.raises(ValueError, match="pass graph="):
        convert(npi, tmp_path / "k.cfg", "ascend-keep-dtype")
    keep = convert(npi, tmp_path / "k.cfg", "ascend-keep-dtype", graph=cnn_float.graph)
    assert read_format(keep, "ascend-keep-dtype").precisions == {
        name: "fp32" for name in ("down.0", "down.1", "down.2", "fc")
    }
    back = convert(
        keep,
        tmp_path / "b.yaml",
        "qaic-npi",
        "ascend-keep-dtype",
        plan=cnn_float.plan,
        graph=cnn_float.graph,
    )
    assert yaml.safe_load(back.read_text()) == yaml.safe_load(npi.read_text())
    assert read_format(back).precisions == read_format(npi).precisions


def test_convert_aimet_to_ort_and_back_keeps_the_encodings(tmp_path, cnn_mixed):
    src = write_format(tmp_path / "a.encodings", "aimet-0.6.1", encodings=cnn_mixed.encodings())
    with pytest.raises(ValueError, match="pass plan= and graph="):
        convert(src, tmp_path / "o.json", "ort-overrides")
    ort = convert(
        src, tmp_path / "o.json", "ort-overrides", plan=cnn_mixed.plan, graph=cnn_mixed.graph
    )
    back = convert(ort, tmp_path / "b.encodings", "aimet-0.6.1", graph=cnn_mixed.graph)
    data = read_format(back)
    assert data.encodings is not None
    enc = cnn_mixed.encodings()
    ints = [e for e in enc if not e.is_float]
    assert {e.name for e in data.encodings} == {e.name for e in ints}
    for e in ints:  # scales, zero points, types, axes, conversions: exact
        assert _without_range(data.encodings[e.name]) == _without_range(e)
    # ORT says only "not quantized" for the fp16 fc: it comes back as an fp32 island
    assert data.precisions == {"tensor:fc": "fp32"}


def test_convert_encodings_to_a_list_resolves_their_precisions(tmp_path, cnn_islands):
    sim = cnn_islands
    src = write_format(tmp_path / "a.json", "aimet-1.0.0", sim.plan, sim.encodings(), sim.graph)
    npi = convert(src, tmp_path / "n.yaml", "qaic-npi", graph=sim.graph)
    direct = write_format(tmp_path / "d.yaml", "qaic-npi", sim.plan, None, sim.graph)
    assert npi.read_text() == direct.read_text()
    profile = convert(src, tmp_path / "p.yaml", "qaic-profile")  # ranges only: no graph needed
    assert (
        read_format(profile).ranges
        == read_format(
            write_format(tmp_path / "q.yaml", "qaic-profile", encodings=sim.encodings())
        ).ranges
    )


def test_convert_refuses_scales_a_list_does_not_hold(tmp_path, cnn_float):
    npi = write_format(tmp_path / "a.yaml", "qaic-npi", cnn_float.plan, None, cnn_float.graph)
    with pytest.raises(ValueError, match="qaic-npi files hold no scales"):
        convert(npi, tmp_path / "e.json", "aimet-1.0.0", graph=cnn_float.graph)


def test_to_config_sets_weights_only_for_float_precisions():
    data = VendorData(
        {"a": "fp16", "kind:add": "int16"}, ranges={"t": (-1.0, 2.0), "t@int8": (0.0, 1.0)}
    )
    config = data.to_config(mixq.Config(default=("int8", "int4")))
    assert [(r.target, r.activation, r.weight) for r in config.rules] == [
        ("a", "fp16", "fp16"),
        ("kind:add", "int16", None),
    ]
    assert config.fixed_ranges == {"t": (-1.0, 2.0)}
    assert config.default.weight == "int4"
