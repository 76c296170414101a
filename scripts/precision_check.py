"""Dice of one model's predictions in fp32 and in another arithmetic (default bf16), case by case.

    python scripts/precision_check.py --model demo_out/run --data demo_out/data --stress-cases 2

Predicts the held-out cases of an MSD-layout dataset (imagesTs/ with labelsTs/) and, for the brain demo's model,
the stress variants of ``--stress-cases`` unseen deformations, once per precision; prints Dice per case and class,
the means, the time, and the largest Dice difference. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder or checkpoint")
    parser.add_argument("--data", help="dataset folder with imagesTs/ and labelsTs/")
    parser.add_argument("--stress-cases", type=int, default=0, help="brain stress cases (13 variants each)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "auto"), help="compared with fp32")
    args = parser.parse_args(argv)

    import nibabel as nib

    from medseg_attn.segmentation.inference.predictor import Predictor
    from medseg_attn.segmentation.workflows.stress import brain_variants, dice_scores

    results = {}
    for precision in ("fp32", args.precision):
        predictor = Predictor.from_checkpoint(args.model, precision=precision)
        classes = [name for index, name in sorted(predictor.labels.items()) if index > 0]
        rows = []
        for path in sorted(glob.glob(os.path.join(args.data, "imagesTs", "*.nii*"))) if args.data else []:
            image = nib.load(path)
            started = time.perf_counter()
            prediction = predictor.predict(np.asarray(image.dataobj, dtype=np.float32), affine=image.affine)
            seconds = time.perf_counter() - started
            reference = np.asarray(nib.load(path.replace("imagesTs", "labelsTs")).dataobj).astype(int)
            rows.append((os.path.basename(path), dice_scores(prediction.labels, reference, predictor.labels), seconds))
        for case in range(args.stress_cases):
            for name, array, label, affine in brain_variants(case):
                started = time.perf_counter()
                prediction = predictor.predict(array, affine=affine)
                rows.append((f"stress {case} {name}", dice_scores(prediction.labels, label, predictor.labels),
                             time.perf_counter() - started))
        results[precision] = rows
    reference, other = results["fp32"], results[args.precision]
    worst = 0.0
    for (name, a, t0), (_, b, t1) in zip(reference, other, strict=True):
        worst = max([worst, *(abs(b[c] - a[c]) for c in classes)])
        changes = "  ".join(f"{c} {a[c]:.4f} -> {b[c]:.4f}" for c in classes)
        print(f"{name:30s} {changes}  {t0:.2f} -> {t1:.2f} s")
    for label, rows in (("fp32", reference), (args.precision, other)):
        means = [np.nanmean([r[1][c] for r in rows]) for c in classes]
        print(f"mean {label:5s} " + "  ".join(f"{c} {m:.4f}" for c, m in zip(classes, means, strict=True))
              + f"  time {sum(r[2] for r in rows):.1f} s")
    print(f"largest |Dice difference| over {len(reference)} cases x {len(classes)} classes: {worst:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
