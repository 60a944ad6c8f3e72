"""The digits CNN is trained once and then loaded from the cache (`mixq.zoo.cache`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mixq.zoo import models
from mixq.zoo.cache import cache_dir, cache_key, load_state, save_state, torch_threads

EPOCHS = 2  # enough to tell a trained model from an untrained one, and quick


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """Counts the training runs; the cache lives in ``tmp_path``."""
    monkeypatch.setenv("MIXQ_CACHE", str(tmp_path))
    calls: list[int] = []
    real = models._fit

    def counting(*args: Any, **kwargs: Any) -> None:
        calls.append(torch.get_num_threads())
        real(*args, **kwargs)

    monkeypatch.setattr(models, "_fit", counting)
    return calls


def _accuracy(model: torch.nn.Module, data: models.DigitsData) -> float:
    with torch.no_grad():
        return float((model(data.x_test).argmax(1) == data.y_test).float().mean())


def test_second_call_loads_the_same_model(fits: list[int], tmp_path: Path) -> None:
    first, data = models.train_digits_cnn(epochs=EPOCHS)
    second, _ = models.train_digits_cnn(epochs=EPOCHS, data=data)
    assert len(fits) == 1
    assert list(tmp_path.glob("digits_cnn-*.pt"))
    assert _accuracy(second, data) == _accuracy(first, data) > 0.5
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_changed_key_retrains(fits: list[int]) -> None:
    _, data = models.train_digits_cnn(epochs=EPOCHS)
    models.train_digits_cnn(epochs=EPOCHS, seed=1, data=data)
    models.train_digits_cnn(epochs=EPOCHS + 1, data=data)
    assert len(fits) == 3


def test_a_corrupt_entry_retrains(fits: list[int], tmp_path: Path) -> None:
    _, data = models.train_digits_cnn(epochs=EPOCHS)
    (entry,) = tmp_path.glob("digits_cnn-*.pt")
    entry.write_bytes(b"not a state dict")
    model, _ = models.train_digits_cnn(epochs=EPOCHS, data=data)
    assert len(fits) == 2 and _accuracy(model, data) > 0.5
    assert load_state(entry.stem) is not None  # rewritten


def test_no_cache_always_trains(fits: list[int], tmp_path: Path) -> None:
    _, data = models.train_digits_cnn(epochs=EPOCHS, cache=False)
    models.train_digits_cnn(epochs=EPOCHS, data=data, cache=False)
    assert len(fits) == 2 and not list(tmp_path.iterdir())


def test_training_uses_one_thread_and_restores_the_callers(fits: list[int]) -> None:
    before = torch.get_num_threads()
    models.train_digits_cnn(epochs=1)
    assert fits == [1]
    assert torch.get_num_threads() == before


def test_a_stale_key_in_the_file_is_a_miss(tmp_path: Path) -> None:
    key = cache_key("x", {"a": 1})
    path = save_state(key, {"w": torch.zeros(1)}, root=tmp_path)
    path.rename(path.with_name(f"{cache_key('x', {'a': 2})}.pt"))
    assert load_state(cache_key("x", {"a": 2}), root=tmp_path) is None


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXQ_CACHE", "/somewhere")
    assert cache_dir() == Path("/somewhere")
    monkeypatch.delenv("MIXQ_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "mixq"


def test_torch_threads_restores_after_an_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(ValueError), torch_threads(1):
        raise ValueError
    assert torch.get_num_threads() == before
