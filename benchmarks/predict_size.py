"""Prediction at study size: one very long CT with bounded memory, and a batch of cases with the model loaded once.

    python benchmarks/predict_size.py --long-slices 1000 --batch 20 --output bench_predict

1. Trains a CT model for a few steps on two 512 x 512 x 200 cases built from the CT series in ``tests/data``
   (the same construction as ``benchmarks/scale.py``; the plan is the one ``train`` makes for such data). The
   weights hardly matter for time and memory: every window is computed whatever the network predicts.
2. ``medseg-attn predict`` on one 512 x 512 x ``--long-slices`` CT, in a fresh process: wall time and peak RSS
   (the process and its largest child).
3. ``medseg-attn predict`` on a folder of ``--batch`` cases of 512 x 512 x 200 in one process (the model loaded
   once): wall time, cases per hour, peak RSS.
Writes OUT/predict_size.json and prints one line per measurement.

What bounds memory in prediction: the image and the class probabilities on the network's grid (float32, K
classes), the label map and its slabs on the input grid (``resample_prediction`` works in slabs of at most 2^22
voxels), and one batch of windows. The input-grid probabilities are held only with ``--probabilities``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.scale import build_dataset  # noqa: E402

CHILD = """
import json, resource, sys
from medseg_attn.cli import main
code = main(sys.argv[1:])
# VmHWM, not ru_maxrss: Linux carries the parent's peak across fork + exec into ru_maxrss
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"code": code, "peak_rss_mb": peak,
                  "child_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def cli(args: list[str], env: dict[str, str]) -> dict:
    """Run ``medseg-attn ARGS`` in a fresh process: wall seconds, peak RSS (MB) of it and of its largest child."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"medseg-attn {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    child = json.loads(result.stdout.strip().splitlines()[-1])
    return {"wall_s": round(seconds, 1), "peak_rss_mb": round(child["peak_rss_mb"]),
            "child_peak_rss_mb": round(child["child_peak_rss_mb"])}


def long_ct(folder: Path, size: int, slices: int) -> Path:
    """One ``size`` x ``size`` x ``slices`` CT (the scale construction, tiled along z) in ``folder/long/``."""
    import nibabel as nib

    source = build_dataset(folder / "build", 1, size, slices)
    image = nib.load(source.parent / "imagesTr" / "ct_0000.nii.gz")
    target = folder / "long" / "long_ct.nii.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, target)
    return target.parent


def _case_seconds(report: Path) -> list[float]:
    """The per-case prediction seconds of a batch's report.csv (cases that were predicted, not skipped)."""
    import csv

    if not report.exists():
        return []
    with report.open(newline="") as handle:
        return [float(row["seconds"]) for row in csv.DictReader(handle) if row["status"] == "ok"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long-slices", type=int, default=1000,
                        help="slices of the long CT (512 x 512 x N); 0: skip it")
    parser.add_argument("--batch", type=int, default=20, help="cases of 512 x 512 x 200 in the batch run")
    parser.add_argument("--steps", type=int, default=4, help="training steps of the model")
    parser.add_argument("--size", type=int, default=512, help="in-plane voxels of every case (smaller: a smoke run)")
    parser.add_argument("--slices", type=int, default=200, help="slices of the training and batch cases")
    parser.add_argument("--output", type=Path, default=Path("bench_predict"))
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpu_threads": os.cpu_count()}

    train_data = build_dataset(out / "train_data", 2, args.size, args.slices)
    report["train"] = cli(["-q", "train", "--data", str(train_data), "--output", str(out / "run"), "--cache",
                           str(out / "cache"), "--epochs", "1", "--set", f"train.steps_per_epoch={args.steps}",
                           "--set", "data.validation_fraction=0", "--set", "train.device=cpu"], env)
    plan = json.loads((out / "run" / "plan.json").read_text())
    report["plan"] = {k: plan["resolved"][k] for k in ("spacing", "patch_size")}
    print(json.dumps({"train": report["train"], "plan": report["plan"]}), flush=True)

    if args.long_slices > 0:
        folder = long_ct(out / "long_data", args.size, args.long_slices)
        report["long"] = {"shape": [args.size, args.size, args.long_slices],
                          **cli(["-q", "predict", "--model", str(out / "run"), "--input", str(folder), "--output",
                                 str(out / "pred_long")], env)}
        print(json.dumps({"long": report["long"]}), flush=True)

    batch = build_dataset(out / "batch_data", args.batch, args.size, args.slices).parent / "imagesTr"
    measured = cli(["-q", "predict", "--model", str(out / "run"), "--input", str(batch), "--output",
                    str(out / "pred_batch")], env)
    written = len(list((out / "pred_batch").glob("*.nii.gz")))
    seconds = _case_seconds(out / "pred_batch" / "report.csv")  # each case's own predict time (report.csv)
    report["batch"] = {"cases": args.batch, "written": written, "shape": [args.size, args.size, args.slices],
                       **measured,
                       "cases_per_hour": round(3600 * written / measured["wall_s"], 1),
                       "case_seconds_median": round(float(np.median(seconds)), 2) if seconds else None,
                       "case_seconds_p90": round(float(np.percentile(seconds, 90)), 2) if seconds else None}
    print(json.dumps({"batch": report["batch"]}), flush=True)
    (out / "predict_size.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
