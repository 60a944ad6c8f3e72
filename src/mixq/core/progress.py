"""Progress bars for every long step (calibration, sensitivity, search, export check).

Example:
    >>> list(progress_bar([1, 2, 3], "counting", disable=True))
    [1, 2, 3]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress_bar"]

T = TypeVar("T")


def progress_bar(
    items: Iterable[T], description: str, total: int | None = None, disable: bool = False
) -> Iterator[T]:
    """Yield ``items`` while drawing a bar on stderr (off when MIXQ_PROGRESS=0)."""
    if disable or os.environ.get("MIXQ_PROGRESS") == "0":
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
