"""`predict --statistics` and the QC report from the command line: real subprocess runs on real NIfTI files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg_attn.io.tables import read_csv_rows
from medseg_attn.segmentation.measures.structure_statistics import statistics_columns

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import assert_one_line_error, run  # noqa: E402
from explain_factory import grids, write_checkpoint, write_volume  # noqa: E402


def test_predict_statistics_and_report_with_a_failed_case(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, (volume, affine) in grids().items():
        write_volume(inputs / f"{name}.nii.gz", volume, affine)
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti")
    model = write_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    result = run("-q", "predict", "--model", str(model), "--input", str(inputs), "--output", str(out),
                 "--statistics", "--uncertainty", "--review-set", "volume_mad_k=4")
    assert result.returncode == 1, result.stderr  # the broken case failed, the others were done
    assert "report.html" in result.stdout
    rows = read_csv_rows(out / "statistics.csv")
    assert list(rows[0]) == list(statistics_columns(None))  # intensity_mean etc.: the model is not a CT model
    assert sorted({r["case"] for r in rows}) == ["aniso", "lps", "ras"] and len(rows) == 3 * 2
    for name in ("aniso", "lps", "ras"):
        saved = json.loads((out / f"{name}_statistics.json").read_text())
        labels = nib.load(str(out / f"{name}.nii.gz"))
        counts = np.bincount(np.asarray(labels.dataobj).ravel().astype(int), minlength=3)
        assert [r["voxels"] for r in saved["structures"]] == counts[1:3].tolist()
        assert saved["uncertainty_foreground_mean"] is None or 0 <= saved["uncertainty_foreground_mean"] <= 1
        assert (out / "qc" / f"{name}.png").exists()
    page = (out / "report.html").read_text()
    assert page.index('data-case="broken"') < min(page.index(f'data-case="{n}"') for n in ("aniso", "lps", "ras"))
    assert "volume_mad_k&quot;: 4.0" in page and "http://" not in page and "https://" not in page


def test_bad_review_settings_are_one_line_errors(tmp_path):
    volume, affine = grids()["ras"]
    source = write_volume(tmp_path / "a.nii.gz", volume, affine)
    model = write_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    config = tmp_path / "review.yaml"
    config.write_text("expected_volume_ml:\n  shell: [50, 10]\n")
    assert_one_line_error(run("predict", "--model", str(model), "--input", str(source), "--output", str(out),
                              "--review-config", str(config), "--review-set", "volume_mad_k=4"),
                          "review.yaml", "expected_volume_ml.shell")
    assert not out.exists()  # refused before any case


def test_evaluate_statistics_from_the_command_line(tmp_path):
    volume, affine = grids()["aniso"]
    for folder in ("pred", "label"):
        (tmp_path / folder).mkdir()
        write_volume(tmp_path / folder / "a.nii.gz", volume.astype(np.uint8), affine)
    result = run("-q", "evaluate", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "label"),
                 "--output", str(tmp_path / "eval"), "--labels", "1=shell,2=core", "--statistics")
    assert result.returncode == 0, result.stderr
    rows = read_csv_rows(tmp_path / "eval" / "statistics.csv")
    assert {(r["source"], r["structure"]) for r in rows} == {(s, n) for s in ("reference", "prediction")
                                                             for n in ("shell", "core")}
    voxel_ml = 1.5 * 1.5 * 4.0 / 1000
    shell = [float(r["volume_ml"]) for r in rows if r["structure"] == "shell"]
    assert shell == pytest.approx([(volume == 1).sum() * voxel_ml] * 2)
