"""Cost against dataset size: preprocessing (first run and cached), time to the first training step, peak RSS,
step time and data wait, for study-sized datasets built from the shared CT series.

    python benchmarks/scale.py --cases 4 12 --size 256 --slices 60 --output bench_scale

For each N it builds N CT cases (the shared 512 x 512 x 20 TotalSegmentator series, in-plane resized to
``--size``, stacked to ``--slices`` slices, each case shifted, flipped and noised differently so no two are the
same file; labels: its three largest structures) and runs, each in a fresh process with a fresh cache:
``medseg-attn preprocess`` (cold, all cores; with ``--single`` also with one worker), the same again (cached),
then ``medseg-attn train`` for ``--steps`` steps with that cache (its peak RSS, its time to the first step, its
step time and data wait from history.csv), and the same train with ``data.cache: memory`` (MONAI CacheDataset)
for comparison. Writes OUT/scale.json, OUT/scale.md (a table) and OUT/scale.png.

On a GPU machine ``--device cuda`` trains there: the rows add the GPU's peak allocated memory, and step time and
data wait are the GPU's (batches come in pinned memory and are copied with ``non_blocking=True``)::

    python benchmarks/scale.py --cases 24 --size 512 --slices 200 --steps 50 --no-memory --device cuda \
        --output bench_gpu
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# the CT series shipped with the tests (a copy of the shared TotalSegmentator example)
SHARED_CT = Path(__file__).resolve().parents[1] / "tests" / "data" / "totalseg_example_ct"


def build_dataset(root: Path, cases: int, size: int, slices: int) -> Path:
    """N CT cases of size x size x slices from the shared series (see the module docstring)."""
    import nibabel as nib
    import torch
    from monai import transforms as mt

    from medseg_attn.io.readers import LoadVolumed

    data = LoadVolumed(["image", "label"])({"image": SHARED_CT / "dicom", "label": SHARED_CT /
                                            "example_seg_dicom.nii.gz"})
    data = mt.Orientationd(["image", "label"], axcodes="RAS")(data)
    image = np.asarray(torch.as_tensor(data["image"]))[0]
    label = np.asarray(torch.as_tensor(data["label"]))[0].astype(np.int32)
    values, counts = np.unique(label[label > 0], return_counts=True)
    keep = values[np.argsort(counts)[::-1][:3]]
    mapped = np.zeros_like(label, dtype=np.uint8)
    for index, value in enumerate(keep, start=1):
        mapped[label == value] = index
    factor = image.shape[0] / size
    resize = mt.Resize((size, size, image.shape[2]), mode="area")
    image = np.asarray(resize(torch.as_tensor(image)[None]))[0]
    mapped = np.asarray(mt.Resize((size, size, mapped.shape[2]), mode="nearest")(torch.as_tensor(mapped)[None]))[0]
    repeats = int(np.ceil(slices / image.shape[2]))
    image = np.concatenate([image, image[:, :, ::-1]] * repeats, axis=2)[:, :, :slices]
    mapped = np.concatenate([mapped, mapped[:, :, ::-1]] * repeats, axis=2)[:, :, :slices]
    spacing = np.abs(np.diag(np.asarray(data["image"].affine))[:3]) * np.array([factor, factor, 1.0])
    affine = np.diag([*spacing, 1.0])
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for case in range(cases):
        shift = int(rng.integers(0, slices))
        flip = bool(case % 2)
        volume = np.roll(image, shift, axis=2) + rng.normal(0, 10, image.shape)
        seg = np.roll(mapped, shift, axis=2)
        if flip:
            volume, seg = volume[::-1], seg[::-1]
        nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), root / "imagesTr" / f"ct_{case:04d}.nii.gz")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(seg), affine), root / "labelsTr" / f"ct_{case:04d}.nii.gz")
    spec = {"name": f"scale{cases}", "modality": {"0": "CT"},
            "labels": {"0": "background", **{str(i): f"structure_{i}" for i in range(1, len(keep) + 1)}},
            "training": [{"image": f"imagesTr/ct_{i:04d}.nii.gz", "label": f"labelsTr/ct_{i:04d}.nii.gz"}
                         for i in range(cases)]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root / "dataset.json"


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and stdout of a command (which must succeed)."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stdout


CHILD = """
import json, resource, sys, time
start = float(sys.argv[1])
import medseg_attn.segmentation.workflows.train
training = sys.modules["medseg_attn.segmentation.workflows.train"]
first = {}
fit = training.fit
def timed_fit(task, *args, **kwargs):
    loss = task.loss
    def first_loss(model, batch):
        first.setdefault("t", time.time())
        return loss(model, batch)
    task.loss = first_loss
    return fit(task, *args, **kwargs)
training.fit = timed_fit
from medseg_attn.cli import main
code = main(sys.argv[2:])
# VmHWM: this process's own peak. ru_maxrss is not: Linux carries the parent's peak across fork + exec, so a
# child of a benchmark that built large arrays would report the parent's peak as its own.
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest worker process
import torch
gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and torch.cuda.is_initialized() else None
print(json.dumps({"code": code, "first_step_s": first.get("t", time.time()) - start, "peak_rss_mb": peak,
                  "worker_peak_rss_mb": children, "gpu_peak_mb": gpu}))
