"""Issue 34 (round three): the disk cache and preprocessing. Entries are keyed on the inputs' content and checked
before use; a damaged entry is rebuilt; a case of nothing but the ignore label is refused; killed runs leave no
workers behind; an unusable cache folder is named in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import assert_one_line_error, command, run

from medseg_attn.segmentation.data.cache import CACHE_ENV

SETS = ["--set", "data.patch_size=[16,16,16]", "--set", "model.channels=[8,16]"]


def nifti_dataset(root: Path, cases: int = 2, labels: dict | None = None) -> Path:
    """Uncompressed NIfTI cases (so a rewrite with other voxels keeps the file's size): noise with two boxes."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for index in range(cases):
        label = np.zeros((20, 20, 16), np.uint8)
        label[4:12, 4:12, 3:11] = 1
        label[13:17, 13:17, 10:14] = 2
        write(root / "imagesTr" / f"c{index}.nii", rng.normal(100, 20, label.shape).astype(np.float32))
        write(root / "labelsTr" / f"c{index}.nii", label)
    spec = {"labels": labels or {"0": "background", "1": "a", "2": "b"}, "modality": {"0": "MRI"},
            "training": [{"image": f"imagesTr/c{i}.nii", "label": f"labelsTr/c{i}.nii"} for i in range(cases)]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root / "dataset.json"


def write(path: Path, array: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))


def rewrite_keeping_size_and_mtime(path: Path, array: np.ndarray) -> None:
    """What `cp -p`, `rsync -a` or `tar x` do to a cached input: other bytes, the same size and modification time."""
    before = path.stat()
    write(path, array)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def preprocess(data: Path, cache: Path):
    return run("preprocess", "--data", str(data), "--cache", str(cache), "--workers", "1", *SETS)


def counted(result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.split("(")[1].split(")")[0]  # "N built, M reused"


def entries(cache: Path, kind: str = "cases", besides: dict[str, Path] | None = None) -> dict[str, Path]:
    """Case name -> its entry folder (the one not in ``besides``, where a case has several)."""
    found: dict[str, Path] = {}
    for entry in sorted((cache / kind).iterdir()):
        name = entry.name.split("-")[0]
        if not entry.name.startswith(".") and entry != (besides or {}).get(name):
            assert name not in found, entry
            found[name] = entry
    return found


def test_a_case_of_nothing_but_the_ignore_label_is_refused_naming_it(tmp_path):
    labels = {"0": "background", "1": "a", "2": "b", "3": "ignore"}
    data = nifti_dataset(tmp_path / "data", cases=3, labels=labels)
    sparse = tmp_path / "data" / "labelsTr" / "c0.nii"
    partly = np.asarray(nib.load(sparse).dataobj).copy()
    partly[:, :, :2] = 3  # sparse labels: some voxels unannotated is fine
    write(sparse, partly)
    cache = tmp_path / "cache"
    assert counted(preprocess(data, cache)) == "3 built, 0 reused"  # silent on good sparse labels

    write(tmp_path / "data" / "labelsTr" / "c1.nii", np.full((20, 20, 16), 3, np.uint8))
    assert_one_line_error(preprocess(data, cache), "labelsTr/c1.nii", "every voxel is the 'ignore' label 3")
    result = run("train", "--data", str(data), "--cache", str(cache), "--output", str(tmp_path / "run"),
                 "--epochs", "1", *SETS, "--set", "train.steps_per_epoch=1")
    assert_one_line_error(result, "labelsTr/c1.nii", "every voxel is the 'ignore' label 3")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("make", ["file", "file inside"])
def test_an_unusable_cache_folder_is_one_line_naming_it(tmp_path, make):
    data = nifti_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    if make == "file":
        cache.write_text("not a folder")
        blocking = cache
    else:
        cache.mkdir()
        blocking = cache / "checks"
        blocking.write_text("not a folder")
    assert_one_line_error(preprocess(data, cache), f"{cache}: the preprocessing cache cannot be used",
                          f"{blocking} is a file, not a folder", "--cache", CACHE_ENV)
    run_env = {**os.environ, CACHE_ENV: str(cache)}
    result = subprocess.run(command("plan", "--data", str(data), "--output", str(tmp_path / "plan.json"), *SETS),
                            capture_output=True, text=True, timeout=300, env=run_env)
    assert_one_line_error(result, str(cache), "--cache", CACHE_ENV)


def group(pgid: int) -> list[str]:
    """The live (not zombie) processes of a process group, read from /proc."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            alive.append(f"{pid} {fields[0]} {cmdline}")
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc")
@pytest.mark.parametrize("name, kill", [("preprocess", signal.SIGKILL), ("train", signal.SIGTERM)])
def test_killing_a_run_leaves_no_worker_behind(tmp_path, name, kill):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from blob_dataset import write_blob_dataset

    data = write_blob_dataset(tmp_path / "data", cases=8, size=48)
    args = ["--data", str(data), "--cache", str(tmp_path / "cache"), "--set", "data.spacing=[1,1,1]", *SETS,
            "--set", "data.preprocess_workers=2"]
    if name == "train":
        args += ["--output", str(tmp_path / "run"), "--epochs", "1"]
    process = subprocess.Popen(command("-q", name, *args), start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while len(group(process.pid)) < 4 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # until the workers run (the run, its resource tracker, fork server and workers)
        running = group(process.pid)
        assert process.poll() is None and len(running) >= 4, (running, process.stderr.read())
        os.kill(process.pid, kill)
        process.wait(30)
        deadline = time.monotonic() + 10
        while group(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not group(process.pid), f"left running after {kill.name}: {group(process.pid)} of {running}"
    finally:
        for line in group(process.pid):
            os.kill(int(line.split()[0]), signal.SIGKILL)
        process.stderr.close()
