"""Bad cases, layer comparison, sensitivity and the advisor on models with a planted fault."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import mixq
from mixq.analysis.metrics import get_metric, sqnr
from mixq.analysis.quant_analysis import QuantAnalysis
from mixq.core import primitives as P


class Planted(nn.Module):
    """fc1-act1 -> fc2-act2 -> fc3, where fc2's channel 3 is a rare, huge spike.

    act2[3] = relu(100 * relu(x[0]) - 300) fires only when x[0] > 3; one calibration sample
    makes it fire at 500, so act2's int8 step (about 2) swamps its usual values (0 to 3).
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act1 = nn.Linear(16, 32), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(32, 32), nn.ReLU()
        self.fc3 = nn.Linear(32, 8)
        with torch.no_grad():
            self.fc1.weight[0] = 0.0
            self.fc1.weight[0, 0], self.fc1.bias[0] = 1.0, 0.0
            self.fc2.weight[3] = 0.0
            self.fc2.weight[3, 0], self.fc2.bias[3] = 100.0, -300.0

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


@pytest.fixture(scope="module")
def planted():
    model = Planted().eval()
    gen = torch.Generator().manual_seed(3)
    data = [(torch.randn(16, 16, generator=gen).clamp(-2.5, 2.5),) for _ in range(4)]
    spike = data[0][0].clone()
    spike[0, 0] = 8.0  # the one calibration sample that fires the spike channel
    sim = mixq.quantize(model, data[0], "int8").calibrate([(spike,), *data[1:]])
    return model, sim, data


def test_every_analysis_points_at_the_planted_layer(planted):
    model, sim, data = planted
    qa = QuantAnalysis(sim)
    bad = qa.find_bad_cases(data, metric="sqnr")
    index = bad.worst_index(get_metric("sqnr"))
    assert 0 <= index < 64 and bad.tables()["badcase_index"].rows[0]["sqnr"] == index
    # the bad case really is the worst sample under SQNR
    x = torch.cat([d[0] for d in data])
    per_sample = [sqnr(model(x[i : i + 1]), sim(x[i : i + 1])) for i in range(len(x))]
    assert index == min(range(len(x)), key=per_sample.__getitem__)
    iso = qa.compare_layers("isolated")
    worst = min(iso.rows, key=lambda r: r["sqnr"])
    assert worst["op"] == "act2"
    sens = qa.sensitivity("l1", "activation", mode="exact")
    assert sens.rows[0]["quantizer"] == "act2"
    advice = qa.advise()
    named = [r for r in advice.rows if r["op"] == "act2"]
    assert named and "wider than this input" in named[0]["issue"]
    assert {r["op"] for r in advice.rows} & {"act1", "fc1"} == set()


def test_isolated_error_equals_quantizing_that_op_alone(planted):
    model, sim, data = planted
    qa = QuantAnalysis(sim)
    x = data[0][0]
    iso = {r["op"]: r for r in qa.compare_layers("isolated", data=(x,)).rows}
    # direct: act1's float output through fc2 with the quantized weight, then act2's
    # quantizer (act1's own quantizer belongs to act1's isolated error, not to act2's)
    with torch.no_grad():
        h = model.act1(model.fc1(x))
        q_w, q_out = (sim.quantizer(n) for n in ("fc2.weight", "act2"))
        wq = P.fake_quantize(model.fc2.weight, q_w.scale, q_w.zero_point, "int8", axis=0)
        y = torch.relu(nn.functional.linear(h, wq, model.fc2.bias))
        yq = P.fake_quantize(y, q_out.scale, q_out.zero_point, "int8")
        ref = model.act2(model.fc2(h))
    assert iso["act2"]["sqnr"] == pytest.approx(sqnr(ref, yq), rel=1e-6)
    assert iso["act2"]["mse"] == pytest.approx(
        float((ref.double() - yq.double()).pow(2).mean()), rel=1e-6
    )


def test_accumulated_error_grows_along_a_chain():
    """Six orthogonal linears: each adds its own noise, so the error accumulates."""
    torch.manual_seed(1)
    layers = [nn.Linear(32, 32, bias=False) for _ in range(6)]
    for layer in layers:
        nn.init.orthogonal_(layer.weight)
    model = nn.Sequential(*layers).eval()
    data = [(torch.randn(32, 32),) for _ in range(2)]
    sim = mixq.quantize(model, data[0], ("int8", "int4")).calibrate(data)
    qa = QuantAnalysis(sim)
    qa.find_bad_cases(data)
    acc = [r["sqnr"] for r in qa.compare_layers("accumulated").rows]
    iso = [r["sqnr"] for r in qa.compare_layers("isolated").rows]
    assert all(b < a for a, b in itertools.pairwise(acc))  # strictly worse each step
    assert acc[-1] < acc[0] - 6  # measured 20.3 -> 10.3 dB
    assert min(iso) > acc[-1] + 5  # no single layer costs what the whole chain does


