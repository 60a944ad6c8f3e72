from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mixq.cli.main import app

runner = CliRunner()


@pytest.mark.slow
def test_demo_prints_every_precision_and_saves_files(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--epochs", "4"])
    assert result.exit_code == 0, result.output
    for label in ["fp32", "fp16", "int16", "int8", "w4a8", "mixed"]:
        assert label in result.output
    rows = (tmp_path / "demo.csv").read_text().splitlines()
    assert len(rows) == 7  # header + 6 rows (the demo dropped bf16 for a searched mixed plan)
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
    assert written == ["model.aimet-1.0.0.encodings", "model.onnx", "model.qaic-npi.yaml"]
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


@pytest.mark.onnx
def test_every_model_command_takes_an_onnx_file(tmp_path):
    import numpy as np
    import onnx

    import mixq
    from tests.sim.onnx.models import mlp

    model = tmp_path / "mlp.onnx"
    onnx.save(mlp(), model)
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((24, 16)).astype(np.float32))
    feed = ["--data", str(data), "--batch-size", "8"]
    profile = tmp_path / "profile.yaml"
    commands = {
        "plan": ["plan", str(model), "--out", str(tmp_path / "plan")],
        "check": ["check", str(model), "--out", str(tmp_path / "check")],
        "dump": ["calibrate", str(model), *feed, "--dump-profile", str(profile),
                 "--out", str(tmp_path / "a")],
        "load": ["calibrate", str(model), "--load-profile", str(profile),
                 "--out", str(tmp_path / "b")],
        "analyze": ["analyze", str(model), *feed, "--out", str(tmp_path / "analyze")],
        "export": ["export", str(model), *feed, "--format", "ort-overrides",
                   "--out", str(tmp_path / "export")],
    }  # fmt: skip
    for label, args in commands.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (label, result.output, result.exception)
    assert "fc1" in mixq.Plan.load(tmp_path / "plan" / "plan.yaml").ops
    assert (tmp_path / "check" / "model_check_result.txt").stat().st_size > 0
    assert "Histogram: [" in profile.read_text() and "Histogram: []" not in profile.read_text()
    a = mixq.Encodings.load(tmp_path / "a" / "encodings.json")
    b = mixq.Encodings.load(tmp_path / "b" / "encodings.json")
    assert [e.scale for e in a] == [e.scale for e in b]
    assert (tmp_path / "analyze" / "report.html").stat().st_size > 0
    assert {p.name for p in (tmp_path / "export").iterdir()} == {
        "model.onnx",
        "model.ort-overrides.json",
    }


