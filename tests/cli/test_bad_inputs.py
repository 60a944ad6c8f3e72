"""Every command with each kind of bad value: exit status 2, one line on stderr naming the
flag and what to do, the closest name where there is one, and nothing left in --out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from mixq.cli.main import main


def mixq(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return int(exit_.value.code or 0), captured.out, captured.err


def assert_user_error(code: int, err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if not line.startswith("note:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    gen = np.random.default_rng(0)
    x = gen.standard_normal((10, 1, 8, 8))
    np.savez(root / "keys.npz", pixel_values=x.astype(np.float32))
    np.savez(root / "ints.npz", arg0=np.zeros((10, 1, 8, 8), dtype=np.int64))
    np.savez(root / "shape.npz", arg0=x.reshape(10, 64).astype(np.float32))
    np.savez(root / "rows.npz", arg0=x.astype(np.float32), arg1=x[:5].astype(np.float32))
    (root / "text.npz").write_text("not an npz")
    (root / "bad_cfg.yaml").write_text("defualt: int8\n")
    return root


CHOICES = [
    (["search", "mixq.zoo:mlp", "--metric", "cosin"], ["--metric", "did you mean 'cosine'"]),
    (["analyze", "mixq.zoo:mlp", "--metric", "cosin"], ["--metric", "did you mean 'cosine'"]),
    (["export", "mixq.zoo:mlp", "--format", "qaic"], ["--format", "did you mean 'qaic-npi'"]),
    (["convert", "a", "b", "--to", "ort-override"], ["--to", "did you mean 'ort-overrides'"]),
    (["calibrate", "mixq.zoo:mlp", "--observer", "minmx"], ["--observer", "'minmax'"]),
    (["search", "mixq.zoo:mlp", "--strategy", "falback"], ["--strategy", "'fallback'"]),
    (["search", "mixq.zoo:mlp", "--strategy", "greedy"], ["--strategy", "Choose from ratio"]),
    (["search", "mixq.zoo:mlp", "--executor", "proceses"], ["--executor", "'processes'"]),
    (["analyze", "mixq.zoo:mlp", "--executor", "threads"], ["--executor", "Choose from serial"]),
    (["search", "mixq.zoo:mlp", "--candidates", "int8,int7"], ["--candidates", "'int8'"]),
    (["search", "mixq.zoo:mlp", "--budget", "bop=0.5"], ["--budget", "KEY=FRACTION"]),
    (["search", "mixq.zoo:mlp", "--target", "drop=0.1"], ["--target", "rdrop:0.01"]),
    (["plan", "mixq.zoo:mlp", "--config", "int9"], ["--config", "did you mean 'int8'"]),
    (["plan", "mixq.zoo:mlp", "--target", "ort-cpy"], ["--target", "did you mean 'ort-cpu'"]),
    (["check", "mixq.zoo:mlp", "--target", "npu"], ["--target", "Built-in targets"]),
    (["plan", "mixq.zoo:mpl"], ["MODEL", "did you mean 'mlp'"]),
    (["plan", "mixq.zoo:mlp", "--confg", "int8"], ["--confg", "--config"]),
    (["convert", "a", "b"], ["--to", "mixq convert --help"]),
]


@pytest.mark.parametrize(("args", "words"), CHOICES, ids=[" ".join(a) for a, _ in CHOICES])
def test_unknown_choices_and_names(capsys, tmp_path, args, words):
    code, _, err = mixq(capsys, *args, *(["--out", tmp_path / "out"] if _takes_out(args) else []))
    assert_user_error(code, err, *words)
    assert not (tmp_path / "out").exists()


def _takes_out(args: list[str]) -> bool:
    return args[0] in ("search", "analyze", "export", "calibrate", "plan", "check")


def test_config_is_checked_before_the_model_is_built(capsys, files, monkeypatch):
    import mixq.cli.models as models

    monkeypatch.setattr(models, "load_model", lambda spec: pytest.fail("model was built"))
    for command in ("plan", "check", "calibrate", "analyze", "export", "search"):
        code, _, err = mixq(capsys, command, "mixq.zoo:mlp", "--config", files / "bad_cfg.yaml")
        assert_user_error(code, err, "--config", "did you mean 'default'")
        code, _, err = mixq(capsys, command, "mixq.zoo:mlp", "--config", files / "none.yaml")
        assert_user_error(code, err, "--config", "does not exist")


def test_missing_files_and_folders(capsys, tmp_path, files):
    out = tmp_path / "out"
    cases = [
        (["analyze", "missing.onnx"], ["MODEL", "no such ONNX file"]),
        (["analyze", "mixq.zoo:mlp", "--data", "missing.npz"], ["--data", "does not exist"]),
        (["search", "mixq.zoo:mlp", "--eval", "missing.npz"], ["--eval", "does not exist"]),
        (["calibrate", "mixq.zoo:mlp", "--load-profile", "missing.yaml"],
         ["--load-profile", "does not exist"]),
        (["calibrate", "mixq.zoo:mlp", "--dump-profile", tmp_path / "no" / "p.yaml"],
         ["--dump-profile", "mkdir -p"]),
        (["search", "mixq.zoo:mlp", "--history", tmp_path / "no" / "h.jsonl"],
         ["--history", "does not exist"]),
        (["convert", "missing.yaml", tmp_path / "k.cfg", "--to", "ascend-keep-dtype"],
         ["SRC", "does not exist"]),
        (["convert", files / "bad_cfg.yaml", tmp_path / "no" / "k.cfg", "--to",
          "ascend-keep-dtype"], ["DST", "mkdir -p"]),
        (["convert", files / "bad_cfg.yaml", tmp_path / "k.cfg", "--to", "ascend-keep-dtype"],
         ["--to ascend-keep-dtype", "--plan"]),
        (["convert", files / "bad_cfg.yaml", tmp_path / "k.cfg", "--to", "qaic-npi"],
         ["--to qaic-npi", "--model"]),
    ]  # fmt: skip
    for args, words in cases:
        code, _, err = mixq(capsys, *args, *(["--out", out] if _takes_out(args) else []))
        assert_user_error(code, err, *words)
    (tmp_path / "file").write_text("")
    code, _, err = mixq(capsys, "plan", "mixq.zoo:mlp", "--out", tmp_path / "file" / "out")
    assert_user_error(code, err, "--out", "is a file")
    assert not out.exists() and not (tmp_path / "k.cfg").exists()


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("keys.npz", ["--data", "'pixel_values' is not an input", "arg0 = input"]),
        ("ints.npz", ["--data", "int64", "float32"]),
        ("shape.npz", ["--data", "(64,)", "(1, 8, 8)", "'input'"]),
        ("rows.npz", ["--data", "first (sample) dimension"]),
        ("text.npz", ["--data", "np.savez"]),
    ],
)
def test_bad_npz_files(capsys, tmp_path, files, name, words):
    out = tmp_path / "out"
    for command in ("analyze", "calibrate", "export"):
        args = [command, "mixq.zoo:mlp", "--data", files / name, "--out", out]
        code, _, err = mixq(capsys, *args)
        assert_user_error(code, err, *words)
    code, _, err = mixq(capsys, "search", "mixq.zoo:mlp", "--calib", files / name)
    assert_user_error(code, err, "--calib", *words[1:])
    assert not out.exists()


def test_unexpected_errors_are_one_line_unless_debugging(capsys, monkeypatch):
    import mixq.cli.main as cli

    def boom(*_: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(cli, "load_model", boom)
    code, _, err = mixq(capsys, "plan", "mixq.zoo:mlp")
    assert code == 1 and err.strip().splitlines() == [
        "error: unexpected RuntimeError: kaboom (a bug in mixq? rerun with MIXQ_DEBUG=1 for "
        "the traceback and report it)"
    ]
    monkeypatch.setenv("MIXQ_DEBUG", "1")
    with pytest.raises(RuntimeError, match="kaboom"):
        main(["plan", "mixq.zoo:mlp"])


def fixed_batch_mlp(path: Path, batch: int = 8) -> Path:
    from tests.sim.onnx.models import mlp

    model = mlp()
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, path)
    return path


@pytest.mark.onnx
def test_forgiving_data_on_a_fixed_batch_onnx_model(capsys, tmp_path):
    model = fixed_batch_mlp(tmp_path / "fixed.onnx")
    data = tmp_path / "positional.npz"
    np.savez(data, np.random.default_rng(0).standard_normal((20, 16)))  # arr_0, float64
    out = tmp_path / "out"
    code, _, err = mixq(capsys, "analyze", model, "--data", data, "--out", out)
    assert code == 0, err
    assert "float64 cast to float32" in err and "fixed batch size" in err
    assert (out / "report.html").stat().st_size > 0
    code, _, err = mixq(capsys, "calibrate", model, "--data", data, "--out", tmp_path / "cal")
    assert code == 0, err
    assert "batches of exactly 8" in err


def test_help_lists_the_choices(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # rich wraps the help to the terminal's width
    expected = {
        "search": ["[cosine|sqnr", "accuracy]", "[ratio|fallback|pareto|budget]"],
        "analyze": ["[cosine|sqnr"],
        "export": ["aimet-1.0.0", "qaic-npi", "model.<format><suffix>"],
        "convert": ["ort-overrides"],
        "calibrate": ["minmax", "percentile"],
    }
    for command, words in expected.items():
        code, out, _ = mixq(capsys, command, "--help")
        text = "".join(out.replace("│", " ").split())
        assert code == 0
        for word in words:
            assert "".join(word.split()) in text, (command, word)
    for command in ("plan", "check", "calibrate", "analyze", "export"):
        _, out, _ = mixq(capsys, command, "--help")
        assert "--target" in out, command
        assert "arg0" in out or command in ("plan", "check"), command
