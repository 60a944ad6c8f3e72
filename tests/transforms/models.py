"""Models with planted outlier channels, for the transform tests and bench/transforms.py."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mixq import zoo

__all__ = ["OUTLIER_CHANNELS", "OUTLIER_FACTOR", "bert_batches", "outlier_bert", "plant"]

OUTLIER_FACTOR = 30.0
OUTLIER_CHANNELS = (3, 17, 42, 101)


@torch.no_grad()
def plant(producer: nn.Linear, consumer: nn.Linear, channels: tuple[int, ...], factor: float):
    """Multiply output channels of ``producer`` by ``factor`` and divide the consumer's
    matching input columns by it: the float function is unchanged (through ReLU or the
    attention's probs @ V), but the activation between them has a few large channels."""
    idx = list(channels)
    producer.weight[idx] *= factor
    producer.bias[idx] *= factor
    consumer.weight[:, idx] /= factor


def outlier_bert(
    factor: float = OUTLIER_FACTOR, channels: tuple[int, ...] = OUTLIER_CHANNELS, **kwargs: Any
) -> tuple[nn.Module, tuple[Any, ...]]:
    """`mixq.zoo.bert` with a ReLU FFN whose intermediate output (4 channels) and attention
    value (2 channels) are ``factor`` times larger than the rest.

    Weights are drawn 5x wider than Hugging Face's default (``initializer_range`` 0.1), so
    that the attention and FFN branches matter next to the residual stream (with 0.02 they
    barely change the output, and neither do their quantization errors)."""
    kwargs = {"hidden_act": "relu", "initializer_range": 0.1, **kwargs}
    model, inputs = zoo.bert(**kwargs)
    for layer in model.encoder.layer:
        plant(layer.intermediate.dense, layer.output.dense, channels, factor)
        plant(layer.attention.self.value, layer.attention.output.dense, channels[:2], factor)
    return model, inputs


def bert_batches(count: int = 4, batch: int = 4, seq: int = 16, seed: int = 100) -> list[Any]:
    """Random token batches (ids, attention mask) for the zoo BERT's vocabulary of 500."""
    out = []
    for s in range(count):
        g = torch.Generator().manual_seed(seed + s)
        ids = torch.randint(0, 500, (batch, seq), generator=g)
        out.append((ids, torch.ones(batch, seq, dtype=torch.long)))
    return out
