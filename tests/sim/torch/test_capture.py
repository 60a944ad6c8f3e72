from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq import CaptureError
from mixq.graph.fusion import find_fusion_groups
from mixq.sim.torch.capture import capture


def test_cnn_ops_names_modules_and_fusion(cnn_model):
    model, inputs, _ = cnn_model
    g = capture(model, inputs).graph
    ops = {op.name: op for op in g}
    assert ops["stem.0"].kind == "conv" and ops["stem.0"].weights == {"weight": "stem.0.weight"}
    assert ops["block.add"].kind == "add" and ops["block.add"].module == "block"
    # the residual block's ReLU module runs twice: two ops, each with its own output
    assert ops["block.relu"].module == ops["block.relu#1"].module == "block.relu"
    groups = find_fusion_groups(g)
    assert groups["block.conv2"].ops == ("block.conv2", "block.bn2", "block.add", "block.relu#1")
    assert groups["stem.0"].ops == ("stem.0", "stem.1", "stem.2")
    assert ops["flatten"].kind == "flatten" and g.outputs == ["fc"]


def test_mlp_capture(mlp_model):
    model, inputs, _ = mlp_model
    g = capture(model, inputs).graph
    assert [(op.name, op.kind) for op in g] == [
        ("0", "flatten"),
        ("1", "linear"),
        ("2", "relu"),
        ("3", "linear"),
        ("4", "gelu"),
        ("5", "linear"),
    ]


def test_bert_capture_names_and_masks(bert_model):
    model, inputs, _ = bert_model
    g = capture(model, inputs).graph
    linears = [op.name for op in g if op.kind == "linear"]
    assert len(linears) == 13 and "encoder.layer.0.output.dense" in linears
    assert g.ops["encoder.layer.1.attention.self.softmax"].kind == "softmax"
    # the attention mask is float but computed from integer inputs only: not an activation
    mask_add = g.ops["encoder.layer.0.attention.self.add"]
    assert [g.tensors[t].quantizable for t in mask_add.inputs] == [True, False]
    assert not g.tensors["input_ids"].quantizable


def test_module_called_twice_gives_two_ops():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    g = capture(Twice(), (torch.randn(2, 4),)).graph
    assert [op.name for op in g if op.kind == "linear"] == ["fc", "fc#1"]
    assert g.ops["fc#1"].weights == {"weight": "fc.weight"}


def test_data_dependent_control_flow_names_the_line():
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # the line the error must name
                return x * 2
            return x

    with pytest.raises(CaptureError) as info:
        capture(Branchy(), (torch.randn(3),))
    message = str(info.value)
    assert "test_capture.py:" in message and "torch.where" in message


def test_capture_leaves_the_model_untouched(cnn_model):
    model, inputs, _ = cnn_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    capture(model, inputs)
    assert model.training
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
