"""Explanation maps from the command line: real subprocess runs on real NIfTI and DICOM files.

`predict --attention-maps --uncertainty` over an LPS, an anisotropic and a RAS volume and a DICOM series writes one
map per attention level and one uncertainty map per case, each on exactly the input's grid with finite values in
[0, 1], the overlay PNGs and the report columns; models without attention are refused in one line.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import assert_one_line_error, run  # noqa: E402
from dicom_factory import write_series  # noqa: E402
from explain_factory import grids, phantom, write_checkpoint, write_classifier, write_volume  # noqa: E402


def _check_map(path: Path, shape: tuple, affine: np.ndarray, maximum_one: bool) -> np.ndarray:
    image = nib.load(str(path))
    values = image.get_fdata()
    assert image.shape[:3] == shape, path
    np.testing.assert_allclose(image.affine, affine, atol=1e-4)
    assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0, path
    if maximum_one:
        assert values.max() == pytest.approx(1.0, abs=1e-4), path
    return values


def test_attention_and_uncertainty_maps_on_each_input_grid(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = {}
    for name, (volume, affine) in grids().items():
        write_volume(inputs / f"{name}.nii.gz", volume, affine)
        cases[name] = (volume.shape, affine)
    # a DICOM series (LPS storage, 1.2 x 1.2 x 3 mm): maps on the series' grid, as its label map
    write_series(inputs / "series", (phantom((40, 36, 12)) * 100).astype(np.int16), spacing=(1.2, 1.2, 3.0),
                 origin=(-20.0, -25.0, 10.0))
    models = [write_checkpoint(tmp_path / "a.pt"), write_checkpoint(tmp_path / "b.pt", seed=1)]  # an ensemble

    out = tmp_path / "out"
    result = run("-q", "predict", "--model", *map(str, models), "--input", str(inputs), "--output", str(out),
                 "--attention-maps", "--uncertainty")
    assert result.returncode == 0, result.stderr
    label = nib.load(str(out / "series.nii.gz"))
    cases["series"] = (label.shape, label.affine)  # the series grid (tested against the series elsewhere)
    with (out / "report.csv").open() as handle:
        report = {row["case"]: row for row in csv.DictReader(handle)}
    for name, (shape, affine) in cases.items():
        labels = nib.load(str(out / f"{name}.nii.gz"))
        assert labels.shape == shape and np.allclose(labels.affine, affine, atol=1e-4)
        for level in ("level0", "level1"):
            _check_map(out / f"{name}_attention_{level}.nii.gz", shape, affine, maximum_one=True)
        uncertainty = _check_map(out / f"{name}_uncertainty.nii.gz", shape, affine, maximum_one=False)
        assert float(report[name]["uncertainty_mean"]) == pytest.approx(uncertainty.mean(), abs=1e-3)
        assert report[name]["status"] == "ok"
        with Image.open(out / f"{name}_overlay.png") as picture:
            assert picture.size[0] > 300 and picture.size[1] > 600
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    heads = run("-q", "predict", "--model", str(models[0]), "--input", str(inputs / "lps.nii.gz"), "--output",
                str(tmp_path / "heads"), "--attention-heads")
    assert heads.returncode == 0, heads.stderr
    shape, affine = cases["lps"]
    for level, count in (("level0", 1), ("level1", 2)):  # 8 and 16 channels, 8 per head
        values = _check_map(tmp_path / "heads" / f"lps_attention_{level}.nii.gz", shape, affine, maximum_one=True)
        assert values.shape == (*shape, count)
        assert np.allclose(values.reshape(-1, count).max(0), 1.0, atol=1e-4)  # each head's maximum is 1
    assert not (tmp_path / "heads" / "lps_uncertainty.nii.gz").exists()


def test_attention_maps_of_a_model_without_attention_is_a_one_line_error(tmp_path):
    volume, affine = grids()["ras"]
    source = write_volume(tmp_path / "case.nii.gz", volume, affine)
    off = write_checkpoint(tmp_path / "off.pt", model={"attention": False})
    assert_one_line_error(run("predict", "--model", str(off), "--input", str(source), "--output",
                              str(tmp_path / "out"), "--attention-maps"),
                          "off.pt", "has no attention maps", "attention off")
    assert not (tmp_path / "out").exists()  # refused before any case
    monai = write_checkpoint(tmp_path / "monai.pt", model={"architecture": "monai_unet"})
    assert_one_line_error(run("predict", "--model", str(monai), "--input", str(source), "--output",
                              str(tmp_path / "out"), "--attention-heads"), "monai.pt", "is a UNet")


def test_classify_predict_writes_attention_maps(tmp_path):
    pictures = tmp_path / "pictures"
    rng = np.random.default_rng(0)
    for folder in ("x", "y"):  # the same file name in two folders: sub-folders are kept
        (pictures / folder).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (60, 50, 3)).astype(np.uint8)).save(pictures / folder / "0.png")
    model = write_classifier(tmp_path / "cls2d.pt")
    result = run("-q", "classify", "predict", "--model", str(model), "--input", str(pictures), "--output",
                 str(tmp_path / "p.csv"), "--attention-maps", str(tmp_path / "maps"))
    assert result.returncode == 0, result.stderr
    for folder in ("x", "y"):
        with Image.open(tmp_path / "maps" / folder / "0_attention.png") as picture:
            assert picture.size[0] > 300

    volume, affine = grids()["lps"]
    source = write_volume(tmp_path / "volume.nii.gz", volume, affine)
    model3d = write_classifier(tmp_path / "cls3d.pt", spatial_dims=3, channels=1, image_size=(24, 24, 24))
    result = run("-q", "classify", "predict", "--model", str(model3d), "--input", str(source), "--output",
                 str(tmp_path / "p3.csv"), "--attention-maps", str(tmp_path / "maps3d"))
    assert result.returncode == 0, result.stderr
    written = _check_map(tmp_path / "maps3d" / "volume_attention.nii.gz", volume.shape, affine, maximum_one=True)
    # stored in the file's own (LPS) voxel order: back in RAS order it is the map the classifier computes
    from medseg_attn.classification.predictor import Classifier

    expected = Classifier.from_checkpoint(model3d, device="cpu").attention_map(source)  # RAS order
    np.testing.assert_allclose(written[::-1, ::-1], expected, atol=0.5 / 255 + 1e-6)  # stored in 8 bits

    off = write_classifier(tmp_path / "off.pt", attention=False)
    assert_one_line_error(run("classify", "predict", "--model", str(off), "--input", str(pictures), "--output",
                              str(tmp_path / "p_off.csv"), "--attention-maps", str(tmp_path / "maps_off")),
                          "off.pt", "has no attention maps")


def test_every_predict_option_is_documented():
    from medseg_attn.cli import app as cli

    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    commands = next(a for a in cli._parser()._actions if a.dest == "command").choices
    classify = next(a for a in commands["classify"]._actions if a.dest == "classify_command").choices
    for parser in (commands["predict"], classify["predict"]):
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert f"`{option}" in text, option
