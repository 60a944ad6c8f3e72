"""Model inputs from files: a ``.npz`` of arrays, split into batches along dim 0.

Arrays are matched to the model's inputs by name:

- ``arg0``, ``arg1``, ... are positional inputs, in order (``np.savez(path, arg0=x)``);
- ``arr_0``, ``arr_1``, ... are what ``np.savez(path, x, y)`` writes: positional too;
- any other name is the name of an input (``input_ids``, ``attention_mask``; for an ONNX
  model its graph input names).

An array of labels in the same file is left out of the inputs (``exclude``) and read by
`load_labels`, split into the same batches. Given the model's inputs (`ModelInput`), arrays
are checked against them: a float array of another float type (float64 from NumPy) is cast
to the input's type with a note, an integer array likewise; a sample shape the model cannot
take is an error naming the input and both shapes; a model with a fixed batch size gets
batches of exactly that size (the last one filled up with the first samples again).

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "d.npz")
    >>> np.savez(path, arg0=np.zeros((10, 4), dtype=np.float32))
    >>> [b[0].shape[0] for b in load_batches(path, batch_size=4)]
    [4, 4, 2]
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixq.core.errors import CalibrationError

__all__ = ["ModelInput", "fixed_batch", "load_batches", "load_labels", "read_arrays"]

_POSITIONAL = re.compile(r"(?:arg|arr_)(\d+)")


@dataclass(frozen=True)
class ModelInput:
    """One model input: its names, sample shape (``None``: any size) and dtype."""

    names: tuple[str, ...]
    shape: tuple[int | None, ...] | None
    dtype: torch.dtype | None
    fixed_batch: int | None = None
    example: tuple[int, ...] | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.names[0]


def fixed_batch(inputs: Iterable[ModelInput] | None) -> int | None:
    """The batch size every input declares, if the model has a fixed one."""
    sizes = {i.fixed_batch for i in inputs or ()}
    return sizes.pop() if len(sizes) == 1 else None


def load_batches(
    path: str | Path,
    batch_size: int = 32,
    exclude: Iterable[str] = (),
    inputs: list[ModelInput] | None = None,
    notes: list[str] | None = None,
) -> list[Any]:
    """Batches of model inputs from ``path`` (tuples, or dicts for keyword inputs); arrays
    named in ``exclude`` (labels) are not inputs. With ``inputs``, arrays are matched,
    cast and checked against them, and ``notes`` collects what was changed."""
    skip = set(exclude)
    arrays = {k: v for k, v in read_arrays(path).items() if k not in skip}
    if not arrays:
        raise CalibrationError(f"{path} holds no input arrays besides {sorted(skip)}")
    arranged = _arrange(path, arrays, inputs, notes if notes is not None else [])
    size = _batch_size(path, batch_size, inputs, notes)
    total = len(next(iter(arrays.values())))
    parts = {k: _split(v, size, fill=inputs is not None and fixed_batch(inputs) is not None)
             for k, v in arranged.items()}  # fmt: skip
    count = len(next(iter(parts.values())))
    if inputs is not None and total % size and fixed_batch(inputs):
        (notes if notes is not None else []).append(
            f"note: the model takes batches of exactly {size}; the last batch repeats "
            f"{size - total % size} of the first samples"
        )
    if all(isinstance(k, int) for k in parts):
        return [tuple(parts[k][i] for k in sorted(parts)) for i in range(count)]
    return [{str(k): parts[k][i] for k in parts} for i in range(count)]


def load_labels(
    path: str | Path, key: str, batch_size: int = 32, inputs: list[ModelInput] | None = None
) -> list[torch.Tensor]:
    """The array ``key`` of ``path`` in batches matching `load_batches`.

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "d.npz")
        >>> np.savez(path, arg0=np.zeros((5, 4), dtype=np.float32), y=np.arange(5))
        >>> [y.tolist() for y in load_labels(path, "y", batch_size=2)]
        [[0, 1], [2, 3], [4]]
        >>> len(load_batches(path, batch_size=2, exclude=["y"])[0])
        1
    """
    arrays = read_arrays(path)
    if key not in arrays:
        raise CalibrationError(
            f"--labels {key!r}: {path} has no such array; it holds {', '.join(sorted(arrays))}"
        )
    size = _batch_size(path, batch_size, inputs, None)
    return _split(arrays[key], size, fill=fixed_batch(inputs) is not None)


def read_arrays(path: str | Path) -> dict[str, torch.Tensor]:
    """Every array of the ``.npz`` at ``path``, all with the same first dimension."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"data file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: torch.from_numpy(np.ascontiguousarray(npz[k])) for k in npz.files}
    except (OSError, ValueError, AttributeError) as e:
        raise CalibrationError(
            f"{path} is not a NumPy .npz file of arrays ({e}); write one with "
            "np.savez(path, arg0=x) or np.savez(path, x)"
        ) from None
    if not arrays:
        raise CalibrationError(f"{path} holds no arrays")
    sizes = {k: len(v) if v.ndim else 0 for k, v in arrays.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise CalibrationError(
            f"arrays in {path} must share their first (sample) dimension; they have {sizes}"
        )
    return arrays


def _arrange(
    path: str | Path,
    arrays: dict[str, torch.Tensor],
    inputs: list[ModelInput] | None,
    notes: list[str],
) -> dict[int | str, torch.Tensor]:
    """Arrays keyed by input position (int), or by name where no position is known."""
    keyed: dict[int | str, torch.Tensor] = {}
    for key, value in arrays.items():
        keyed[_position(path, key, inputs)] = value
    if inputs is None:
        if not all(isinstance(k, int) for k in keyed):
            return {_name(k): v for k, v in keyed.items()}
        return keyed
    missing = [f"{i.name} (arg{n})" for n, i in enumerate(inputs) if n not in keyed]
    if missing:
        raise CalibrationError(
            f"{path} has no array for model input(s) {', '.join(missing)}; it holds "
            f"{', '.join(arrays)}. Name arrays arg0, arg1, ... in input order, or by input name"
        )
    return {n: _checked(path, _key(arrays, keyed[n]), keyed[n], inputs[n], notes)
            for n in sorted(k for k in keyed if isinstance(k, int))}  # fmt: skip


def _position(path: str | Path, key: str, inputs: list[ModelInput] | None) -> int | str:
    match = _POSITIONAL.fullmatch(key)
    if inputs is None:
        return int(match.group(1)) if match else key
    for n, spec in enumerate(inputs):
        if key in spec.names:
            return n
    if match and int(match.group(1)) < len(inputs):
        return int(match.group(1))
    names = [n for spec in inputs for n in spec.names]
    from mixq.cli.errors import did_you_mean

    raise CalibrationError(
        f"{path}: array {key!r} is not an input of the model{did_you_mean(key, names) or '.'} The "
        f"model takes {len(inputs)} input(s): "
        + ", ".join(f"arg{n} = {spec.name}" for n, spec in enumerate(inputs))
        + " (name arrays arg0, arg1, ... or by input name; pass labels with --labels)"
    )


def _name(key: int | str) -> str:
    return f"arg{key}" if isinstance(key, int) else key


def _key(arrays: dict[str, torch.Tensor], value: torch.Tensor) -> str:
    return next(k for k, v in arrays.items() if v is value)


def _checked(
    path: str | Path, key: str, value: torch.Tensor, spec: ModelInput, notes: list[str]
) -> torch.Tensor:
    where = f"{path}: array {key!r} (model input {spec.name!r})"
    if spec.dtype is not None and value.dtype != spec.dtype:
        same_kind = value.dtype.is_floating_point == spec.dtype.is_floating_point
        if not same_kind or torch.bool in (value.dtype, spec.dtype):
            raise CalibrationError(
                f"{where} holds {_dtype(value.dtype)} but the model takes "
                f"{_dtype(spec.dtype)}; save it as {_dtype(spec.dtype)}"
            )
        notes.append(f"note: {where}: {_dtype(value.dtype)} cast to {_dtype(spec.dtype)}")
        value = value.to(spec.dtype)
    if spec.shape is not None and not _fits(tuple(value.shape[1:]), spec.shape):
        wanted = _shape(spec.example) if spec.example is not None else _shape(spec.shape)
        raise CalibrationError(
            f"{where} has samples of shape {_shape(value.shape[1:])} but the model takes "
            f"{wanted} per sample (? = any size; the first dimension of every array counts "
            "samples)"
        )
    return value


def _fits(shape: tuple[int, ...], wanted: tuple[int | None, ...]) -> bool:
    return len(shape) == len(wanted) and all(
        w is None or w == s for s, w in zip(shape, wanted, strict=True)
    )


def _shape(shape: Iterable[int | None]) -> str:
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _batch_size(
    path: str | Path, batch_size: int, inputs: list[ModelInput] | None, notes: list[str] | None
) -> int:
    if batch_size < 1:
        raise CalibrationError(f"--batch-size {batch_size}: give a positive number")
    fixed = fixed_batch(inputs)
    if fixed is None or fixed == batch_size:
        return batch_size
    if notes is not None:
        notes.append(f"note: the model takes batches of exactly {fixed}; {path} is read in "
                     f"batches of {fixed}, not {batch_size}")  # fmt: skip
    return fixed


def _split(value: torch.Tensor, size: int, fill: bool) -> list[torch.Tensor]:
    parts = [value[start : start + size] for start in range(0, len(value), size)]
    if fill and len(parts[-1]) < size:
        repeats = -(-size // len(value)) + 1
        parts[-1] = torch.cat([parts[-1], value.repeat(repeats, *[1] * (value.ndim - 1))])[:size]
    return parts
