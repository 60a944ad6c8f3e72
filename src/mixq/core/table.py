"""A small table: rows of dicts that print as text and save as CSV, JSON or text.

Example:
    >>> t = Table([{"op": "fc", "sqnr": 41.5}], title="demo")
    >>> t.rows[0]["op"]
    'fc'
    >>> print(t.to_text().splitlines()[0])
    demo
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Table", "cell_text"]


def cell_text(value: Any, digits: int = 6) -> str:
    """One cell as text: floats to ``digits`` significant digits, lists joined with commas,
    dicts as ``key=value``, None as ``-``."""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell_text(v, digits) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={cell_text(v, digits)}" for k, v in value.items())
    return "-" if value is None else str(value)


@dataclass
class Table:
    rows: list[dict[str, Any]]
    title: str = ""
    columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.columns:
            seen: dict[str, None] = {}
            for row in self.rows:
                seen.update(dict.fromkeys(row))
            self.columns = list(seen)

    def to_text(self) -> str:
        cells = [[cell_text(r.get(c)) for c in self.columns] for r in self.rows]
        widths = [
            max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)
        ]
        lines = [self.title] if self.title else []
        lines.append("  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({c: cell_text(row.get(c)) for c in self.columns})
        return buf.getvalue()

    def to_json(self) -> str:
        return json.dumps({"title": self.title, "rows": self.rows}, indent=2, default=str)

    def save(self, path: str | Path) -> Path:
        """Write as .csv, .json or text (any other suffix), chosen by the file name."""
        path = Path(path)
        text = {".csv": self.to_csv, ".json": self.to_json}.get(path.suffix, self.to_text)()
        path.write_text(text)
        return path

    def __str__(self) -> str:
        return self.to_text()

    def __len__(self) -> int:
        return len(self.rows)
