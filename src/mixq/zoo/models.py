"""Small models built in code, for the demo, the tests and the benchmarks (no downloads).

Each factory returns ``(model, example_inputs)`` so it can be named on the command line as
``mixq.zoo:digits_cnn``.

Example:
    >>> model, inputs = mlp()
    >>> model(*inputs).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from mixq.core.progress import progress_bar
from mixq.zoo.cache import cache_key, load_state, save_state, torch_threads

__all__ = [
    "DigitsCNN",
    "DigitsData",
    "bert",
    "digits_cnn",
    "digits_data",
    "mlp",
    "resnet_like",
    "train_digits_cnn",
]


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )


class _Residual(nn.Module):
    """conv-bn-relu, conv-bn, + identity, relu: the ResNet basic block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + x)


class DigitsCNN(nn.Module):
    """About 10k parameters: conv-bn-relu stem, a residual block, a strided stage, a head."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = _ConvBNReLU(1, width)
        self.block = _Residual(width)
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.block(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass
class DigitsData:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) float tensors in [0, 1]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def calibration_batches(self, size: int = 64) -> list[tuple[torch.Tensor]]:
        """The training images in batches of ``size``."""
        return [(self.x_train[i : i + size],) for i in range(0, len(self.x_train), size)]


def digits_data(seed: int = 0) -> DigitsData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return DigitsData(x_tr, y_tr, x_te, y_te)


def train_digits_cnn(
    epochs: int = 20,
    seed: int = 0,
    data: DigitsData | None = None,
    progress: bool = False,
    cache: bool = True,
) -> tuple[DigitsCNN, DigitsData]:
    """Train `DigitsCNN` on the digits (~15 s on one core, ~98 % test accuracy), or load it.

    With ``cache`` the weights are kept in ``$MIXQ_CACHE`` (default ``~/.cache/mixq``) under
    a hash of the training code, ``epochs``, ``seed``, the data and the torch version, so
    only the first call trains; a corrupt or stale entry trains again (`mixq.zoo.cache`).
    Training runs on one thread (restored afterwards): for a model this small, more threads
    only fight over the cores. ``progress`` draws a bar once training passes a second.
    """
    data = data or digits_data(seed)
    key = cache_key("digits_cnn", _training_key(epochs, seed, data)) if cache else ""
    state = load_state(key) if cache else None
    if state is not None:
        model = DigitsCNN()
        with contextlib.suppress(RuntimeError):  # a state of another shape: train afresh
            model.load_state_dict(state)
            return model.eval(), data
    with torch_threads(1):
        model = _trained(epochs, seed, data, progress)
    if cache:
        save_state(key, model.state_dict())
    return model.eval(), data


def _training_key(epochs: int, seed: int, data: DigitsData) -> dict[str, Any]:
    """Everything the trained weights depend on."""
    tensors = (data.x_train, data.y_train)
    return {
        "code": _TRAINING_CODE,
        "epochs": epochs,
        "seed": seed,
        "torch": torch.__version__,
        "data": b"".join(t.contiguous().numpy().tobytes() for t in tensors),
    }


def _trained(epochs: int, seed: int, data: DigitsData, progress: bool) -> DigitsCNN:
    """A seeded `DigitsCNN` trained by `_fit`."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    _fit(model, data, epochs, seed, progress)
    return model


def _fit(model: DigitsCNN, data: DigitsData, epochs: int, seed: int, progress: bool) -> None:
    """The training loop: Adam with a one-cycle schedule, batches of 64, reproducible."""
    steps_per_epoch = (len(data.x_train) + 63) // 64
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1e-2, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    bar = progress_bar(range(epochs), "training the digits CNN", disable=not progress, delay=1.0)
    for _ in bar:
        order = torch.randperm(len(data.x_train), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


# the source that decides the weights, read once at import (a patched trainer keeps the key)
_TRAINING_CODE = "".join(
    inspect.getsource(obj) for obj in (_ConvBNReLU, _Residual, DigitsCNN, _trained, _fit)
)


def digits_cnn() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The trained digits CNN (from the cache after the first call) and a batch of test
    images."""
    model, data = train_digits_cnn(progress=True)
    return model, (data.x_test[:32],)


def resnet_like(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """An untrained DigitsCNN with non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    model = DigitsCNN(width=8)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(cast(torch.Tensor, m.running_mean), -0.5, 0.5)
            nn.init.uniform_(cast(torch.Tensor, m.running_var), 0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval(), (torch.rand(8, 1, 8, 8),)


def mlp(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.GELU(),
        nn.Linear(64, 10),
    )
    return model.eval(), (torch.randn(4, 1, 8, 8),)


def bert(
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    seq: int = 16,
    batch: int = 4,
    seed: int = 0,
    attn: str = "eager",
    **config: Any,
) -> tuple[nn.Module, tuple[Any, ...]]:
    """A Hugging Face ``BertModel`` from a ``BertConfig`` with random weights (no download)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        vocab_size=500,
        max_position_embeddings=128,
        **{"attn_implementation": attn, **config},
    )
    torch.manual_seed(seed)
    model = BertModel(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen)
    return model, (ids, torch.ones(batch, seq, dtype=torch.long))
