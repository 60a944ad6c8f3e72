"""Model inputs from files: a ``.npz`` of arrays, split into batches along dim 0.

Arrays named ``arg0``, ``arg1``, ... are positional inputs; any other names are keyword
inputs (``input_ids``, ``attention_mask``).

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "d.npz")
    >>> np.savez(path, arg0=np.zeros((10, 4), dtype=np.float32))
    >>> [b[0].shape[0] for b in load_batches(path, batch_size=4)]
    [4, 4, 2]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixq.errors import CalibrationError

__all__ = ["load_batches"]


def load_batches(path: str | Path, batch_size: int = 32) -> list[Any]:
    """Batches of model inputs from ``path`` (tuples, or dicts for keyword inputs)."""
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
    total = next(iter(sizes.values()))
    positional = sorted((k for k in arrays if k.startswith("arg")), key=lambda k: int(k[3:]))
    batches: list[Any] = []
    for start in range(0, total, batch_size):
        part = {k: v[start : start + batch_size] for k, v in arrays.items()}
        batches.append(tuple(part[k] for k in positional) if len(positional) == len(part) else part)
    return batches
