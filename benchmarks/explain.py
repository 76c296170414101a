#!/usr/bin/env python
"""Cost of the explanation maps: `predict` with --attention-maps --uncertainty against `predict` without them.

    python benchmarks/explain.py --model /tmp/demo7/run             # a demo run folder (or checkpoint)
    python benchmarks/explain.py --model RUN --repetitions 3 --output bench_explain/

Builds a 256x256x128 volume (1 mm, a held-out brain of the demo data set in the middle of scanner-like noise, so
no crop removes any of it) unless --input names one, then times whole `predict` runs (read, preprocess, sliding
window, resample onto the input grid, write every output) in fresh processes, the two settings interleaved
repetition by repetition, two ways: the `medseg-attn predict` command as a user runs it (wall and CPU time, peak
resident memory of the process), and predict_files alone in a fresh process after the imports and the model load
(wall and CPU time, peak memory VmHWM, and the memory the prediction adds). Prints medians, the fastest wall time
and the ratios (target: within 1.3x), and writes OUTPUT/benchmark_explain.json. On a machine shared with other
work the wall time swings with their load; the CPU time and the fastest run are the steadier measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
from medseg_attn.segmentation.workflows.batch import predict_files
from medseg_attn.segmentation.inference.predictor import Predictor

model, source, out, explain, device = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
predictor = Predictor.from_checkpoint(model, device=device)

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")

before = rss("VmRSS:")
if device != "cpu":
    torch.cuda.reset_peak_memory_stats()
start, cpu = time.perf_counter(), time.process_time()
records = predict_files(predictor, [source], out, attention_maps=explain, uncertainty=explain, progress=False,
                        overwrite=True)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
assert records[0]["status"] == "ok", records
gpu = torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else None
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": rss("VmHWM:"), "rss_before_mb": before,
                  "gpu_peak_mb": gpu}))
"""


def make_volume(path: Path, shape: tuple[int, int, int] = (256, 256, 128)) -> Path:
    """A held-out demo brain (1 mm) centred in a volume of ``shape`` filled with Rician-like background noise."""
    import nibabel as nib
    import numpy as np

    from medseg_attn.demo_data import build_demo_dataset

    data = build_demo_dataset(path.parent / "demo_data", train_cases=1, test_cases=1, seed=7, progress=False)
    brain = nib.load(str(next((data.parent / "imagesTs").iterdir())))
    values = np.asarray(brain.get_fdata(dtype=np.float32))
    rng = np.random.default_rng(0)
    level = 0.03 * float(np.percentile(values[values > 0], 90))
    volume = np.abs(rng.normal(0, level, shape) + 1j * rng.normal(0, level, shape)).astype(np.float32)
    take = [min(s, t) for s, t in zip(values.shape, shape)]
    src = [(s - t) // 2 for s, t in zip(values.shape, take)]
    dst = [(s - t) // 2 for s, t in zip(shape, take)]
    region = values[tuple(slice(a, a + t) for a, t in zip(src, take))]
    target = tuple(slice(a, a + t) for a, t in zip(dst, take))
    volume[target] = np.maximum(volume[target], region)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -np.array(shape) / 2
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return path


def _cli(model: str, source: Path, out: Path, explain: bool, device: str) -> dict:
    """One `medseg-attn predict` command as a user runs it: wall and CPU time, peak memory (from wait4)."""
    command = [sys.executable, "-m", "medseg_attn.cli", "-q", "predict", "--model", model, "--input", str(source),
               "--output", str(out), "--overwrite", "--device", device]
    if explain:
        command += ["--attention-maps", "--uncertainty"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(process.stderr.read().decode())
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def _in_process(model: str, source: Path, out: Path, explain: bool, device: str) -> dict:
    """predict_files alone (after the imports and the model load), in a fresh process."""
    result = subprocess.run([sys.executable, "-c", CHILD, model, str(source), str(out), "1" if explain else "0",
                             device], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _summary(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for field, pick in (("seconds", statistics.median), ("seconds", min), ("cpu_seconds", statistics.median),
                        ("peak_rss_mb", statistics.median), ("gpu_peak_mb", statistics.median)):
        if runs["plain"][0].get(field) is None:
            continue
        plain = pick(r[field] for r in runs["plain"])
        explain = pick(r[field] for r in runs["explain"])
        out[f"{field}_{pick.__name__}"] = {"plain": round(plain, 3), "explain": round(explain, 3),
                                           "ratio": round(explain / plain, 3)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder or checkpoint of a model with attention")
    parser.add_argument("--input", type=Path, help="volume to predict (default: a generated 256x256x128 brain)")
    parser.add_argument("--repetitions", type=int, default=3, help="runs per setting, interleaved (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--output", type=Path, default=Path("benchmark_explain_out"), help="folder for the JSON")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    measures = {"command": _cli, "predict_files": _in_process}
    runs: dict[str, dict[str, list[dict]]] = {m: {"plain": [], "explain": []} for m in measures}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        source = args.input or make_volume(scratch / "volume_256x256x128.nii.gz")
        for repetition in range(args.repetitions):
            for measure, run in measures.items():
                for setting in ("plain", "explain"):
                    result = run(str(args.model), source, scratch / setting, setting == "explain", args.device)
                    runs[measure][setting].append(result)
                    print(f"rep {repetition} {measure:13s} {setting:8s} "
                          + ", ".join(f"{k} {v:.2f}" for k, v in result.items() if v is not None), flush=True)
    report: dict = {"input": str(args.input or "generated 256x256x128 brain volume"), "model": str(args.model),
                    "device": args.device, "repetitions": args.repetitions, "runs": runs}
    for measure in measures:
        report[measure] = _summary(runs[measure])
        for key, value in report[measure].items():
            print(f"{measure:13s} {key:20s} without maps {value['plain']:8.2f}  with --attention-maps "
                  f"--uncertainty {value['explain']:8.2f}  ratio {value['ratio']:.2f} (target <= 1.3)")
    added = [statistics.median(r["peak_rss_mb"] - r["rss_before_mb"] for r in runs["predict_files"][s])
             for s in ("plain", "explain")]
    report["predict_files"]["added_memory_mb"] = {"plain": round(added[0], 1), "explain": round(added[1], 1),
                                                  "ratio": round(added[1] / max(added[0], 1e-9), 3)}
    print(f"predict_files memory added by the prediction itself: {added[0]:.0f} MB without, {added[1]:.0f} MB with "
          f"the maps, ratio {added[1] / max(added[0], 1e-9):.2f}")
    (args.output / "benchmark_explain.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
