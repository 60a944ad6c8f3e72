from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mixq.cli.main import app

runner = CliRunner()


@pytest.mark.slow
def test_demo_prints_every_precision_and_saves_files(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--epochs", "4"])
    assert result.exit_code == 0, result.output
    for label in ["fp32", "fp16", "bf16", "int16", "int8", "w4a8", "mixed"]:
        assert label in result.output
    rows = (tmp_path / "demo.csv").read_text().splitlines()
    assert len(rows) == 8  # header + 7 precisions
    fp32 = dict(zip(rows[0].split(","), rows[1].split(","), strict=True))
    assert fp32["SQNR dB"] == "inf" and float(fp32["accuracy %"]) > 80
    assert (tmp_path / "mixed_plan.yaml").read_text().startswith("mixq_plan: 1")


def test_plan_command_prints_and_saves(tmp_path):
    result = runner.invoke(
        app, ["plan", "mixq.zoo:resnet_like", "--config", "int16", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "block.conv1" in result.output and "int16" in result.output
    assert (tmp_path / "plan.yaml").exists()


def test_bad_model_spec_is_explained():
    result = runner.invoke(app, ["plan", "no_such_module:factory"])
    assert result.exit_code != 0 and "cannot load" in result.output


def test_check_command_writes_the_result(tmp_path):
    result = runner.invoke(app, ["check", "mixq.zoo:resnet_like", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "block.relu" in result.output and "Modules called more than once" in result.output
    assert (tmp_path / "model_check_result.json").exists()


def test_analyze_command_on_npz_data(tmp_path):
    import numpy as np

    gen = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, arg0=gen.random((24, 1, 8, 8), dtype=np.float32))
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "analyze",
            "mixq.zoo:resnet_like",
            "--data",
            str(data),
            "--batch-size",
            "8",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in (
        "badcase.txt",
        "compare_isolated.csv",
        "sensitivity_weight.txt",
        "advice.json",
        "report.html",
    ):
        assert (out / name).stat().st_size > 0, name
    assert "model output leaves the model as int8" in result.output


@pytest.mark.slow
def test_export_and_convert_commands(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "export",
            "mixq.zoo:resnet_like",
            "--format",
            "aimet-1.0.0",
            "--format",
            "qaic-npi",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "SQNR(Sim vs ONNX Runtime)" in result.output
    written = sorted(p.name for p in out.iterdir())
    assert "model.onnx" in written and len(written) == 3, written
    bad = runner.invoke(app, ["export", "mixq.zoo:resnet_like", "--format", "nope"])
    assert bad.exit_code != 0 and "unknown format" in bad.output
    npi = tmp_path / "npi.yaml"
    npi.write_text("FP16NodeInstanceNames: [fc]\nFP32NodeInstanceNames: [pool]\n")
    keep = tmp_path / "keep_dtype.cfg"
    result = runner.invoke(
        app,
        [
            "convert",
            str(npi),
            str(keep),
            "--to",
            "ascend-keep-dtype",
            "--model",
            "mixq.zoo:resnet_like",
        ],
    )
    assert result.exit_code == 0, result.output
    assert keep.read_text().split() == ["pool", "flatten"]  # flatten inherits fp32 from pool


def test_calibrate_dumps_and_loads_a_profile(tmp_path):
    profile = tmp_path / "profile.yaml"
    first = runner.invoke(
        app,
        [
            "calibrate",
            "mixq.zoo:resnet_like",
            "--dump-profile",
            str(profile),
            "--out",
            str(tmp_path / "a"),
        ],
    )
    assert first.exit_code == 0, first.output
    second = runner.invoke(
        app,
        [
            "calibrate",
            "mixq.zoo:resnet_like",
            "--load-profile",
            str(profile),
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert second.exit_code == 0, second.output
    import mixq

    a = mixq.Encodings.load(tmp_path / "a" / "encodings.json")
    b = mixq.Encodings.load(tmp_path / "b" / "encodings.json")
    assert [e.scale for e in a] == [e.scale for e in b]
