"""Progress bars for every long step (calibration, sensitivity, search, export check).

Example:
    >>> list(progress_bar([1, 2, 3], "counting", disable=True))
    [1, 2, 3]
    >>> list(progress_bar([1, 2, 3], "counting", delay=60))   # done before a bar is due
    [1, 2, 3]
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["progress_bar"]

T = TypeVar("T")


def progress_bar(
    items: Iterable[T],
    description: str,
    total: int | None = None,
    disable: bool = False,
    delay: float = 0.0,
) -> Iterator[T]:
    """Yield ``items`` while drawing a bar on stderr (off when MIXQ_PROGRESS=0).

    With ``delay`` the bar appears only once the loop has run that many seconds, so a step
    that turns out quick (a cache hit, a small model) prints nothing.
    """
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
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, transient=True, console=Console(stderr=True))
    task = bar.add_task(description, total=total)
    start, shown = time.monotonic(), delay <= 0
    if shown:
        bar.start()
    try:
        for item in items:
            yield item
            bar.advance(task)
            if not shown and time.monotonic() - start >= delay:
                bar.start()
                shown = True
    finally:
        if shown:
            bar.stop()
