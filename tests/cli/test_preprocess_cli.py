"""``medseg-attn preprocess``: builds the cache once, reuses it, and refuses bad input in one line."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from medseg_attn.cli import main


def _dataset(root):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        image = np.zeros((24, 24, 20), np.float32)
        image[4:20, 4:20, 3:17] = 100 + 10 * rng.standard_normal((16, 16, 14))
        label = np.zeros(image.shape, np.uint8)
        label[8:14, 8:14, 6:12] = 1
        nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 2.0, 1.0])), root / "imagesTr" / f"c{index}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.diag([2.0, 2.0, 2.0, 1.0])), root / "labelsTr" / f"c{index}.nii.gz")
    spec = {"labels": {"0": "background", "1": "blob"}, "modality": {"0": "MRI"},
            "training": [{"image": f"imagesTr/c{i}.nii.gz", "label": f"labelsTr/c{i}.nii.gz"} for i in range(2)]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root / "dataset.json"


def test_preprocess_builds_then_reuses(tmp_path, capsys):
    dataset, cache = _dataset(tmp_path / "data"), tmp_path / "cache"
    args = ["-q", "preprocess", "--data", str(dataset), "--cache", str(cache), "--workers", "1",
            "--set", "data.patch_size=[16,16,16]", "--set", "model.channels=[8,16]"]
    assert main(args) == 0
    assert "preprocessed 2 cases (2 built, 0 reused)" in capsys.readouterr().out
    assert len([p for p in (cache / "cases").iterdir() if not p.name.startswith(".")]) == 2
    assert main(args) == 0
    assert "(0 built, 2 reused)" in capsys.readouterr().out


def test_preprocess_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert main(["preprocess", "--data", str(tmp_path / "missing"), "--cache", str(tmp_path / "c")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("medseg-attn: error:") and "missing" in error and "\n" not in error
    dataset = _dataset(tmp_path / "data")
    assert main(["preprocess", "--data", str(dataset), "--workers", "-1"]) == 2
    assert "--workers -1" in capsys.readouterr().err
