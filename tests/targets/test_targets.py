"""Target profiles: built-ins, round trips, validation, violations and repair."""

from __future__ import annotations

import itertools

import pytest
import yaml

from mixq import ConfigError, ConflictError, OpPlan
from mixq.core.qtypes import QTYPES
from mixq.graph.kinds import DATA_MOVEMENT
from mixq.targets import (
    BUILTIN_TARGETS,
    TARGET_VERSION,
    KindSupport,
    TargetProfile,
    load_target,
)

NPU = "int8-int16-npu"


def _op(kind: str, act: str, weight: str | None = None, name: str = "layer1.conv") -> OpPlan:
    weights = {"weight": weight} if weight else {}
    return OpPlan(name, kind, name, (act,), (act,), weights, "default")


def _tiny(**changes) -> dict:
    data = {
        "name": "tiny",
        "default": {"activations": ["int8"], "weights": ["int8"]},
        "kinds": {"softmax": {"activations": ["int8", "fp16"]}},
        "cost": {"int8": 1.0, "fp16": 4.0},
    }
    data.update(changes)
    return data


# --- built-ins ---------------------------------------------------------------------------


def test_builtin_names_are_the_four_shipped_profiles():
    assert BUILTIN_TARGETS == ("generic", "int8-int16-npu", "fp16-npu", "ort-cpu")


@pytest.mark.parametrize("name", BUILTIN_TARGETS)
def test_builtin_loads_with_its_own_name_and_a_full_cost_table(name):
    profile = load_target(name)
    assert profile.name == name and profile.version == TARGET_VERSION
    assert profile.description
    assert set(profile.cost) == set(QTYPES)
    assert profile.cost["int8"] == 1.0


@pytest.mark.parametrize("name", BUILTIN_TARGETS)
def test_builtin_round_trips_through_dict_and_yaml(name, tmp_path):
    profile = load_target(name)
    assert TargetProfile.from_dict(profile.to_dict()) == profile
    path = profile.save(tmp_path / f"{name}.yaml")
    assert TargetProfile.load(path) == profile
    assert TargetProfile.load(str(path)) == profile
    assert yaml.safe_load(path.read_text()) == profile.to_dict()


def test_kind_support_round_trips():
    s = KindSupport(("int8", "int16"), ("int8", "int16"), (("int16", "int16"),))
    assert KindSupport.from_dict(s.to_dict()) == s


def test_load_target_caches_builtins_but_load_reads_afresh():
    assert load_target(NPU) is load_target(NPU)
    assert TargetProfile.load(NPU) is not TargetProfile.load(NPU)
    assert TargetProfile.load(NPU) == load_target(NPU)


def test_only_ort_cpu_leaves_the_residual_add_unfused():
    assert {n: load_target(n).fuse_residual_add for n in BUILTIN_TARGETS} == {
        "generic": True,
        "int8-int16-npu": True,
        "fp16-npu": True,
        "ort-cpu": False,
    }


def test_fuse_residual_add_defaults_to_true_for_a_version_1_profile_and_round_trips():
    old = TargetProfile.from_dict(_tiny(version=1))
    assert old.fuse_residual_add is True and old.version == 1
    cpu = TargetProfile.from_dict(_tiny(fuse_residual_add=False))
    assert cpu.to_dict()["fuse_residual_add"] is False
    assert TargetProfile.from_dict(cpu.to_dict()) == cpu


def test_fuses_residual_add_reads_a_profile_file_again_when_it_changes(tmp_path):
    import os

    from mixq.targets import fuses_residual_add

    path = tmp_path / "cpu.yaml"
    path.write_text(yaml.safe_dump(_tiny(fuse_residual_add=False)))
    assert fuses_residual_add(path) is False and fuses_residual_add(str(path)) is False
    path.write_text(yaml.safe_dump(_tiny(fuse_residual_add=True)))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert fuses_residual_add(path) is True


