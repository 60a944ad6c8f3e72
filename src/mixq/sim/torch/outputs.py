"""Model outputs as users' models return them: Hugging Face key / value cache objects
(``use_cache=True``, the default of every ``*ForCausalLM``) are not tensors torch.export can
return, so the capture's copy of the model returns them as nested tuples of tensors instead,
and says so in a note."""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["flatten_cache", "flatten_cache_outputs"]


def _is_cache(value: Any) -> bool:
    """A key/value cache object (transformers' ``Cache`` and subclasses), by class name so
    that transformers need not be imported."""
    if isinstance(value, (torch.Tensor, dict, list, tuple)):
        return False
    return any(c.__name__.endswith("Cache") for c in type(value).__mro__ if c is not object)


def flatten_cache(cache: Any) -> Any:
    """A cache object as nested tuples of its tensors: per layer ``(keys, values)``; an
    encoder-decoder cache as ``(self-attention layers, cross-attention layers)``."""
    if hasattr(cache, "self_attention_cache") and hasattr(cache, "cross_attention_cache"):
        return (flatten_cache(cache.self_attention_cache),
                flatten_cache(cache.cross_attention_cache))  # fmt: skip
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return tuple(
            tuple(
                t
                for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
                if isinstance(t, torch.Tensor)
            )
            for layer in layers
        )
    return tuple(v for v in vars(cache).values() if isinstance(v, torch.Tensor))


def _without_caches(out: Any) -> Any:
    if _is_cache(out):
        return flatten_cache(out)
    if isinstance(out, dict):  # also transformers' ModelOutput, an OrderedDict
        for key, value in list(out.items()):
            if _is_cache(value):
                out[key] = flatten_cache(value)
        return out
    if isinstance(out, tuple) and not hasattr(out, "_fields"):
        return tuple(_without_caches(v) for v in out)
    return out


def flatten_cache_outputs(model: torch.nn.Module) -> list[str]:
    """Let ``model`` (the capture's own copy) return key/value caches as tuples of tensors.

    Hugging Face causal LMs return a ``DynamicCache`` (``use_cache=True`` is their default),
    which torch.export cannot put in an output. The copy's forward returns the same output
    with each cache replaced by its tensors (per layer ``(keys, values)``), so the Sim
    returns what the model does, with plain tuples where the model had cache objects.
    """
    forward = model.forward
    notes: list[str] = []

    @functools.wraps(forward)
    def flat_forward(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        found = [type(v).__name__ for v in _cache_values(out)]
        if found and not notes:
            notes.append(
                f"the model returns {', '.join(found)}: the Sim returns its tensors as tuples "
                "(per layer (keys, values)); pass use_cache=False to leave them out"
            )
        return _without_caches(out)

    model.forward = flat_forward
    return notes


def _cache_values(out: Any) -> list[Any]:
    if _is_cache(out):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if _is_cache(v)]
    if isinstance(out, tuple):
        return [v for v in out if _is_cache(v)]
    return []
