"""The disk preprocessing cache: the same batches as from memory, invalidation, resume, concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import list_data_collate

from medseg_attn.config import load_config
from medseg_attn.segmentation.data import cache as cache_module
from medseg_attn.segmentation.data import transforms as transforms_module
from medseg_attn.segmentation.data.cache import ensure_entry
from medseg_attn.segmentation.data.dataset_plan import prepare_dataset


def write_case(root: Path, name: str, seed: int, shape=(28, 26, 24)) -> None:
    """A noisy 'head' (ellipsoid on zero background) with two labelled blobs, 2 mm voxels."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    head = (grid**2).sum(0) < 0.8
    image = (head * (100 + 20 * rng.standard_normal(shape))).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    centre = rng.uniform(-0.3, 0.3, 3)
    label[((grid - centre[:, None, None, None]) ** 2).sum(0) < 0.08] = 1
    label[((grid + centre[:, None, None, None]) ** 2).sum(0) < 0.04] = 2
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"{name}.nii.gz")


def make_dataset(root: Path, cases: int, shape=(28, 26, 24)) -> Path:
    for index in range(cases):
        write_case(root, f"case{index:03d}", index, shape)
    spec = {"name": "blobs", "labels": {"0": "background", "1": "big", "2": "small"}, "modality": {"0": "MRI"},
            "training": [{"image": f"imagesTr/case{i:03d}.nii.gz", "label": f"labelsTr/case{i:03d}.nii.gz"}
                         for i in range(cases)]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root / "dataset.json"


def config(dataset: Path, cache: Path, *extra: str):
    return load_config(overrides=[
        f"data.dataset={dataset}", f"data.cache_dir={cache}", "data.patch_size=[16,16,16]", "train.batch_size=2",
        "data.samples_per_case=2", "model.channels=[8,16]", "data.preprocess_workers=1", *extra])


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "cases").iterdir() if not p.name.startswith("."))


def test_disk_cache_gives_the_same_batches_as_memory(tmp_path):
    from medseg_attn.segmentation.workflows.train import _datasets, _loader_batch, _Run
    from medseg_attn.training.setup import seeded_loader

    dataset = make_dataset(tmp_path / "data", 4)
    batches = {}
    for mode in ("disk", "memory"):
        run = _Run(config(dataset, tmp_path / "cache", f"data.cache={mode}", "data.validation_fraction=0.25"),
                   tmp_path / f"run_{mode}", resume=False, progress=False)
        train_ds, val_ds, transform = _datasets(run)
        drawn = []
        for epoch_seed in (7, 8):  # two epochs' loaders, augmentation on (the default)
            loader = seeded_loader(train_ds, transform, epoch_seed, 0, _loader_batch(run.config), 0,
                                   collate_fn=list_data_collate)
            drawn += [(batch["image"].clone(), batch["label"].clone()) for batch in loader]
        validation = [(torch.as_tensor(item["image"]).clone(), torch.as_tensor(item["label"]).clone())
                      for item in val_ds]
        batches[mode] = drawn, validation
    (disk, disk_val), (memory, memory_val) = batches["disk"], batches["memory"]
    assert len(disk) == len(memory) == 6  # 3 training cases, one per loader batch, two epochs
    for (image_a, label_a), (image_b, label_b) in zip(disk, memory):
        assert image_a.dtype == image_b.dtype == torch.float32 and label_a.dtype == label_b.dtype
        torch.testing.assert_close(image_a, image_b, rtol=0, atol=0)
        torch.testing.assert_close(label_a, label_b, rtol=0, atol=0)
    assert not torch.equal(disk[0][0], disk[3][0])  # the epochs draw different patches: the check can fail
    assert len(disk_val) == len(memory_val) == 1
    torch.testing.assert_close(disk_val[0][0], memory_val[0][0], rtol=0, atol=0)
    assert torch.equal(disk_val[0][1].long(), memory_val[0][1].long())