def test_unknown_name_lists_the_builtins():
    with pytest.raises(ConfigError) as e:
        load_target("int8-int16-npuu")
    message = str(e.value)
    assert all(name in message for name in BUILTIN_TARGETS)
    assert "did you mean 'int8-int16-npu'" in message


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_target(tmp_path / "nope.yaml")


def test_user_yaml_path_loads_and_kinds_inherit_default_lists(tmp_path):
    path = tmp_path / "my-npu.yaml"
    path.write_text(yaml.safe_dump(_tiny()))
    profile = load_target(str(path))
    assert profile.name == "tiny"
    assert profile.support("softmax").weights == ("int8",)  # taken from default
    assert profile.support("softmax").activations == ("int8", "fp16")
    assert profile.support("conv") == profile.default


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, words",
    [
        (_tiny(kind={}), ["'kind'", "did you mean 'kinds'"]),
        ({**_tiny(), "default": {"activation": ["int8"], "weights": ["int8"]}}, ["'activations'"]),
        (_tiny(kinds={"conv": {"weigths": ["int8"]}}), ["kinds['conv']", "'weights'"]),
        (_tiny(kinds={"conv": {"weights": ["int9"]}}), ["int9", "kinds['conv']", "int8"]),
        (_tiny(cost={"int8": 1.0, "fp17": 2.0}), ["fp17", "cost"]),
        (_tiny(cost={"int8": 1.0}), ["fp16", "cost"]),
        (_tiny(cost={"int8": 1.0, "fp16": -1}), ["positive", "fp16"]),
        (_tiny(version=TARGET_VERSION + 1), ["newer", "upgrade"]),
        ({k: v for k, v in _tiny().items() if k != "cost"}, ["needs", "'cost'"]),
        (
            _tiny(kinds={"conv": {"forbid_pairs": [["int16", "int8"]]}}),
            ["int16", "activation", "forbid_pairs"],
        ),
        (_tiny(kinds={"conv": {"forbid_pairs": [["int8"]]}}), ["[activation, weight]"]),
        (_tiny(kinds=["conv"]), ["kinds"]),
        (_tiny(fuse_residual_add="no"), ["fuse_residual_add", "true or false"]),
    ],
)
def test_invalid_profiles_are_rejected_with_what_to_fix(data, words):
    with pytest.raises(ConfigError) as e:
        TargetProfile.from_dict(data)
    for word in words:
        assert word in str(e.value)


def test_kind_support_rejects_an_invalid_precision_when_built_directly():
    with pytest.raises(ConfigError, match="int9"):
        KindSupport(("int9",), ("int8",))


def test_precision_aliases_are_canonicalised():
    profile = TargetProfile.from_dict(_tiny(kinds={"softmax": {"activations": ["float16"]}}))
    assert profile.support("softmax").activations == ("fp16",)


# --- int8-int16-npu ------------------------------------------------------------------------


def test_npu_int16_activation_with_int16_weight_is_one_violation_naming_both_sides():
    found = load_target(NPU).violations(_op("conv", "int16", "int16"))
    assert len(found) == 1
    assert "layer1.conv" in found[0]
    assert "int16 weight with int16 activation" in found[0]
    assert f"'{NPU}'" in found[0]


def test_npu_repair_lowers_the_weight_of_a_forbidden_pair():
    npu = load_target(NPU)
    fixed, notes = npu.repair(_op("conv", "int16", "int16"))
    assert fixed.input == fixed.output == ("int16",)
    assert fixed.weight == {"weight": "int8"}
    assert len(notes) == 1
    assert "layer1.conv" in notes[0] and "int16 -> int8" in notes[0] and NPU in notes[0]
    assert npu.violations(fixed) == []
    assert fixed.rule == f"default; repaired for target '{NPU}'"


