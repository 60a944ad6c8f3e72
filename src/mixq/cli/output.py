"""Results go into ``--out`` only when a command succeeds: it writes into a staging folder,
moved into place at the end, so a failed command leaves nothing behind.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a" / "b"
    >>> with staged(out) as folder:
    ...     _ = (folder / "x.txt").write_text("x")
    >>> sorted(p.name for p in out.iterdir())
    ['x.txt']
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["staged"]


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary folder whose files move into ``out`` (created with its parents) on success."""
    staging = Path(tempfile.mkdtemp(prefix="mixq-out-"))
    try:
        yield staging
        out.mkdir(parents=True, exist_ok=True)
        for path in staging.iterdir():
            if path.is_dir():
                shutil.copytree(path, out / path.name, dirs_exist_ok=True)
            else:
                shutil.copy2(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