@pytest.mark.parametrize("fixture", ["bert_model", "cnn_model"])
def test_fast_sensitivity_ranks_the_same_top_ops_as_exact(fixture, request):
    model, inputs, calib = request.getfixturevalue(fixture)
    sim = mixq.quantize(model, inputs, "int8").calibrate(calib)
    qa = QuantAnalysis(sim)
    batch = tuple(torch.cat([c[i] for c in calib]) for i in range(len(calib[0])))
    exact = qa.sensitivity("l1", "both", mode="exact", data=batch)
    fast = qa.sensitivity("l1", "both", mode="fast", data=batch)
    top = {t.title: {r["quantizer"] for r in t.rows[:5]} for t in (exact, fast)}
    assert len(set.intersection(*top.values())) >= 4
    assert "mode=fast" in fast.title and "hardest samples" in fast.title
    # with every sample, fast recomputes only the affected nodes and gives exact's numbers
    full = qa.sensitivity("l1", "both", mode="fast", data=batch, samples=10**6)
    assert [r["score"] for r in full.rows] == pytest.approx([r["score"] for r in exact.rows])


def test_order_outputs_are_compared_on_their_inputs():
    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            logits = self.fc(x)
            return logits.argmax(-1), torch.topk(logits, 2).values

    x = torch.randn(8, 8)
    sim = mixq.quantize(Classifier().eval(), (x,), "int8").calibrate([(x,)])
    bad = QuantAnalysis(sim).find_bad_cases([(x,)])
    assert bad.outputs == ["fc (input of argmax)", "fc (input of topk)"]


def test_run_all_writes_every_table(planted, tmp_path):
    _, sim, data = planted
    tables = QuantAnalysis(sim).run_all(data, out_dir=tmp_path)
    assert {
        "badcase_index",
        "compare_accumulated",
        "compare_isolated",
        "sensitivity_activation",
        "sensitivity_weight",
        "advice",
    } <= set(tables)
    for name in ("compare_isolated.csv", "sensitivity_weight.json", "advice.txt", "badcase.txt"):
        assert (tmp_path / name).stat().st_size > 0


def test_sensitivity_table_feeds_the_ratio_setter(planted, tmp_path):
    model, sim, data = planted
    table = QuantAnalysis(sim).sensitivity("l1", "both", mode="exact", data=data[0])
    assert table.rows[-1]["op"] in sim.plan.ops  # model inputs are named by their reader
    path = table.save(tmp_path / "sensitivity.csv")
    from mixq.rules.setters import SensitivitySetter

    cfg = mixq.Config(setters=[SensitivitySetter(str(path), topk=2, kind="activation")])
    plan = mixq.quantize(model, data[0], cfg).plan
    top = [r["op"] for r in table.rows[:2]]
    assert sorted(top) == ["act2", "fc3"]  # the spike's tensor and the output it reaches
    raised = [op.name for op in plan if op.output == ("int16",)]
    assert raised == ["fc2", "act2", "fc3"]  # act2 raises its whole fused group


def test_bad_case_tables_num_steps_and_any_chosen_metric(planted):
    _, sim, data = planted
    qa = QuantAnalysis(sim)
    bad = qa.find_bad_cases(data, metric="atol", num_steps=2)
    tables = bad.tables()
    assert set(tables) == {"badcase_index", "badcase_value", "badcase_overall"}
    index, overall = tables["badcase_index"].rows[0], tables["badcase_overall"].rows
    assert {"cosine", "mse", "l1", "kl", "sqnr", "atol"} <= set(index)
    assert all(0 <= index[m] < 32 for m in index if m != "output")  # 2 batches of 16 read
    assert [r["metric"] for r in overall][-1] == "atol"
    x = torch.cat([d[0] for d in data[:2]])  # num_steps=2: the third batch is never read
    with torch.no_grad(), sim.disabled():
        ref = sim(x)
    with torch.no_grad():
        err = (sim(x) - ref).abs().amax(dim=1)
    assert bad.worst_index(get_metric("atol")) == int(err.argmax())


def test_compare_layers_columns_and_files(planted, tmp_path):
    _, sim, data = planted
    table = QuantAnalysis(sim).compare_layers("accumulated", data=data[0])
    stats = [f"{m}_{s}" for m in ("float", "quant") for s in ("min", "max", "mean", "var")]
    assert table.columns == [
        "op", "kind", "precision", "scale",
        "cosine", "mse", "l1", "kl", "sqnr", "atol", "rtol",
        *stats, "max_atol_diff", "atol_in_scales",
    ]  # fmt: skip
    row = next(r for r in table.rows if r["op"] == "act2")
    assert row["atol_in_scales"] == pytest.approx(row["atol"] / row["scale"])
    for suffix in (".txt", ".csv", ".json"):
        assert "act2" in table.save(tmp_path / f"compare{suffix}").read_text()