def test_npu_allows_int16_on_one_side_only():
    npu = load_target(NPU)
    assert npu.violations(_op("conv", "int16", "int8")) == []
    assert npu.violations(_op("linear", "int8", "int16")) == []


def test_npu_runs_fp16_softmax_but_not_fp16_conv():
    npu = load_target(NPU)
    assert npu.violations(_op("softmax", "fp16", name="encoder.softmax")) == []
    found = npu.violations(_op("conv", "fp16", "int8"))
    assert len(found) == 1 and "fp16 activation" in found[0] and "int8, int16" in found[0]


def test_npu_repair_moves_fp16_conv_to_int16_the_nearest_by_rank():
    npu = load_target(NPU)
    fixed, notes = npu.repair(_op("conv", "fp16", "int8"))
    assert fixed.input == fixed.output == ("int16",)
    assert fixed.weight == {"weight": "int8"}
    assert len(notes) == 1 and "fp16 -> int16" in notes[0] and "next lower" in notes[0]


def test_npu_repair_of_an_all_fp16_conv_ends_valid():
    npu = load_target(NPU)
    fixed, notes = npu.repair(_op("conv", "fp16", "fp16"))
    assert fixed.input == ("int16",) and fixed.weight == {"weight": "int8"}
    assert npu.violations(fixed) == []
    assert len(notes) == 3  # activation fp16 -> int16, weight fp16 -> int16, int16 -> int8


@pytest.mark.parametrize(
    "kind, wanted, expected, how",
    [
        ("conv", "uint8", "int8", "same width"),
        ("conv", "int4", "int8", "next higher"),
        ("softmax", "fp32", "fp16", "next lower"),
        ("relu", "bf16", "int16", "next lower"),
    ],
)
def test_repair_picks_the_nearest_supported_precision(kind, wanted, expected, how):
    fixed, notes = load_target(NPU).repair(_op(kind, wanted))
    assert fixed.output == (expected,)
    assert f"{wanted} -> {expected} ({how})" in notes[0]


def test_an_unsupported_output_alone_is_a_violation_and_is_repaired():
    op = OpPlan("head", "linear", "head", ("int8",), ("fp32",), {"weight": "int8"})
    npu = load_target(NPU)
    found = npu.violations(op)
    assert len(found) == 1 and "fp32 activation" in found[0]
    fixed, _ = npu.repair(op)
    assert fixed.input == ("int8",) and fixed.output == ("int16",)


def test_embedding_pair_is_checked_against_its_output():
    op = OpPlan("emb", "embedding", "emb", (), ("int16",), {"weight": "int16"})
    fixed, notes = load_target(NPU).repair(op)
    assert fixed.weight == {"weight": "int8"} and len(notes) == 1


def test_check_raises_a_conflict_naming_the_op():
    with pytest.raises(ConflictError, match=r"layer1\.conv"):
        load_target(NPU).check(_op("conv", "int16", "int16"))
    load_target(NPU).check(_op("conv", "int8", "int8"))


def test_unrepairable_pair_is_left_with_a_note():
    strict = KindSupport(("int16",), ("int16",), (("int16", "int16"),))
    profile = TargetProfile("odd", "", strict, {}, {"int16": 2.0})
    fixed, notes = profile.repair(_op("conv", "int16", "int16"))
    assert fixed.weight == {"weight": "int16"}
    assert len(notes) == 1 and "left as is" in notes[0]


# --- other profiles ------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_TARGETS)
def test_valid_op_is_returned_unchanged_without_notes(name):
    op = _op("linear", "int8", "int8") if name != "fp16-npu" else _op("softmax", "fp16")
    fixed, notes = load_target(name).repair(op)
    assert fixed is op and notes == []


def test_generic_never_reports_a_violation():
    generic = load_target("generic")
    kinds = ["conv", "linear", "matmul", "embedding", "softmax", "reshape", "some_new_op"]
    weights = [w for w in QTYPES if not QTYPES[w].dynamic]  # a weight is never dynamic
    for kind, act, weight in itertools.product(kinds, QTYPES, weights):
        assert generic.violations(_op(kind, act, weight)) == []


