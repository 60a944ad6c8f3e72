"""Search progress: one line per evaluated plan with n / total, elapsed, ETA, and kept /
rejected for fallback raises and prune steps; ``progress=False`` prints nothing."""

from __future__ import annotations

import re

import pytest

import mixq
from mixq.search.result import SearchResult

LINE = re.compile(r"^search (\d+)/[~≤]?(\d+) \d+:\d\d elapsed, ETA (-|[~≤]\d+:\d\d) \| ")


def _search(digits, progress: bool) -> SearchResult:
    model, example, calib, evaluation, labels = digits
    return mixq.search(
        model,
        example,
        calib=calib,
        data=evaluation,
        labels=labels,
        evaluate="accuracy",
        target={"drop": 0.005},
        candidates=["int8", ("int8", "int4"), "int16"],
        strategy="fallback",
        progress=progress,
    )


def test_each_plan_prints_its_count_clock_and_verdict(
    digits, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MIXQ_PROGRESS", raising=False)
    result = _search(digits, progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if LINE.match(ln)]
    assert len(lines) == len(result.points)
    counts = [LINE.match(ln).groups() for ln in lines]  # type: ignore[union-attr]
    assert [int(n) for n, _, _ in counts] == list(range(1, len(lines) + 1))
    assert all(int(total) >= int(n) for n, total, _ in counts)
    steps = [ln for ln in lines if "| fallback raise" in ln or "| prune" in ln]
    assert steps, "the digits CNN needs fallback or prune steps at this target"
    assert all(ln.endswith(")") or ln.endswith("kept") for ln in steps)
    assert all(("kept" in ln) != ("rejected" in ln) for ln in steps)
    assert all(("meets target" in ln) != ("misses target" in ln) for ln in lines)


def test_progress_false_is_silent(digits, capsys: pytest.CaptureFixture[str]) -> None:
    _search(digits, progress=False)
    captured = capsys.readouterr()
    assert "search" not in captured.err and "search" not in captured.out
