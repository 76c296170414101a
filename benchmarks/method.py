"""Sparse labels and fine-tuning, measured on the brain demo data (docs/cross-validation.md, "Measurements").

    python benchmarks/method.py --minutes 1.5 --output bench_method

Builds the brain demo dataset at 3 mm (``--train-cases`` training, ``--test-cases`` held-out cases) and, each
``medseg-attn`` command in a fresh process with the demo config and the same seed:

1. **Sparse labels.** Trains on full label maps and on label maps where only every 5th / 10th / 20th axial slice
   is annotated (the other voxels set to the ``ignore`` label, nnU-Net's convention), ``--minutes`` each; held-out
   grey / white matter Dice of each (``medseg-attn evaluate``).
2. **Fine-tuning.** A new task, white matter alone, with ``--finetune-cases`` labelled cases: trained from scratch
   and from the full-label model of step 1 (``--init-from``: the body copied, the white-matter output kept by
   name), ``--finetune-minutes`` each; held-out white-matter Dice of both.
Writes OUT/method.json and OUT/method.md (the two tables).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def medseg(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "medseg_attn.cli", "-q", *args], capture_output=True, text=True,
                            env=env)
    if result.returncode != 0:
        raise RuntimeError(f"medseg-attn {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def relabel(source: Path, target: Path, labels: dict[str, str], mapping) -> Path:
    """A copy of the dataset at ``source`` (dataset.json folder) whose training label maps are ``mapping(array,
    axis_of_S)`` and whose labels are ``labels``; images are linked, not copied."""
    import nibabel as nib

    shutil.rmtree(target, ignore_errors=True)
    (target / "labelsTr").mkdir(parents=True)
    os.symlink(source / "imagesTr", target / "imagesTr")
    spec = json.loads((source / "dataset.json").read_text())
    for entry in spec["training"]:
        image = nib.load(source / entry["label"])
        axis = nib.aff2axcodes(image.affine).index("S") if "S" in nib.aff2axcodes(image.affine) else \
            nib.aff2axcodes(image.affine).index("I")
        array = mapping(np.asarray(image.dataobj).astype(np.uint8), axis)
        nib.save(nib.Nifti1Image(array, image.affine), target / entry["label"])
    spec["labels"] = labels
    (target / "dataset.json").write_text(json.dumps(spec, indent=1))
    return target / "dataset.json"


def every_nth_slice(n: int):
    def mapping(array: np.ndarray, axis: int) -> np.ndarray:
        keep = np.zeros(array.shape[axis], bool)
        keep[::n] = True
        shape = [1] * array.ndim
        shape[axis] = -1
        return np.where(keep.reshape(shape), array, 3).astype(np.uint8)
    return mapping


def held_out_dice(run: Path, data: Path, work: Path, env: dict[str, str], labels: str | None = None
                  ) -> dict[str, float]:
    """Held-out mean Dice per class of ``run`` on ``data``'s imagesTs / labelsTs (``labels``: their names)."""
    predictions, evaluation = work / "pred", work / "eval"
    shutil.rmtree(predictions, ignore_errors=True)
    shutil.rmtree(evaluation, ignore_errors=True)
    medseg(["predict", "--model", str(run), "--input", str(data / "imagesTs"), "--output", str(predictions)], env)
    medseg(["evaluate", "--pred", str(predictions), "--label", str(work / "labelsTs" if labels else
                                                                     data / "labelsTs"),
            "--output", str(evaluation), "--labels", labels or str(data)], env)
    summary = json.loads((evaluation / "summary.json").read_text())
    return {name: round(stats["dice"]["mean"], 4) for name, stats in summary["classes"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.5, help="training budget of each sparse-label run")
    parser.add_argument("--finetune-minutes", type=float, default=0.5, help="budget of each fine-tuning run")
    parser.add_argument("--train-cases", type=int, default=8)
    parser.add_argument("--test-cases", type=int, default=3)
    parser.add_argument("--finetune-cases", type=int, default=2)
    parser.add_argument("--every", type=int, nargs="+", default=[5, 10, 20], help="annotated slice intervals")
    parser.add_argument("--output", type=Path, default=Path("bench_method"))
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = args.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from medseg_attn.demo_data import build_demo_dataset

    data = Path(build_demo_dataset(out / "data", train_cases=args.train_cases, test_cases=args.test_cases, seed=0,
                                   train_spacing=3.0, test_spacing=3.0, progress=False)).parent
    common = ["--config", "demo", "--minutes", str(args.minutes), "--set", "data.spacing=[3,3,3]",
              "--set", "train.seed=0", "--cache", str(out / "cache")]
    report: dict = {"sparse": [], "finetune": {}}
    names = {"0": "background", "1": "grey_matter", "2": "white_matter"}
    for every in [1, *args.every]:
        dataset = data / "dataset.json" if every == 1 else relabel(data, out / f"sparse_{every}",
                                                                   {**names, "3": "ignore"}, every_nth_slice(every))
        run = out / f"run_every_{every}"
        shutil.rmtree(run, ignore_errors=True)
        seconds = medseg(["train", "--data", str(dataset), "--output", str(run), *common], env)
        row = {"annotated": "every slice" if every == 1 else f"every {every}th axial slice",
               "fraction": round(1 / every, 3), "train_s": round(seconds), **held_out_dice(run, data, out, env)}
        print(json.dumps(row), flush=True)
        report["sparse"].append(row)

    # fine-tuning: white matter alone from a few cases, from scratch vs from the full-label model
    wm = {"0": "background", "1": "white_matter"}
    small = relabel(data, out / "wm_only", wm, lambda array, axis: (array == 2).astype(np.uint8))
    spec = json.loads(small.read_text())
    spec["training"] = spec["training"][: args.finetune_cases]
    small.write_text(json.dumps(spec, indent=1))
    import nibabel as nib

    (out / "labelsTs").mkdir(exist_ok=True)
    for path in sorted((data / "labelsTs").glob("*.nii.gz")):
        image = nib.load(path)
        nib.save(nib.Nifti1Image((np.asarray(image.dataobj) == 2).astype(np.uint8), image.affine),
                 out / "labelsTs" / path.name)
    short = ["--config", "demo", "--minutes", str(args.finetune_minutes), "--set", "data.spacing=[3,3,3]",
             "--set", "train.seed=0", "--cache", str(out / "cache")]
    for name, extra in (("scratch", []), ("init_from", ["--init-from", str(out / "run_every_1")])):
        run = out / f"wm_{name}"
        shutil.rmtree(run, ignore_errors=True)
        medseg(["train", "--data", str(small), "--output", str(run), *short, *extra], env)
        report["finetune"][name] = held_out_dice(run, data, out, env, labels=str(small.parent))
        print(json.dumps({name: report["finetune"][name]}), flush=True)
    lines = ["| labels | fraction annotated | grey matter Dice | white matter Dice |", "|---|---|---|---|"]
    lines += [f"| {r['annotated']} | {r['fraction']} | {r.get('grey_matter')} | {r.get('white_matter')} |"
              for r in report["sparse"]]
    lines += ["", f"| white matter from {args.finetune_cases} cases, {args.finetune_minutes} min | held-out Dice |",
              "|---|---|"]
    lines += [f"| {name} | {dice.get('white_matter')} |" for name, dice in report["finetune"].items()]
    (out / "method.md").write_text("\n".join(lines) + "\n")
    (out / "method.json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
