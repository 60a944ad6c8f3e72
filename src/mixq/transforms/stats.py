"""Calibration statistics of layer inputs, gathered with forward hooks on the float model.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> with record_inputs(model, ["2"], keep=8, gram=True) as stats:
    ...     _ = run_batches(model, [torch.randn(5, 4)])
    >>> stats["2"].absmax.shape, stats["2"].samples().shape, stats["2"].gram.shape
    (torch.Size([3]), torch.Size([5, 3]), torch.Size([3, 3]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mixq.sim.torch.capture import split_inputs

__all__ = ["InputStats", "has_rows", "layer_rows", "record_inputs", "run_batches"]


class InputStats:
    """Per-channel max |x|, per-channel mean and a sample of the inputs of one module.

    The channel axis is the last one for linear layers and axis 1 for convolutions. The
    sample keeps up to ``keep`` rows (linear: vectors of features; conv: whole input maps).
    With ``rows``, the Gram matrix ``E[r r^T]`` of the rows the layer multiplies by its
    weight (`layer_rows`) is accumulated over all the data.
    """

    def __init__(
        self,
        channel_axis: int,
        keep: int = 0,
        rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.channel_axis = channel_axis
        self.keep = keep
        self.rows = rows
        self._gram: torch.Tensor | None = None
        self.gram_rows = 0
        self.absmax: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self.count = 0
        self._samples: list[torch.Tensor] = []
        self._kept = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        channels = x.movedim(self.channel_axis, -1).reshape(-1, x.shape[self.channel_axis])
        amax, total = channels.abs().amax(dim=0), channels.sum(dim=0).double()
        self.absmax = amax if self.absmax is None else torch.maximum(self.absmax, amax)
        self._sum = total if self._sum is None else self._sum + total
        self.count += channels.shape[0]
        if self._kept < self.keep:
            rows = channels if self.channel_axis == x.ndim - 1 else x
            rows = rows[: self.keep - self._kept].clone()
            self._samples.append(rows)
            self._kept += rows.shape[0]
        if self.rows is not None:
            r = self.rows(x)
            gram = (r.T @ r).double()
            self._gram = gram if self._gram is None else self._gram + gram
            self.gram_rows += r.shape[0]

    @property
    def gram(self) -> torch.Tensor:
        """``E[r r^T]`` over the rows the layer's weight multiplies (needs ``rows``)."""
        if self._gram is None:
            raise ValueError("no Gram matrix was accumulated")
        return (self._gram / self.gram_rows).float()

    @property
    def mean(self) -> torch.Tensor:
        if self._sum is None:
            raise ValueError("no inputs were recorded")
        return (self._sum / self.count).float()

    def samples(self) -> torch.Tensor:
        """The kept inputs: (rows, channels) for linear layers, (n, C, ...) for convs."""
        if not self._samples:
            raise ValueError("no input samples were kept")
        return torch.cat(self._samples)


def _channel_axis(module: nn.Module) -> int:
    return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1


def has_rows(module: nn.Module) -> bool:
    """Whether `layer_rows` can unfold this layer's input (linear, zero-padded conv2d)."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def layer_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows ``r`` with ``y = W_flat r`` per output position: the input features of a
    linear layer, the unfolded patches of a conv2d (``W`` flattened to (out, in * kh * kw))."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    conv: Any = module
    patches = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


@contextmanager
def record_inputs(
    model: nn.Module, paths: Iterable[str], keep: int = 0, gram: bool = False
) -> Iterator[dict[str, InputStats]]:
    """Record the first input of each module named in ``paths`` while the block runs.

    Args:
        keep: input rows (linear) or maps (conv) to keep as a sample.
        gram: accumulate the Gram matrix of `layer_rows` (modules `has_rows` accepts).
    """
    stats: dict[str, InputStats] = {}
    handles = []
    for path in dict.fromkeys(paths):
        module = model.get_submodule(path)
        rows = partial(layer_rows, module) if gram and has_rows(module) else None
        stat = stats[path] = InputStats(_channel_axis(module), keep, rows)

        def hook(_: nn.Module, args: tuple[Any, ...], stat: InputStats = stat) -> None:
            if args and isinstance(args[0], torch.Tensor):
                stat.update(args[0])

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


def run_batches(model: nn.Module, batches: Iterable[Any]) -> list[Any]:
    """Run ``batches`` through ``model`` without gradients; returns the outputs."""
    outputs = []
    with torch.no_grad():
        for batch in batches:
            args, kwargs = split_inputs(batch)
            outputs.append(model(*args, **kwargs))
    return outputs
