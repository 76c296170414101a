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


def test_an_input_rewritten_with_its_old_size_and_mtime_is_not_read_from_the_cache(tmp_path):
    data, cache = nifti_dataset(tmp_path / "data"), tmp_path / "cache"
    assert counted(preprocess(data, cache)) == "2 built, 0 reused"
    first = entries(cache)
    old = np.load(first["c0"] / "image.npy")
    image = tmp_path / "data" / "imagesTr" / "c0.nii"
    rewrite_keeping_size_and_mtime(image, np.random.default_rng(7).normal(100, 20, (20, 20, 16)).astype(np.float32))

    assert counted(preprocess(data, cache)) == "1 built, 1 reused"
    rebuilt = np.load(entries(cache, besides={"c0": first["c0"]})["c0"] / "image.npy")
    assert rebuilt.shape == old.shape and not np.array_equal(rebuilt, old)  # the new voxels, not the old entry's
    fresh = tmp_path / "fresh"
    assert counted(preprocess(data, fresh)) == "2 built, 0 reused"
    assert np.array_equal(rebuilt, np.load(entries(fresh)["c0"] / "image.npy"))  # as from an empty cache
    assert counted(preprocess(data, cache)) == "0 built, 2 reused"  # unchanged files are still reused

    # the cached label-value checks: a label map that now holds a 7 is refused, not passed as before
    label = tmp_path / "data" / "labelsTr" / "c1.nii"
    values = np.asarray(nib.load(label).dataobj).copy()  # not a map of the file it rewrites
    values[0, 0, 0] = 7
    rewrite_keeping_size_and_mtime(label, values)
    assert_one_line_error(preprocess(data, cache), "c1.nii", "label values [7] are outside the dataset's classes")


def test_an_entry_records_its_inputs_and_files_and_is_checked_on_use(tmp_path):
    from medseg_attn.segmentation.data.cache import entry_inputs, entry_problem

    data, cache = nifti_dataset(tmp_path / "data"), tmp_path / "cache"
    counted(preprocess(data, cache))
    entry = entries(cache)["c0"]
    record = json.loads((entry / "entry.json").read_text())
    assert set(record["files"]) == {"image.npy", "label.npy", "indices.npz", "meta.json"}
    case = {"image": str(tmp_path / "data" / "imagesTr" / "c0.nii"), "label": str(tmp_path / "data" / "labelsTr" /
                                                                                     "c0.nii")}
    inputs = entry_inputs(case, ("image", "label"))
    assert record["inputs"] == inputs and len(inputs["image"][0][2]) == 64  # path, size, SHA-256
    assert entry_problem(entry, inputs) is None  # silent on a good entry
    other = {**inputs, "image": [[inputs["image"][0][0], inputs["image"][0][1], "0" * 64]]}
    assert "other input files" in entry_problem(entry, other)


def test_a_damaged_entry_is_rebuilt_with_one_line(tmp_path):
    data, cache = nifti_dataset(tmp_path / "data", cases=3), tmp_path / "cache"
    counted(preprocess(data, cache))
    built = entries(cache)
    originals = {name: {file: (entry / file).read_bytes() for file in ("image.npy", "label.npy")}
                 for name, entry in built.items()}
    label = built["c0"] / "label.npy"
    label.write_bytes(np.random.default_rng(0).bytes(label.stat().st_size))  # garbage, header and all
    image = built["c1"] / "image.npy"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])  # truncated
    flipped = np.load(built["c2"] / "label.npy")
    flipped[0, 0, 0, 0] = 1 - flipped[0, 0, 0, 0]  # one voxel, valid header, the same size
    np.save(built["c2"] / "label.npy", flipped)

    result = preprocess(data, cache)
    assert counted(result) == "3 built, 0 reused", result.stderr
    warnings = [line for line in result.stderr.splitlines() if "damaged cache entry" in line]
    assert len(warnings) == 3 and "Traceback" not in result.stderr, result.stderr
    assert any(str(built["c0"]) in line and "label.npy" in line for line in warnings), warnings
    assert any(str(built["c1"]) in line and "image.npy holds" in line for line in warnings), warnings
    assert any(str(built["c2"]) in line and "label.npy: its content changed" in line for line in warnings), warnings
    for name, entry in entries(cache).items():  # rebuilt as they were
        assert entry == built[name]
        assert {file: (entry / file).read_bytes() for file in originals[name]} == originals[name]
    assert not [p for p in (cache / "cases").iterdir() if ".tmp-" in p.name]
    again = preprocess(data, cache)
    assert counted(again) == "0 built, 3 reused" and "damaged" not in again.stderr  # silent on good entries


def freeze(entry: Path, frozen: bool) -> bool:
    """Make ``entry`` impossible to remove or rename (or possible again): ``chattr +i`` as root, else a read-only
    parent folder. False where neither works here."""
    if os.geteuid() != 0:
        entry.parent.chmod(0o555 if frozen else 0o755)
        return True
    flag = "+i" if frozen else "-i"
    return subprocess.run(["chattr", flag, str(entry)], capture_output=True).returncode == 0


def test_a_damaged_entry_that_cannot_be_removed_is_one_line_naming_it_and_the_cache(tmp_path):
    data, cache = nifti_dataset(tmp_path / "data"), tmp_path / "cache"
    counted(preprocess(data, cache))
    entry = entries(cache)["c1"]
    image = entry / "image.npy"
    image.write_bytes(image.read_bytes()[:300])
    try:
        if not freeze(entry, True):
            pytest.skip("cannot make a folder immutable here (chattr)")
        result = preprocess(data, cache)
    finally:
        freeze(entry, False)
    assert_one_line_error(result, str(entry), "damaged cache entry (image.npy holds 300 bytes", "cannot be removed",
                          f"another cache than {cache}", "--cache")


def test_an_entry_damaged_during_training_is_named_with_its_cache(tmp_path):
    """Entries are checked when a run starts; one damaged later (while training maps it) is one line naming the
    entry and the cache folder."""
    from medseg_attn.errors import UserError
    from medseg_attn.segmentation.data.cached import LoadCachedCased

    data, cache = nifti_dataset(tmp_path / "data"), tmp_path / "cache"
    counted(preprocess(data, cache))
    entry = entries(cache)["c0"]
    assert LoadCachedCased(indices=True)({"entry": str(entry)})["image"].ndim == 4  # silent on a good entry
    image = entry / "image.npy"
    image.write_bytes(image.read_bytes()[:200])
    with pytest.raises(UserError) as raised:
        LoadCachedCased(indices=True)({"entry": str(entry)})
    message = str(raised.value)
    assert str(image) in message and str(cache) in message and "\n" not in message, message


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
        running = group(process.pid)
        while len(running) < 4 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # until the workers run (the run, its resource tracker, fork server and workers)
            running = group(process.pid)  # judged on this one reading: a worker may end between two of them
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


def test_a_worker_whose_run_is_already_gone_exits():
    """A run killed between starting a worker and the worker's set-up: the worker exits at once."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    code = ("import time\nfrom medseg_attn.segmentation.data.preprocess import _start_worker\n"
            f"_start_worker({gone.pid})\ntime.sleep(120)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