def test_ort_cpu_runs_int4_weight_on_linear_but_not_on_conv():
    ort = load_target("ort-cpu")
    assert ort.violations(_op("linear", "uint8", "int4")) == []
    assert ort.violations(_op("matmul", "fp32", "uint4")) == []
    found = ort.violations(_op("conv", "uint8", "int4"))
    assert len(found) == 1 and "int4 weight" in found[0] and "'ort-cpu'" in found[0]
    fixed, _ = ort.repair(_op("conv", "uint8", "int4"))
    assert fixed.weight == {"weight": "int8"}


def test_ort_cpu_says_16_bit_qdq_is_simulated_and_costs_more_than_fp32():
    ort = load_target("ort-cpu")
    assert "simulated" in ort.description
    assert ort.cost["int16"] > ort.cost["fp32"] and ort.cost["fp16"] > ort.cost["fp32"]
    assert ort.cost["uint8"] < ort.cost["int8"]


def test_fp16_npu_runs_int8_only_on_matrix_ops_and_what_fuses_into_them():
    fp16 = load_target("fp16-npu")
    assert fp16.violations(_op("conv", "int8", "int8")) == []
    assert fp16.violations(_op("relu", "int8")) == []
    assert len(fp16.violations(_op("softmax", "int8"))) == 1
    fixed, _ = fp16.repair(_op("softmax", "int16"))
    assert fixed.output == ("fp16",)


@pytest.mark.parametrize("name, carried", [(NPU, "fp16"), ("fp16-npu", "int8")])
def test_npu_profiles_let_every_data_movement_kind_carry_what_it_reads(name, carried):
    # Data-movement ops inherit their input's precision, so a profile that lists only some
    # of them would flag a reshape after an fp16 softmax (or an int8 conv) as a violation.
    profile = load_target(name)
    missing = sorted(k for k in DATA_MOVEMENT if carried not in profile.support(k).activations)
    assert missing == []


# --- integer kernels (issue 12) ----------------------------------------------------------------


def test_integer_kernels_round_trip_through_dict_and_yaml(tmp_path):
    profile = TargetProfile.from_dict(
        _tiny(
            integer_kernels={"conv": "qlinear", "linear": "to_float", "add": "qlinear_if_quantized"}
        )
    )
    assert TargetProfile.from_dict(profile.to_dict()) == profile
    assert TargetProfile.load(profile.save(tmp_path / "t.yaml")) == profile
    assert (
        yaml.safe_load((tmp_path / "t.yaml").read_text())["integer_kernels"]["linear"] == "to_float"
    )


def test_integer_kernels_say_how_each_kind_runs():
    ort_cpu = load_target("ort-cpu")
    assert ort_cpu.kernel("conv") == "qlinear" and ort_cpu.kernel("linear") == "to_float"
    assert ort_cpu.kernel("add") == "qlinear_if_quantized"
    assert ort_cpu.kernel("layer_norm") is None and ort_cpu.kernel("softmax") is None


@pytest.mark.parametrize("name", ["generic", NPU, "fp16-npu"])
def test_npu_targets_run_every_kind_in_integer(name):
    profile = load_target(name)
    assert profile.integer_kernels is None and "integer_kernels" not in profile.to_dict()
    assert profile.kernel("softmax") == "qlinear" and profile.kernel("layer_norm") == "qlinear"


def test_integer_kernels_reject_an_unknown_style():
    with pytest.raises(ConfigError, match="integer_kernels: conv: 'int8' is not one of"):
        TargetProfile.from_dict(_tiny(integer_kernels={"conv": "int8"}))
    with pytest.raises(ConfigError, match="must map op kinds"):
        TargetProfile.from_dict(_tiny(integer_kernels=["conv"]))