def test_changed_case_and_changed_plan_rebuild_exactly_what_changed(tmp_path):
    dataset = make_dataset(tmp_path / "data", 3)
    cache = tmp_path / "cache"
    first = prepare_dataset(config(dataset, cache))
    assert (first["cases"], first["built"]) == (3, 3)
    names = entries(cache)
    image = np.load(cache / "cases" / names[0] / "image.npy", mmap_mode="r")
    assert image.dtype == np.float32 and image.ndim == 4 and isinstance(image, np.memmap)
    assert prepare_dataset(config(dataset, cache))["built"] == 0  # all reused

    time.sleep(0.01)
    write_case(tmp_path / "data", "case001", seed=99)  # one case changes (new content, size or mtime)
    again = prepare_dataset(config(dataset, cache))
    assert again["built"] == 1
    changed = sorted(set(entries(cache)) - set(names))
    assert len(changed) == 1 and changed[0].startswith("case001-")

    replanned = prepare_dataset(config(dataset, cache, "data.spacing=[3,3,3]"))  # the plan changes
    assert replanned["built"] == 3 and len(entries(cache)) == 4 + 3


def test_interrupted_preprocess_resumes(tmp_path, monkeypatch):
    dataset = make_dataset(tmp_path / "data", 4)
    cache = tmp_path / "cache"
    real, calls = transforms_module.preprocessing, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third case is being preprocessed
        return real(*args, **kwargs)

    monkeypatch.setattr(transforms_module, "preprocessing", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(config(dataset, cache))
    assert len(entries(cache)) == 2  # whole entries only, nothing half-written under an entry's name
    locks = [p.name[1:-len(".lock")] for p in (cache / "cases").glob(".*.lock")]
    unfinished = [name for name in locks if name not in entries(cache)]
    assert len(unfinished) == 1  # the interrupted case
    stale = cache / "cases" / f".{unfinished[0]}.tmp-999999-dead"  # what a killed (not interrupted) writer leaves
    stale.mkdir()
    (stale / "image.npy").write_bytes(b"half")
    monkeypatch.setattr(transforms_module, "preprocessing", real)
    resumed = prepare_dataset(config(dataset, cache))
    assert resumed["built"] == 2 and len(entries(cache)) == 4
    assert not [p for p in (cache / "cases").iterdir() if ".tmp-" in p.name]
    assert not stale.exists()


def test_one_writer_per_entry(tmp_path):
    built = []

    def build(folder: Path) -> None:
        built.append(threading.get_ident())
        time.sleep(0.3)  # the other writer arrives while this one works
        (folder / "data.npy").write_bytes(b"x")

    entry = tmp_path / "cases" / "case-0123"
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_entry(entry, build))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1 and sorted(results) == [False, True]
    assert (entry / "data.npy").read_bytes() == b"x"
    # a writer whose build fails leaves nothing behind, and the next one builds
    def broken(folder: Path) -> None:
        raise ValueError("unreadable")

    other = tmp_path / "cases" / "case-4567"
    with pytest.raises(ValueError):
        ensure_entry(other, broken)
    assert not other.exists() and not list((tmp_path / "cases").glob("*.tmp-*"))


