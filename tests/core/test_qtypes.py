"""mixq.core.qtypes: the registry of precisions, lookup and ordering."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mixq.core.qtypes import QTYPES, QType, higher, qtype

# name: (bits, qmin, qmax, is_floating_point)
EXPECTED = {
    "int4": (4, -8, 7, False),
    "uint4": (4, 0, 15, False),
    "int8": (8, -128, 127, False),
    "uint8": (8, 0, 255, False),
    "uint8_dynamic": (8, 0, 255, False),
    "int16": (16, -32768, 32767, False),
    "uint16": (16, 0, 65535, False),
    "fp8_e4m3": (8, 0, 0, True),
    "fp8_e5m2": (8, 0, 0, True),
    "fp16": (16, 0, 0, True),
    "bf16": (16, 0, 0, True),
    "fp32": (32, 0, 0, True),
}
MAX_FINITE = {
    "fp8_e4m3": 448.0,
    "fp8_e5m2": 57344.0,
    "fp16": 65504.0,
    "bf16": 3.3895313892515355e38,
    "fp32": 3.4028234663852886e38,
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_registry_entry(name):
    t = QTYPES[name]
    assert t.name == name and str(t) == name
    assert (t.bits, t.qmin, t.qmax, t.is_floating_point) == EXPECTED[name]
    assert t.is_signed == (t.is_floating_point or name.startswith("int"))
    assert qtype(name) is t


def test_registry_holds_exactly_the_listed_precisions():
    assert set(QTYPES) == set(EXPECTED)


@pytest.mark.parametrize("name", [n for n, e in EXPECTED.items() if not e[3]])
def test_integer_grid_fits_its_storage_dtype(name):
    t = qtype(name)
    info = torch.iinfo(t.storage_dtype)
    assert info.min <= t.qmin and t.qmax <= info.max
    assert t.qmax - t.qmin == 2**t.bits - 1


@pytest.mark.parametrize("name", list(MAX_FINITE))
def test_float_types(name):
    t = qtype(name)
    assert t.max_finite == MAX_FINITE[name]
    assert t.torch_dtype is not None and torch.finfo(t.torch_dtype).bits == t.bits
    with pytest.raises(ValueError, match=f"{name} is a float precision; it has no integer storage"):
        _ = t.storage_dtype


def test_only_fp32_is_identity():
    assert [n for n, t in QTYPES.items() if t.is_identity] == ["fp32"]


def test_records_are_frozen():
    t = qtype("int8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.qmax = 255  # type: ignore[misc]
    assert dataclasses.is_dataclass(t) and isinstance(t, QType)
    assert t == dataclasses.replace(t) and hash(t) == hash(dataclasses.replace(t))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("INT8", "int8"),
        (" Int8 ", "int8"),
        ("FP16", "fp16"),
        ("Bf16", "bf16"),
        ("float16", "fp16"),
        ("FLOAT16", "fp16"),
        ("bfloat16", "bf16"),
        ("BFloat16", "bf16"),
        ("half", "fp16"),
        ("float32", "fp32"),
        ("fp8_e4m3fn", "fp8_e4m3"),
    ],
)
def test_lookup_is_case_insensitive_and_accepts_aliases(name, expected):
    assert qtype(name) is QTYPES[expected]


def test_lookup_passes_a_qtype_through():
    t = qtype("uint4")
    assert qtype(t) is t


@pytest.mark.parametrize("name", ["int3", "float64", "", "int 8"])
def test_unknown_name_lists_the_valid_names(name):
    with pytest.raises(ValueError, match=f"unknown precision {name!r}") as info:
        qtype(name)
    for valid in EXPECTED:
        assert valid in str(info.value)


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("int4", "int8"),
        ("uint4", "int8"),
        ("int8", "int16"),
        ("int16", "fp16"),
        ("fp16", "fp32"),
        ("int8", "fp32"),
        ("int4", "fp32"),
        ("bf16", "fp32"),
        ("int8", "fp16"),
    ],
)
def test_higher(low, high):
    assert higher(low, high) is QTYPES[high]
    assert higher(high, low) is QTYPES[high]
    assert qtype(low).rank() < qtype(high).rank()


def test_higher_of_a_precision_with_itself():
    assert higher("INT8", qtype("int8")) is QTYPES["int8"]


def test_higher_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown precision 'int2'"):
        higher("int8", "int2")
