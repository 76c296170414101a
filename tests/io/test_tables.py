"""The one CSV writer: formula-like cells escaped, numbers kept, escapes undone on reading."""

from __future__ import annotations

import csv

from medseg_attn.io.tables import csv_text, read_csv_rows, write_csv


def test_formula_cells_are_escaped_and_read_back(tmp_path):
    names = ["=HYPERLINK(\"http://x\")", "+cmd", "-2+3", "@SUM(A1)", "\tx", "plain", "-1.5", "1e3"]
    path = write_csv(tmp_path / "r.csv", [{"case": n, "dice": 0.5} for n in names], ["case", "dice"])
    with open(path, newline="") as handle:
        raw = [row["case"] for row in csv.DictReader(handle)]
    assert raw == ["'=HYPERLINK(\"http://x\")", "'+cmd", "'-2+3", "'@SUM(A1)", "'\tx", "plain", "-1.5", "1e3"]
    assert [row["case"] for row in read_csv_rows(path)] == names


def test_missing_and_none_cells_are_empty_and_floats_formatted():
    text = csv_text([{"a": 1.0, "b": None}, {"a": float("nan")}], ["a", "b"], float_format=".3f")
    assert text.splitlines() == ["a,b", "1.000,", "nan,"]


def test_plain_rows_without_columns():
    assert csv_text([["x", "=1"], ["y", -3]]).splitlines() == ["x,'=1", "y,-3"]
