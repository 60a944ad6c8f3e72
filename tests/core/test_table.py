from __future__ import annotations

import csv
import json

from mixq import Table


def test_table_saves_csv_json_and_text(tmp_path):
    t = Table([{"op": "fc", "sqnr": 41.25, "in": ["int8", "int16"]}, {"op": "conv"}], title="t")
    rows = list(csv.DictReader(t.save(tmp_path / "t.csv").open()))
    assert rows[0] == {"op": "fc", "sqnr": "41.25", "in": "int8,int16"}
    assert rows[1]["sqnr"] == "-"
    assert json.loads(t.save(tmp_path / "t.json").read_text())["rows"][1] == {"op": "conv"}
    text = t.save(tmp_path / "t.txt").read_text().splitlines()
    assert text[0] == "t" and text[1].split() == ["op", "sqnr", "in"]
