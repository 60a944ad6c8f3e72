"""`quiet_dependencies`: silence, for one block, what torch prints on every export or graph
copy that says nothing about the user's model (matched by message; every other warning
still shows)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["quiet_dependencies"]


# What torch prints on every export that says nothing about the user's model, by message:
# its deprecated pytree spec (copied with the graph module), the training flag of mixq's own
# rewritten copy (its graph is already traced), and the torchvision ops it skips.
_QUIET_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"Exporting a model while it is in training mode", UserWarning),
)


_QUIET_LOGS = {"torch.onnx._internal.exporter._registration": "torchvision is not installed"}


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def quiet_dependencies() -> Iterator[None]:
    """Silence, for the block only, the dependency chatter an export triggers (by message:
    every other warning still shows)."""
    filters = [(logging.getLogger(n), _DropMessage(t)) for n, t in _QUIET_LOGS.items()]
    with warnings.catch_warnings():
        for message, category in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger, f in filters:
            logger.addFilter(f)
        try:
            yield
        finally:
            for logger, f in filters:
                logger.removeFilter(f)
