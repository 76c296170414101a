"""run.json: written atomically at the end of a run, with checksums, versions and the outcome."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from medseg_attn.io.manifest import json_sha256, path_sha256, recorded_run


def test_a_run_records_inputs_versions_and_outcome(tmp_path):
    image = tmp_path / "in" / "case.nii.gz"
    image.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([0.5, 0.7, 2.0, 1.0])), image)
    out = tmp_path / "out"
    out.mkdir()
    with recorded_run(out, "predict", ["predict", "--input", str(image)]) as manifest:
        manifest.add_input(image, geometry=True)
        manifest.add_input(tmp_path / "missing.nii.gz", error="not found")
    record = json.loads((out / "run.json").read_text())
    assert record["outcome"] == "ok" and record["command"] == "predict"
    assert record["command_line"] == f"medseg-attn predict --input {image}"
    assert record["started"] <= record["finished"]
    assert {"medseg_attn", "torch", "monai"} <= set(record["versions"])
    first, second = record["inputs"]
    assert first["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert first["shape"] == [4, 5, 6] and first["spacing_mm"] == [0.5, 0.7, 2.0]
    assert second["sha256"] is None and second["error"] == "not found"
    assert not list(out.glob(".run.json*"))  # no temporary file left


def test_a_failed_run_says_why_and_checksums_are_stable(tmp_path):
    with pytest.raises(ValueError):
        with recorded_run(tmp_path, "evaluate"):
            raise ValueError("labels/: no NIfTI label files")
    assert json.loads((tmp_path / "run.json").read_text())["outcome"] == "failed: labels/: no NIfTI label files"
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"1")
    (folder / "b.dcm").write_bytes(b"2")
    digest = path_sha256(folder)
    (folder / "b.dcm").write_bytes(b"3")
    assert path_sha256(folder) != digest
    assert json_sha256({"b": 1, "a": [1, 2]}) == json_sha256({"a": [1, 2], "b": 1})
