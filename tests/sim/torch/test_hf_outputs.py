"""Hugging Face models as they come: cache objects and ModelOutputs in the outputs (issue 11,
class 4)."""

from __future__ import annotations

import pytest
import torch

import mixq

transformers = pytest.importorskip("transformers")


def _tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(1, 64, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.int64)
    mask[1, 4:] = 0
    return model, {"input_ids": ids, "attention_mask": mask}


def test_causal_lm_with_its_default_cache_is_captured():
    model, inputs = _tiny_llama()
    assert model.config.use_cache  # the default users leave alone
    sim = mixq.quantize(model, inputs, "int8")
    assert any("DynamicCache" in n for n in sim.capture_notes)
    with sim.disabled(), torch.no_grad():
        got, want = sim(**inputs), model(**inputs)
    assert torch.equal(got.logits, want.logits)
    ((keys, values),) = got.past_key_values
    assert torch.equal(keys, want.past_key_values.layers[0].keys)
    assert torch.equal(values, want.past_key_values.layers[0].values)
