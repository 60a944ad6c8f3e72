"""README.md runs as pasted: every ```python block in order in one namespace, in a fresh
folder; the cheap ```bash `mixq ...` examples through the CLI's entry point."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIXQ_PROGRESS", "0")
    namespace: dict[str, object] = {"__name__": "readme"}
    for number, code in enumerate(blocks("python")):
        exec(compile(code, f"README.md python block {number}", "exec"), namespace)
    assert (tmp_path / "out" / "search" / "plan.yaml").exists()


def mixq_commands() -> list[list[str]]:
    commands = []
    for block in blocks("bash"):
        text = block.replace("\\\n", " ")
        commands += [shlex.split(line) for line in text.splitlines() if line.startswith("mixq ")]
    return commands


def test_the_readme_shows_a_cli_search():
    assert [c[:2] for c in mixq_commands()] == [["mixq", "search"]]


@pytest.mark.slow
def test_cli_examples_run(tmp_path, monkeypatch, capsys):
    from mixq.cli.main import main
    from mixq.zoo import digits_data

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIXQ_PROGRESS", "0")
    data = digits_data()
    np.savez("calib.npz", arg0=data.x_train[:256].numpy())
    np.savez("eval.npz", arg0=data.x_test.numpy(), y=data.y_test.numpy())
    for command in mixq_commands():
        with pytest.raises(SystemExit) as exit_:
            main(command[1:])
        assert exit_.value.code in (0, 3), capsys.readouterr().err
    assert (tmp_path / "out" / "search" / "search.html").exists()