"""


def run_train(dataset: Path, cache: Path, output: Path, mode: str, steps: int, env: dict[str, str],
              device: str = "cpu") -> dict:
    shutil.rmtree(output, ignore_errors=True)
    start = time.time()
    command = [sys.executable, "-c", CHILD, str(start), "-q", "train", "--data", str(dataset), "--output", str(output),
               "--cache", str(cache), "--epochs", "1", "--set", f"train.steps_per_epoch={steps}",
               "--set", f"data.cache={mode}", "--set", "data.max_validation_cases=1", "--set", f"train.device={device}",
               "--set", "train.val_interval=100"]
    seconds, out = timed(command, env)
    child = json.loads(out.strip().splitlines()[-1])
    peak = child["peak_rss_mb"]
    with (output / "history.csv").open() as handle:
        row = list(csv.DictReader(handle))[-1]
    return {"wall_s": round(seconds, 1), "first_step_s": round(child["first_step_s"], 1),
            "peak_rss_mb": round(peak), "worker_peak_rss_mb": round(child["worker_peak_rss_mb"]),
            "step_s": round(float(row["epoch_seconds"]) / steps, 3), "data_wait": float(row["data_wait_fraction"]),
            **({"gpu_peak_mb": round(child["gpu_peak_mb"])} if child.get("gpu_peak_mb") is not None else {})}


def preprocess(dataset: Path, cache: Path, workers: int, env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "medseg_attn.cli", "-q", "preprocess", "--data", str(dataset),
               "--cache", str(cache), "--workers", str(workers)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    return round(time.perf_counter() - start, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, nargs="+", default=[4, 12])
    parser.add_argument("--size", type=int, default=256, help="in-plane voxels (512 = the full series)")
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--steps", type=int, default=10, help="training steps per run")
    parser.add_argument("--single", action="store_true", help="also preprocess with one worker (the speed-up)")
    parser.add_argument("--no-memory", action="store_true", help="skip the in-memory (CacheDataset) comparison")
    parser.add_argument("--device", default="cpu",
                        help="where train runs: cpu (default), cuda, cuda:N (GPU step time, data wait, GPU memory)")
    parser.add_argument("--output", type=Path, default=Path("bench_scale"))
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    rows = []
    for cases in args.cases:
        work = args.output / f"n{cases}"
        shutil.rmtree(work, ignore_errors=True)
        dataset = build_dataset(work / "data", cases, args.size, args.slices)
        size_mb = sum(p.stat().st_size for p in (work / "data").rglob("*.nii.gz")) / 2**20
        row = {"cases": cases, "shape": [args.size, args.size, args.slices], "dataset_mb": round(size_mb, 1)}
        if args.single:
            row["preprocess_1_worker_s"] = preprocess(dataset, work / "cache1", 1, env)
            shutil.rmtree(work / "cache1", ignore_errors=True)
        row["preprocess_first_s"] = preprocess(dataset, work / "cache", 0, env)
        row["preprocess_cached_s"] = preprocess(dataset, work / "cache", 0, env)
        row["device"] = args.device
        row["disk"] = run_train(dataset, work / "cache", work / "run_disk", "disk", args.steps, env, args.device)
        if not args.no_memory:
            row["memory"] = run_train(dataset, work / "cache", work / "run_memory", "memory", args.steps, env,
                                      args.device)
        print(json.dumps(row), flush=True)
        rows.append(row)
        shutil.rmtree(work / "data", ignore_errors=True)
    (args.output / "scale.json").write_text(json.dumps(rows, indent=1))
    write_report(rows, args.output)
    return 0


def write_report(rows: list[dict], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| cases | device | data MB | preprocess first s | cached s | 1 worker s | disk: first step s | "
             "disk: peak RSS MB | disk: largest worker RSS MB | disk: GPU peak MB | disk: step s | disk: data wait | "
             "memory: first step s | memory: peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        disk, memory = row["disk"], row.get("memory", {})
        lines.append(f"| {row['cases']} | {row.get('device', 'cpu')} | {row['dataset_mb']} | "
                     f"{row['preprocess_first_s']} | {row['preprocess_cached_s']} | "
                     f"{row.get('preprocess_1_worker_s', '')} | {disk['first_step_s']} | "
                     f"{disk['peak_rss_mb']} | {disk.get('worker_peak_rss_mb', '')} | {disk.get('gpu_peak_mb', '')} | "
                     f"{disk['step_s']} | "
                     f"{disk['data_wait']:.1%} | "
                     f"{memory.get('first_step_s', '')} | {memory.get('peak_rss_mb', '')} |")
    (output / "scale.md").write_text("\n".join(lines) + "\n")
    cases = [row["cases"] for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(cases, [row["disk"]["peak_rss_mb"] for row in rows], "o-", label="disk cache (memory map)")
    if all("memory" in row for row in rows):
        left.plot(cases, [row["memory"]["peak_rss_mb"] for row in rows], "s--", label="in memory (CacheDataset)")
    left.axhline(4096, color="grey", linestyle=":", label="4 GB (issue 22's bound)")
    left.set_ylim(0, max(4500, *(row["disk"]["peak_rss_mb"] * 1.1 for row in rows)))
    left.set(xlabel="training cases", ylabel="peak RSS of train (MB)", title="memory")
    left.legend()
    right.plot(cases, [row["preprocess_first_s"] for row in rows], "o-", label="preprocess, first run")
    right.plot(cases, [row["preprocess_cached_s"] for row in rows], "o-", label="preprocess, cached")
    right.plot(cases, [row["disk"]["first_step_s"] for row in rows], "^-", label="train: first step (cached)")
    right.set_yscale("log")
    right.set(xlabel="training cases", ylabel="seconds (log scale)", title="time")
    right.legend()
    figure.tight_layout()
    figure.savefig(output / "scale.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
