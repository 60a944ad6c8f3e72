"""A float-exact side path of a linear layer: a few input channels computed on their own.

`attach_side_path` gives an ``nn.Linear`` a child `OutlierPath` (``outlier_path``) holding
the columns of the chosen input channels. The layer's input is multiplied by a mask that
is 0 on those channels (through the branch multiply of `mixq.transforms.pairs`, so a later
smoothing folds into the same ``Mul``) and their columns are zeroed; the side path reads
the layer's input before that multiply and its output is added to the layer's. In float
nothing changes; quantized, the layer's input no longer carries those channels' range,
and the side path's few channels get a quantizer of their own.

Example:
    >>> import torch
    >>> layer = torch.nn.Linear(4, 2)
    >>> x = torch.randn(3, 4)
    >>> before = layer(x)
    >>> path = attach_side_path(layer, torch.tensor([1]), torch.ones(4))
    >>> bool(torch.allclose(layer(x), before, atol=1e-6)), path.linear.weight.shape
    (True, torch.Size([2, 1]))
    >>> float(layer.weight[:, 1].detach().abs().sum())
    0.0
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["OUTLIER_PATH", "OutlierPath", "attach_side_path", "detach_side_path", "side_path"]

OUTLIER_PATH = "outlier_path"  # the child module of a linear that holds its side path


class OutlierPath(nn.Module):
    """``x[..., index] @ linear.weight.T``: the chosen input channels of a linear layer."""

    index: torch.Tensor

    def __init__(self, index: torch.Tensor, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.detach().clone().long())
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
        self.pending: list[torch.Tensor] = []  # between the layer's pre-hook and its hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.index_select(-1, self.index))


def side_path(module: nn.Module) -> OutlierPath | None:
    """The module's side path, if it has one."""
    path = getattr(module, OUTLIER_PATH, None)
    return path if isinstance(path, OutlierPath) else None


def _compute_side(module: nn.Module, args: tuple[Any, ...]) -> None:
    path = side_path(module)
    if path is not None and args:  # one call at a time: a raised forward leaves nothing behind
        path.pending[:] = [path(args[0])]


def _add_side(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    path = side_path(module)
    if path is None or not path.pending:
        return None
    return output + path.pending.pop()


@torch.no_grad()
def attach_side_path(
    module: nn.Linear, index: torch.Tensor, input_scale: torch.Tensor
) -> OutlierPath:
    """Move the input channels ``index`` of ``module`` to a side path. ``input_scale`` is
    what the layer multiplies its input by already (a smoothing's ``1 / s``; ones if none):
    the side path reads the input before it, so it takes the columns times that scale. The
    caller masks the channels out of the layer's input."""
    columns = module.weight[:, index] * input_scale[index].to(module.weight.dtype)
    path = OutlierPath(index, columns)
    module.add_module(OUTLIER_PATH, path)
    module.weight[:, index] = 0
    module.register_forward_pre_hook(_compute_side, prepend=True)
    module.register_forward_hook(_add_side)
    return path


def detach_side_path(module: nn.Module) -> None:
    """Remove the side path and its hooks (the caller restores the weights)."""
    module._modules.pop(OUTLIER_PATH, None)
    for hooks, fn in (
        (module._forward_pre_hooks, _compute_side),
        (module._forward_hooks, _add_side),
    ):
        for key, hook in list(hooks.items()):
            if hook is fn:
                del hooks[key]
