"""Loading target profiles by name or path, the built-ins read once and shared, and the one
fact every fusion lookup asks (`fuses_residual_add`), cached."""

from __future__ import annotations

import functools
from pathlib import Path

from mixq.targets.profile import BUILTIN_TARGETS, TargetProfile

__all__ = ["fuses_residual_add", "load_target"]


@functools.cache
def _builtin(name: str) -> TargetProfile:
    return TargetProfile.load(name)


def load_target(name_or_path: str | Path) -> TargetProfile:
    """`TargetProfile.load`, with built-ins read once and shared (do not mutate them).

    Example:
        >>> load_target("generic") is load_target("generic")
        True
    """
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_TARGETS:
        return _builtin(name_or_path)
    return TargetProfile.load(name_or_path)


@functools.lru_cache(maxsize=64)
def _fuses_residual_add(name: str, stamp: int) -> bool:
    return load_target(name).fuse_residual_add


def fuses_residual_add(target: str | Path) -> bool:
    """Whether ``target`` (a built-in name or a profile's path) fuses the residual add.

    What `mixq.graph.fusion.find_fusion_groups` takes as ``fuse_add`` for a Plan's target;
    cached, as every quantization-point and fusion-group lookup asks (a file is read again
    when it changes).

    Example:
        >>> fuses_residual_add("int8-int16-npu"), fuses_residual_add("ort-cpu")
        (True, False)
    """
    name = str(target)
    if name in BUILTIN_TARGETS or not Path(name).is_file():
        return _fuses_residual_add(name, 0)
    return _fuses_residual_add(name, Path(name).stat().st_mtime_ns)
