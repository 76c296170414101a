"""Issue 26: `plan` and `train` share one dataset check; `train --resume` checks the data against the run."""

from __future__ import annotations

import hashlib

import pytest
from cli_helpers import assert_one_line_error
from reliability_helpers import cli, dataset


@pytest.mark.parametrize("kind, words", [
    ("shape", "label shape (14, 16, 12) does not match image"),
    ("values", "label values [7] are outside the dataset's classes 0..2"),
    ("fraction", "label values [0.5] are outside the dataset's classes 0..2"),
    ("origin", "origins 30 mm apart"),
    ("4d", "3 channel(s), but dataset.json lists 1 modality"),
])
def test_plan_and_train_refuse_what_train_refuses(capsys, tmp_path, kind, words):
    data = dataset(tmp_path / kind, kind)
    for args in (("plan", "--data", str(data), "--output", str(tmp_path / "plan.json")),
                 ("train", "--data", str(data), "--output", str(tmp_path / "run"), "--epochs", "1")):
        assert_one_line_error(cli(capsys, *args), "c1.nii.gz", words)
    assert not (tmp_path / "plan.json").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_duplicate_class_names_are_refused(capsys, tmp_path):
    data = dataset(tmp_path / "dup", labels={"0": "background", "1": "a", "2": "A "})
    for args in (("plan", "--data", str(data)), ("train", "--data", str(data), "--output", str(tmp_path / "run"))):
        assert_one_line_error(cli(capsys, *args), "dataset.json", "class name 'A ' is used by labels 1 and 2")
    assert_one_line_error(cli(capsys, "evaluate", "--pred", str(data / "labelsTr"), "--label", str(data / "labelsTr"),
                              "--output", str(tmp_path / "e"), "--labels", "1=a,2=a"), "class name 'a'")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run on a tiny 3-D dataset (classes a, b)."""
    from medseg_attn.cli import main

    root = tmp_path_factory.mktemp("resume")
    data = dataset(root / "data")
    assert main(["-q", "train", "--data", str(data), "--output", str(root / "run"), "--epochs", "1", "--set",
                 "model.channels=[4,8]", "--set", "data.patch_size=[16,16,8]", "--set", "train.steps_per_epoch=2",
                 "--set", "data.cache=false"]) == 0
    return root


@pytest.mark.parametrize("labels, dims, words", [
    ({"0": "background", "1": "a", "2": "b", "3": "c"}, 3, "this data is"),
    ({"0": "background", "1": "x", "2": "y"}, 3, "(classes 1=x, 2=y; 3D)"),
    ({"0": "background", "1": "a", "2": "b"}, 2, "(classes 1=a, 2=b; 2D)"),
])
def test_resume_on_other_data_names_both_sides(capsys, tmp_path, trained, labels, dims, words):
    other = dataset(tmp_path / "other", labels=labels, dims=dims)
    last = trained / "run" / "checkpoints" / "last.pt"
    before = hashlib.sha256(last.read_bytes()).hexdigest()
    result = cli(capsys, "train", "--output", str(trained / "run"), "--resume", "--data", str(other), "--epochs", "3")
    assert_one_line_error(result, "this run was trained on", "(classes 1=a, 2=b; 3D)", words)
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before


def test_resume_with_the_budget_used_says_nothing_was_trained(capsys, trained):
    last = trained / "run" / "checkpoints" / "last.pt"
    before = hashlib.sha256(last.read_bytes()).hexdigest()
    result = cli(capsys, "train", "--output", str(trained / "run"), "--resume", "--minutes", "0.0001",
                 "--epochs", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("nothing trained") and "unchanged" in result.stdout, result.stdout
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before
