"""What a user sees does not change with the code under it (issue 33): label maps, report.csv, statistics.csv and
run.json of ``predict`` on NIfTI (two grids), DICOM and ONNX inputs equal those the release before the
restructuring (2b7a70b) wrote with the same small model (tests/data/golden: its checkpoint, its ONNX export, the
inputs and what that release wrote; the CT series is tests/data/totalseg_example_ct)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cli_helpers import run  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "golden"
CT_SERIES = GOLDEN.parent / "totalseg_example_ct" / "dicom"
BATCHES = {
    "nifti": ["--model", "run", "--input", "in/case.nii.gz", "in/flipped.nii.gz", "--output-format", "nifti,seg-nrrd",
              "--device", "cpu"],
    "dicom": ["--model", "run", "--input", str(CT_SERIES), "--device", "cpu"],
    "onnx": ["--model", "model.onnx", "--input", "in/case.nii.gz", "in/flipped.nii.gz"],
}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _same_value(a: str, b: str) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-6) or a == b
    except ValueError:
        return a == b


@pytest.mark.parametrize("batch", list(BATCHES))
def test_predict_writes_what_the_release_before_wrote(batch, tmp_path, monkeypatch):
    if batch == "onnx":
        pytest.importorskip("onnxruntime")
    monkeypatch.chdir(GOLDEN)  # the relative paths the reference run.json and report.csv were made with
    out = tmp_path / batch
    result = run("-q", "predict", *BATCHES[batch], "--output", str(out), "--statistics")
    assert result.returncode == 0, result.stderr
    expected = GOLDEN / "expected" / batch
    for reference in sorted(expected.glob("*.nii.gz")):
        mine, theirs = nib.load(str(out / reference.name)), nib.load(str(reference))
        assert mine.shape == theirs.shape and np.allclose(mine.affine, theirs.affine, atol=1e-4)
        assert np.asarray(mine.dataobj).dtype == np.asarray(theirs.dataobj).dtype
        differing = np.mean(np.asarray(mine.dataobj) != np.asarray(theirs.dataobj))
        assert differing <= 1e-4, f"{reference.name}: {differing:.2e} of the voxels differ"  # identical here
    def report(folder: Path) -> list[dict]:  # the paths differ (this run's folder): their names do not
        return [{"case": r["case"], "status": r["status"], "outputs": [Path(o).name for o in r["output"].split(";")]}
                for r in _rows(folder / "report.csv")]

    assert report(out) == report(expected)
    mine_stats, their_stats = _rows(out / "statistics.csv"), _rows(expected / "statistics.csv")
    assert [list(r) for r in mine_stats] == [list(r) for r in their_stats]
    for mine_row, their_row in zip(mine_stats, their_stats, strict=True):
        wrong = {k: (mine_row[k], their_row[k]) for k in their_row if not _same_value(mine_row[k], their_row[k])}
        assert not wrong, f"{their_row['case']} {their_row['structure']}: {wrong}"
    record, reference = json.loads((out / "run.json").read_text()), json.loads((expected / "run.json").read_text())
    inputs = [{k: i[k] for k in ("name", "sha256", "shape", "spacing_mm")} for i in record["inputs"]]
    assert inputs == reference["inputs"]
    assert [m["sha256"] for m in record["model"]["models"]] == reference["models"]
    assert (record["cases"], record["outcome"], record.get("output_format")) == \
        (reference["cases"], reference["outcome"], reference["output_format"])
