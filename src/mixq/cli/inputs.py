"""Model inputs from files: a ``.npz`` of arrays, split into batches along dim 0.

Arrays named ``arg0``, ``arg1``, ... are positional inputs; any other names are keyword
inputs (``input_ids``, ``attention_mask``). An array of labels in the same file is left
out of the inputs (``exclude``) and read by `load_labels`, split into the same batches.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "d.npz")
    >>> np.savez(path, arg0=np.zeros((10, 4), dtype=np.float32))
    >>> [b[0].shape[0] for b in load_batches(path, batch_size=4)]
    [4, 4, 2]
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixq.core.errors import CalibrationError

__all__ = ["load_batches", "load_labels"]


def load_batches(path: str | Path, batch_size: int = 32, exclude: Iterable[str] = ()) -> list[Any]:
    """Batches of model inputs from ``path`` (tuples, or dicts for keyword inputs); arrays
    named in ``exclude`` (labels) are not inputs."""
    arrays = _read(path)
    skip = set(exclude)
    arrays = {k: v for k, v in arrays.items() if k not in skip}
    if not arrays:
        raise CalibrationError(f"{path} holds no input arrays besides {sorted(skip)}")
    total = len(next(iter(arrays.values())))
    positional = sorted((k for k in arrays if k.startswith("arg")), key=lambda k: int(k[3:]))
    batches: list[Any] = []
    for start in range(0, total, batch_size):
        part = {k: v[start : start + batch_size] for k, v in arrays.items()}
        batches.append(tuple(part[k] for k in positional) if len(positional) == len(part) else part)
    return batches


def load_labels(path: str | Path, key: str, batch_size: int = 32) -> list[torch.Tensor]:
    """The array ``key`` of ``path`` in batches of ``batch_size``, matching `load_batches`.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "d.npz")
        >>> np.savez(path, arg0=np.zeros((5, 4), dtype=np.float32), y=np.arange(5))
        >>> [y.tolist() for y in load_labels(path, "y", batch_size=2)]
        [[0, 1], [2, 3], [4]]
        >>> len(load_batches(path, batch_size=2, exclude=["y"])[0])
        1
    """
    arrays = _read(path)
    if key not in arrays:
        raise CalibrationError(f"{path} has no array {key!r}; it holds {sorted(arrays)}")
    labels = arrays[key]
    return [labels[start : start + batch_size] for start in range(0, len(labels), batch_size)]


def _read(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"data file {path} does not exist")
    with np.load(path) as npz:
        arrays = {k: torch.from_numpy(npz[k]) for k in npz.files}
    if not arrays:
        raise CalibrationError(f"{path} holds no arrays")
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise CalibrationError(f"arrays in {path} differ in their first dimension: {sizes}")
    return arrays
