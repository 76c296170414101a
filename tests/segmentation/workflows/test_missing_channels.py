"""A sequence missing, through the CLI: a two-channel (T1, FLAIR) model trained on the lesion demo data predicts a
case given one channel with --channels, and without it fails naming the missing channel and the option."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cli_helpers import run  # noqa: E402

from medseg_attn.lesion_data import build_lesion_dataset  # noqa: E402


@pytest.fixture(scope="module")
def two_channel_run(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("channels")
    dataset = build_lesion_dataset(root / "data", train_cases=3, test_cases=1, seed=4, train_spacing=4.0,
                                   test_spacing=4.0, progress=False)
    result = run("-q", "train", "--data", str(dataset), "--output", str(root / "run"), "--epochs", "2",
                 "--set", "data.spacing=[4,4,4]", "--set", "data.patch_size=[32,32,32]",
                 "--set", "data.samples_per_case=1", "--set", "model.channels=[8,16,32]",
                 "--set", "train.steps_per_epoch=4", "--set", "train.batch_size=2")
    assert result.returncode == 0, result.stderr
    t1_only, flair_only = root / "t1_only", root / "flair_only"
    for folder, channel in ((t1_only, 0), (flair_only, 1)):
        folder.mkdir()
        shutil.copy(dataset.parent / "imagesTs" / f"lesion_100_{channel:04d}.nii.gz",
                    folder / "lesion_100_0000.nii.gz")
    return {"root": root, "run": root / "run", "both": dataset.parent / "imagesTs", "t1": t1_only,
            "flair": flair_only}


def test_the_checkpoint_keeps_the_channel_names_and_inspect_shows_them(two_channel_run):
    from medseg_attn.model_layout import find_checkpoint
    from medseg_attn.training.checkpoint import load_checkpoint

    payload = load_checkpoint(find_checkpoint(two_channel_run["run"]))
    assert payload["channel_names"] == ["T1", "FLAIR"]
    assert payload["config"]["data"]["augmentation"]["channel_dropout_probability"] == 0.2  # on by default
    shown = run("inspect", str(two_channel_run["run"]))
    assert shown.returncode == 0 and "input channels: 2 (T1, FLAIR)" in shown.stdout, shown.stdout
    assert "regions (sigmoid outputs, painted in this order): grey_matter=1->1, white_matter=2+3->2, lesion=3->3" \
        in shown.stdout


def test_a_missing_channel_without_channels_is_one_line_naming_it(two_channel_run, tmp_path):
    result = run("-q", "predict", "--model", str(two_channel_run["run"]), "--input", str(two_channel_run["t1"]),
                 "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "channel FLAIR is missing" in result.stderr and "--channels T1" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_one_channel_given_is_predicted_and_named_in_the_reports(two_channel_run, tmp_path):
    both = tmp_path / "both"
    assert run("-q", "predict", "--model", str(two_channel_run["run"]), "--input", str(two_channel_run["both"]),
               "--output", str(both)).returncode == 0
    for given, folder in (("FLAIR", "flair"), ("T1", "t1")):
        out = tmp_path / given
        result = run("-q", "predict", "--model", str(two_channel_run["run"]), "--input",
                     str(two_channel_run[folder]), "--output", str(out), "--channels", given)
        assert result.returncode == 0, result.stderr
        labels = nib.load(out / "lesion_100.nii.gz")
        reference = nib.load(both / "lesion_100.nii.gz")
        assert labels.shape == reference.shape and np.allclose(labels.affine, reference.affine)
        missing = "T1" if given == "FLAIR" else "FLAIR"
        assert json.loads((out / "run.json").read_text())["channels"] == {"given": [given], "filled": [missing]}
        with (out / "report.csv").open() as handle:
            assert [row["missing_channels"] for row in csv.DictReader(handle)] == [missing]
        assert f"filled as missing sequences (--channels): {missing}" in (out / "report.html").read_text()
    with (both / "report.csv").open() as handle:
        assert "missing_channels" not in next(csv.reader(handle))  # every channel given: no such column


@pytest.mark.parametrize(("channels", "message"), [
    ("T2", "T2 is not a channel of this model (its channels: T1, FLAIR)"),
    ("T1,T1", "T1 is listed twice"),
])
def test_bad_channel_lists_are_refused_before_any_case(two_channel_run, tmp_path, channels, message):
    result = run("-q", "predict", "--model", str(two_channel_run["run"]), "--input", str(two_channel_run["t1"]),
                 "--output", str(tmp_path / "out"), "--channels", channels)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
