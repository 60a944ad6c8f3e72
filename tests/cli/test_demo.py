"""`mixq demo`'s table: six precisions with accuracy, SQNR, cost and latency columns, a
searched mixed plan that beats a uniform one, and the notes a new user needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixq.cli.demo import DemoTable, cheapest_uniform_at, run_demo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoTable, Path]:
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out), out


def test_rows_and_columns(demo: tuple[DemoTable, Path]) -> None:
    table, _ = demo
    names = [r["precision"].split()[0] for r in table.rows]
    assert names == ["fp32", "fp16", "int16", "int8", "w4a8", "mixed"]
    for column in ("accuracy %", "SQNR dB", "BOPs/int8", "weights KiB", "ORT ms", "vs fp32"):
        assert column in table.columns
    by = {n: r for n, r in zip(names, table.rows, strict=True)}
    assert by["int8"]["BOPs/int8"] == 1.0
    assert by["int8"]["weights KiB"] < by["int16"]["weights KiB"] < by["fp32"]["weights KiB"]


def test_the_mixed_plan_makes_the_case(demo: tuple[DemoTable, Path]) -> None:
    table, _ = demo
    by = {r["precision"].split()[0]: r for r in table.rows}
    mixed, int16, int8 = by["mixed"], by["int16"], by["int8"]
    cheaper_than_int16 = (
        mixed["accuracy %"] >= int16["accuracy %"] and mixed["BOPs/int8"] < int16["BOPs/int8"]
    )
    better_than_int8 = mixed["accuracy %"] > int8["accuracy %"] and mixed["BOPs/int8"] <= 1.2
    # the search's own claim: its target (the float model's accuracy) for fewer BOPs than
    # any uniform plan that reaches it
    cheapest = cheapest_uniform_at(table.rows, mixed["accuracy %"])
    fp32 = by["fp32"]
    cheapest_at_target = (
        mixed["accuracy %"] >= fp32["accuracy %"]
        and cheapest is not None
        and mixed["BOPs/int8"] < cheapest["BOPs/int8"]
    )
    assert cheaper_than_int16 or better_than_int8 or cheapest_at_target, table.to_text()


def test_latency_is_measured_or_explained(demo: tuple[DemoTable, Path]) -> None:
    table, _ = demo
    for row in table.rows:
        assert (row["ORT ms"] or 0) > 0 or str(row["vs fp32"]).startswith("n/a"), row


def test_notes_and_files(demo: tuple[DemoTable, Path]) -> None:
    table, out = demo
    text = table.to_text()
    for words in ("a16w16", "BOPs =", "mixed:", "Next:", "wall time"):
        assert words in text
    assert {p.name for p in out.iterdir()} == {"demo.csv", "demo.txt", "mixed_plan.yaml"}