def _search_files(tmp_path):
    import numpy as np
    import torch

    from mixq import zoo

    model, _ = zoo.mlp()
    gen = np.random.default_rng(0)
    calib, eval_ = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, arg0=gen.standard_normal((32, 1, 8, 8)).astype(np.float32))
    x = gen.standard_normal((48, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(x)).argmax(-1).numpy()  # the float model scores 1.0
    np.savez(eval_, arg0=x, y=labels)
    return calib, eval_


def test_search_command_meets_a_reachable_target(tmp_path):
    import mixq
    from mixq import zoo

    calib, eval_ = _search_files(tmp_path)
    out = tmp_path / "out"
    args = ["search", "mixq.zoo:mlp", "--calib", str(calib), "--eval", str(eval_)]
    args += ["--labels", "y", "--target", "drop:0.1", "--candidates", "int8,int16"]
    result = runner.invoke(app, [*args, "--batch-size", "16", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "accuracy" in result.output and "all int8" in result.output and ": met" in result.output
    assert {p.name for p in out.iterdir()} == {"plan.yaml", "points.json", "search.html"}
    model, inputs = zoo.mlp()
    sim = mixq.quantize(model, inputs, str(out / "plan.yaml"))
    saved = mixq.Plan.load(out / "plan.yaml")
    assert [(o.input, o.output, o.weight) for o in sim.plan.ops.values()] == [
        (o.input, o.output, o.weight) for o in saved.ops.values()
    ]


def test_search_command_exits_3_on_a_missed_target_and_resumes(tmp_path):
    import json

    out, history = tmp_path / "out", tmp_path / "search.jsonl"
    args = ["search", "mixq.zoo:mlp", "--metric", "sqnr", "--target", "200"]
    args += ["--candidates", "int8,int16", "--history", str(history)]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 3, (result.output, result.exception)
    assert "MISSED" in result.output
    first = json.loads((out / "points.json").read_text())
    assert not first["met_target"] and first["evaluations"] > 0
    assert (out / "plan.yaml").exists() and (out / "search.html").exists()
    again = runner.invoke(app, [*args, "--resume", "--out", str(tmp_path / "again")])
    assert again.exit_code == 3, (again.output, again.exception)
    second = json.loads((tmp_path / "again" / "points.json").read_text())
    assert second["evaluations"] == 0 and second["reused"] == first["evaluations"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--budget", "bops", "KEY=FRACTION"),
        ("--budget", "flops=0.5", "KEY=FRACTION"),
        ("--budget", "bops=-1", "KEY=FRACTION"),
        ("--target", "drop=0.1", "rdrop:0.01"),
        ("--strategy", "greedy", "unknown strategy"),
        ("--candidates", "int8,int7", "unknown precision"),
    ],
)
def test_search_command_explains_bad_options(option, value, message):
    result = runner.invoke(app, ["search", "mixq.zoo:mlp", "--budget", "bops=2", option, value])
    text = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert result.exit_code == 2 and message in text, result.output


def test_search_command_applies_transforms_and_records_them(tmp_path):
    import mixq

    out = tmp_path / "out"
    args = ["search", "mixq.zoo:mlp", "--metric", "sqnr", "--target", "20"]
    args += ["--candidates", "int8,int16", "--transform", "equalize", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert [t["name"] for t in mixq.Plan.load(out / "plan.yaml").transforms] == ["equalize"]


@pytest.mark.slow
def test_search_and_analyze_on_a_process_pool_write_the_serial_results(tmp_path):
    import json

    calib, _ = _search_files(tmp_path)
    pool = ["--executor", "processes", "--workers", "2"]
    search = ["search", "mixq.zoo:mlp", "--calib", str(calib), "--metric", "sqnr"]
    search += ["--target", "45", "--candidates", "int8,int16", "--strategy", "pareto"]
    analyze = ["analyze", "mixq.zoo:mlp", "--data", str(calib), "--batch-size", "16"]
    for name, args in {"search": search, "analyze": analyze}.items():
        for how, extra in {"serial": [], "pool": pool}.items():
            result = runner.invoke(app, [*args, *extra, "--out", str(tmp_path / name / how)])
            assert result.exit_code in (0, 3), (name, how, result.output, result.exception)
    points = [json.loads((tmp_path / "search" / how / "points.json").read_text())
              for how in ("serial", "pool")]  # fmt: skip
    assert [p["label"] for p in points[0]["points"]] == [p["label"] for p in points[1]["points"]]
    assert len(points[0]["points"]) > 2
    plans = [(tmp_path / "search" / how / "plan.yaml").read_text() for how in ("serial", "pool")]
    assert plans[0] == plans[1]
    for table in ("sensitivity_activation", "sensitivity_weight", "compare_isolated"):
        serial, pool_run = (
            json.loads((tmp_path / "analyze" / how / f"{table}.json").read_text())
            for how in ("serial", "pool")
        )
        assert len(serial["rows"]) > 1, table
        for a, b in zip(serial["rows"], pool_run["rows"], strict=True):
            assert a.keys() == b.keys(), table
            for k, v in a.items():
                assert b[k] == (pytest.approx(v, rel=1e-6) if isinstance(v, float) else v), k