def test_two_concurrent_processes_share_one_cache(tmp_path):
    dataset = make_dataset(tmp_path / "data", 4)
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "medseg_attn.cli", "-q", "preprocess", "--data", str(dataset),
               "--cache", str(cache), "--workers", "1", "--set", "data.patch_size=[16,16,16]",
               "--set", "model.channels=[8,16]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    built = [int(out.split("(")[1].split(" built")[0]) for out, _ in outputs]
    assert sum(built) == 4, outputs  # every entry written once, by one of the two
    assert len(entries(cache)) == 4 and not [p for p in (cache / "cases").iterdir() if ".tmp-" in p.name]


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv(cache_module.CACHE_ENV, str(tmp_path / "env"))
    assert cache_module.cache_root() == tmp_path / "env"
    assert cache_module.cache_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv(cache_module.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_module.cache_root() == tmp_path / "xdg" / "medseg-attn"


RSS_CHILD = """
import json, resource, sys
from medseg_attn.config import load_config
from medseg_attn.segmentation.workflows.train import train
config = load_config(overrides=sys.argv[3:])
train(config, sys.argv[2], progress=False)
# VmHWM is this process's own peak (ru_maxrss would carry pytest's peak across fork + exec)
print(json.dumps({"peak_rss_mb": next(int(l.split()[1]) for l in open("/proc/self/status")
                                      if l.startswith("VmHWM")) / 1024}))
"""


def _peak_rss(dataset: Path, cache: Path, output: Path, mode: str, steps: int) -> float:
    overrides = [f"data.dataset={dataset}", f"data.cache_dir={cache}", f"data.cache={mode}",
                 "data.patch_size=[16,16,16]", "data.spacing=[2,2,2]", "train.batch_size=2",
                 "data.samples_per_case=2", "model.channels=[4,8]", "data.validation_fraction=0",
                 "data.augmentation.enabled=false", "train.max_epochs=1", f"train.steps_per_epoch={steps}",
                 "train.device=cpu"]
    result = subprocess.run([sys.executable, "-c", RSS_CHILD, "", str(output), *overrides], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"])


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_cases(tmp_path):
    """Peak RSS of a training process (measured in a subprocess) for 3 and 12 cases of 80^3 voxels (2.5 MB of
    preprocessed float32 image each): flat from the disk cache, growing with every case in memory."""
    shape = (80, 80, 80)
    peaks = {}
    for cases in (3, 12):
        dataset = make_dataset(tmp_path / f"data{cases}", cases, shape)
        prepare_dataset(config(dataset, tmp_path / "cache", "data.spacing=[2,2,2]", "model.channels=[4,8]",
                               "data.preprocess_workers=0"))  # preprocessing is not what is measured here
        for mode in ("disk", "memory"):
            peaks[mode, cases] = _peak_rss(dataset, tmp_path / "cache", tmp_path / f"run_{mode}{cases}", mode,
                                           steps=12)
    disk_growth = peaks["disk", 12] - peaks["disk", 3]
    memory_growth = peaks["memory", 12] - peaks["memory", 3]
    assert memory_growth > 25, peaks  # 9 more cases of 2 x 2.5 MB (image, label) in RAM: the test can fail
    assert disk_growth < 10, peaks  # the loader's working set, whatever the number of cases


def test_qc_fingerprint_features_are_computed_once_per_case(tmp_path):
    """The training fingerprint's per-case features go into CACHE/qc/ and a second call reads them (same entries,
    untouched), giving the same fingerprint; a changed case gets a new entry, the others are kept."""
    from medseg_attn.segmentation.data.datasets import load_dataset
    from medseg_attn.segmentation.data.preprocess import training_fingerprint

    dataset = load_dataset(make_dataset(tmp_path / "data", 3))
    labels = dataset.labels
    first = training_fingerprint(dataset.training, labels, ct=False, cache_dir=str(tmp_path / "cache"), workers=1)
    def listed() -> list[Path]:  # the entries (not their .lock files)
        return sorted(e for e in (tmp_path / "cache" / "qc").iterdir() if not e.name.startswith("."))

    entries = listed()
    assert len(entries) == 3 and all((e / "features.json").is_file() for e in entries)
    stamps = {e.name: (e / "features.json").stat().st_mtime_ns for e in entries}
    second = training_fingerprint(dataset.training, labels, ct=False, cache_dir=str(tmp_path / "cache"), workers=1)
    assert second == first and first["cases"] == 3
    assert {e.name: (e / "features.json").stat().st_mtime_ns for e in listed()} == stamps
    time.sleep(0.01)
    write_case(tmp_path / "data", "case000", seed=99)  # rewritten: a new entry for it alone
    training_fingerprint(dataset.training, labels, ct=False, cache_dir=str(tmp_path / "cache"), workers=1)
    after = [e.name for e in listed()]
    assert len(after) == 4 and set(stamps) < set(after)
