"""``medseg-attn predict`` over a batch as users run it: real subprocesses, bad cases named, exit codes, an
interrupted batch completed by running it again."""

from __future__ import annotations

import csv
import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg_attn.config import load_config
from medseg_attn.networks.factory import build_network
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.training.checkpoint import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import command, run  # noqa: E402
from dicom_factory import write_series  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """An untrained tiny network in a real checkpoint: predictions are arbitrary, files and geometry are real."""
    config = load_config(None, ["model.channels=[4,8]", "data.patch_size=[16,16,16]", "inference.overlap=0"])
    prep = Preprocessing((3.0, 3.0, 3.0), "RAS", "zscore", (0, 1), False, 3)
    network = build_network(config.model, 3, 1, 3)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint({"model": network.state_dict(), "config": config.to_dict(), "epoch": 0,
                     "labels": {0: "background", 1: "liver", 2: "spleen"}, "preprocessing": prep.to_dict(),
                     "in_channels": 1}, path)
    return path


def volume(path: Path, seed: int, shape=(20, 22, 16)) -> Path:
    data = np.random.default_rng(seed).normal(100, 30, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([-2.0, -2.0, 2.5, 1.0])), str(path))
    return path


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_batch_with_bad_cases_exits_1_names_them_and_leaves_inputs(tmp_path, model):
    batch = tmp_path / "batch"
    batch.mkdir()
    for k in range(2):
        volume(batch / f"good{k}.nii.gz", k)
    write_series(batch / "series", np.random.default_rng(5).normal(0, 50, (16, 18, 8)), (2.0, 2.0, 3.0))
    (batch / "text.nii.gz").write_text("not an image")
    nan = np.full((10, 10, 10), np.nan, np.float32)
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(batch / "nan.nii.gz"))
    (batch / "junk").mkdir()
    (batch / "junk" / "notes.txt").write_text("x")
    before = digest(batch)
    out = tmp_path / "out"
    result = run("-q", "predict", "--model", str(model), "--input", str(batch), "--output", str(out))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("medseg-attn: failed:")]
    assert len(failed) == 3
    assert any("text.nii.gz: not a readable NIfTI file" in line for line in failed)
    assert any("nan.nii.gz: 1000 voxel(s) are NaN or Inf" in line for line in failed)
    assert any("junk: no DICOM image series in this folder (found notes.txt)" in line for line in failed)
    assert "predicted 3 case(s), skipped 0 existing, failed 3" in result.stdout
    assert digest(batch) == before
    with (out / "failures.csv").open() as handle:
        assert sorted(row["case"] for row in csv.DictReader(handle)) == ["junk", "nan", "text"]
    series = nib.load(str(out / "series.nii.gz"))
    assert series.shape == (16, 18, 8) and nib.aff2axcodes(series.affine) == ("L", "P", "S")
    for k in range(2):
        np.testing.assert_array_equal(nib.load(str(out / f"good{k}.nii.gz")).affine,
                                      nib.load(str(batch / f"good{k}.nii.gz")).affine)
    # usage errors come before any case: exit 2, one line
    inside = run("predict", "--model", str(model), "--input", str(batch), "--output", str(batch / "out"))
    assert inside.returncode == 2 and "lies in the input folder" in inside.stderr
    assert not (batch / "out").exists()


def test_interrupted_batch_is_completed_by_running_it_again(tmp_path, model):
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = [f"case{k}" for k in range(8)]
    for k, name in enumerate(names):
        volume(inputs / f"{name}.nii.gz", k, shape=(48, 48, 40))
    out = tmp_path / "out"
    process = subprocess.Popen(command("-q", "predict", "--model", str(model), "--input", str(inputs), "--output",
                                       str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_dir() and list(out.glob("case*.nii.gz")):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no clean-up runs: as a power cut or an OOM kill
    process.wait()
    done_before = sorted(p.name for p in out.glob("case*.nii.gz"))
    assert len(done_before) < len(names)  # it was killed mid-batch
    result = run("-q", "predict", "--model", str(model), "--input", str(inputs), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert f"skipped {len(done_before)} existing" in result.stdout
    for name in names:
        image = nib.load(str(out / f"{name}.nii.gz"))
        assert image.shape == (48, 48, 40)
        assert set(np.unique(np.asarray(image.dataobj)).tolist()) <= {0, 1, 2}  # complete, readable data
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    with (out / "report.csv").open() as handle:
        assert sorted(row["case"] for row in csv.DictReader(handle)) == names
    assert not (out / "failures.csv").exists()
