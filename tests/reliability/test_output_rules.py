"""No command writes into an input folder or over an input; a folder option naming a file is one line."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run
from PIL import Image
from reliability_helpers import digest, volume


@pytest.fixture()
def pictures(tmp_path):
    root = tmp_path / "imgs"
    for k, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((16, 16), 40 + 150 * k + i, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_classify_predict_never_overwrites_an_input(pictures, classifier_model):
    before = digest(pictures)
    target = pictures / "dark" / "0.png"
    result = run("-q", "classify", "predict", "--model", str(classifier_model), "--input", str(target),
                 "--output", str(target))
    assert_one_line_error(result, str(target), "refusing to overwrite an input")
    result = run("-q", "classify", "predict", "--model", str(classifier_model), "--input", str(pictures),
                 "--output", str(pictures / "dark" / "p.csv"))
    assert_one_line_error(result, "lies in the input folder", "--output")
    assert digest(pictures) == before


@pytest.mark.parametrize("inside", [".", "dark"])
def test_classify_attention_maps_never_land_among_the_inputs(pictures, classifier_model, tmp_path, inside):
    before = digest(pictures)
    result = run("-q", "classify", "predict", "--model", str(classifier_model), "--input", str(pictures),
                 "--output", str(tmp_path / "p.csv"), "--attention-maps", str(pictures / inside))
    assert_one_line_error(result, "--attention-maps")
    assert digest(pictures) == before and not (tmp_path / "p.csv").exists()


def test_classify_predict_still_writes_beside_named_files(pictures, classifier_model, tmp_path):
    result = run("-q", "classify", "predict", "--model", str(classifier_model), "--input",
                 str(pictures / "dark" / "0.png"), "--output", str(tmp_path / "p.csv"))
    assert result.returncode == 0, result.stderr
    with (tmp_path / "p.csv").open() as handle:
        assert [row["class_name"] in ("dark", "light") for row in csv.DictReader(handle)] == [True]


def test_classify_evaluate_refuses_an_output_in_its_data(pictures, classifier_model):
    result = run("-q", "classify", "evaluate", "--model", str(classifier_model), "--data", str(pictures),
                 "--output", str(pictures / "evaluation"))
    assert_one_line_error(result, "lies in the input folder")
    assert not (pictures / "evaluation").exists()


def _label_folders(tmp_path):
    for folder in ("pred", "label"):
        (tmp_path / folder).mkdir()
        data = np.zeros((8, 8, 8), np.uint8)
        data[2:6, 2:6, 2:6] = 1
        data[0, 0, 0] = 3
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / folder / "case.nii.gz"))


def test_evaluate_refuses_an_output_in_its_inputs(tmp_path):
    _label_folders(tmp_path)
    before = digest(tmp_path / "label")
    result = run("-q", "evaluate", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "label"),
                 "--output", str(tmp_path / "label" / "metrics"))
    assert_one_line_error(result, "lies in the input folder")
    assert digest(tmp_path / "label") == before


def test_evaluate_reports_values_missing_from_labels_and_refuses_duplicates(tmp_path):
    _label_folders(tmp_path)
    out = tmp_path / "out"
    result = run("evaluate", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "label"),
                 "--output", str(out), "--labels", "1=liver")
    assert result.returncode == 0, result.stderr
    assert "label values [3] are not in the class names given" in result.stderr and "case.nii.gz" in result.stderr
    assert "label_3" in (out / "summary.json").read_text()
    result = run("evaluate", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "label"),
                 "--output", str(tmp_path / "out2"), "--labels", "1=liver,1=spleen")
    assert_one_line_error(result, "class 1 is named twice (liver, spleen)")


@pytest.mark.parametrize("command", ["predict", "demo", "classify demo", "evaluate"])
def test_an_output_folder_that_is_a_file_is_one_line(tmp_path, segmentation_model, command):
    existing = tmp_path / "taken.txt"
    existing.write_text("keep me")
    image = volume(tmp_path / "case.nii.gz")
    args = {"predict": ["predict", "--model", str(segmentation_model), "--input", str(image)],
            "demo": ["demo", "--minutes", "0.1"], "classify demo": ["classify", "demo", "--minutes", "0.1"],
            "evaluate": ["evaluate", "--pred", str(tmp_path), "--label", str(tmp_path)]}[command]
    result = run("-q", *args, "--output", str(existing))
    assert_one_line_error(result, str(existing), "is an existing file")
    assert existing.read_text() == "keep me"


def test_predict_never_writes_into_the_model_it_reads(segmentation_model, tmp_path):
    """predict --output may not be the run folder (its run.json, config, reports), its checkpoints/ or fold_<k>/,
    or the folder of a checkpoint file; a new sub-folder of the run is fine."""
    import shutil

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(segmentation_model, run_dir / "checkpoints" / "best.pt")
    (run_dir / "run.json").write_text('{"command": "train"}')
    image = tmp_path / "in" / "case.nii.gz"
    image.parent.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32),
                             np.diag([3.0, 3.0, 3.0, 1.0])), image)
    before = digest(run_dir)
    for model, output in ((run_dir, run_dir), (run_dir, run_dir / "checkpoints"), (run_dir, run_dir / "fold_0"),
                          (run_dir / "checkpoints" / "best.pt", run_dir / "checkpoints")):
        result = run("-q", "predict", "--model", str(model), "--input", str(image), "--output", str(output))
        assert_one_line_error(result, str(output), "would write into the model")
        assert digest(run_dir) == before
    result = run("-q", "predict", "--model", str(run_dir), "--input", str(image), "--output",
                 str(run_dir / "predictions"))
    assert result.returncode == 0, result.stderr
    assert (run_dir / "predictions" / "case.nii.gz").is_file() and (run_dir / "run.json").read_text() == \
        '{"command": "train"}'
