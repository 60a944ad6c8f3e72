"""A disk cache for trained zoo models, so that a CLI call does not retrain them.

Entries are state dicts in ``$MIXQ_CACHE`` (default ``~/.cache/mixq``), one file per key.
The key hashes what decides the weights -- the training code, its hyper-parameters, the seed,
the data and the torch version -- so editing any of them trains afresh. A file that does not
load, or whose stored key differs, counts as missing: the caller retrains and overwrites it.

Example:
    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     key = cache_key("demo", {"seed": 0})
    ...     path = save_state(key, {"w": torch.ones(2)}, root=d)
    ...     load_state(key, root=d)["w"].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["cache_dir", "cache_key", "load_state", "save_state", "torch_threads"]


def cache_dir(root: str | Path | None = None) -> Path:
    """``root``, else ``$MIXQ_CACHE``, else ``~/.cache/mixq`` (not created here)."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("MIXQ_CACHE") or Path.home() / ".cache" / "mixq")


def cache_key(name: str, parts: dict[str, Any]) -> str:
    """``name`` and a SHA-256 of ``parts`` (JSON; bytes and tensors hashed by content)."""
    digest = hashlib.sha256()
    for k in sorted(parts):
        digest.update(k.encode() + b"=" + _bytes(parts[k]) + b";")
    return f"{name}-{digest.hexdigest()[:20]}"


def _bytes(value: Any) -> bytes:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().numpy().tobytes() + str(value.dtype).encode()
    if isinstance(value, bytes):
        return value
    return json.dumps(value, sort_keys=True, default=str).encode()


def _path(key: str, root: str | Path | None) -> Path:
    return cache_dir(root) / f"{key}.pt"


def load_state(key: str, root: str | Path | None = None) -> dict[str, torch.Tensor] | None:
    """The state dict stored under ``key``, or None when it is missing, unreadable or stale."""
    path = _path(key, root)
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file is a cache miss, never an error
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    state = entry.get("state")
    return state if isinstance(state, dict) else None


def save_state(key: str, state: dict[str, torch.Tensor], root: str | Path | None = None) -> Path:
    """Store ``state`` under ``key`` atomically (a temporary file renamed into place), so a
    reader never sees half a file; a cache that cannot be written is skipped silently."""
    path = _path(key, root)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"key": key, "state": state}, f)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads, then restore the caller's setting.

    Small models gain nothing from threads and lose a lot when the cores are busy: the
    digits CNN trained in 15 s on one thread and 180 s on two threads of two loaded cores.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(before)
