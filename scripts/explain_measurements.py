#!/usr/bin/env python
"""Does the uncertainty behave? Mean uncertainty on tissue boundaries vs inside tissue, and on an unseen modality.

    python scripts/explain_measurements.py --model DEMO_OUT/run --data DEMO_OUT/data [--ct CT.nii.gz] [--tta]

For each held-out case of a demo data set (imagesTs/, labelsTs/), predicts with the uncertainty map and averages
it over: voxels within one voxel of a reference label change (boundary), tissue voxels away from any change
(inside tissue: grey or white matter), background away from any change, and the whole volume. With --ct, also
predicts a volume the model was not trained for (e.g. the abdominal CT in ../shared/data) and prints its means
beside the brains'. The numbers in docs/explainability.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medseg_attn.segmentation.inference.predictor import Predictor


def regions(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boundary (a label change within the 3x3x3 neighbourhood), inside tissue, background, whole volume."""
    boundary = ndimage.maximum_filter(labels, size=3) != ndimage.minimum_filter(labels, size=3)
    return {"boundary": boundary, "inside tissue": (labels > 0) & ~boundary, "background": (labels == 0) & ~boundary,
            "whole volume": np.ones(labels.shape, dtype=bool)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, nargs="+", help="run folder(s) or checkpoint(s) (several: ensemble)")
    parser.add_argument("--data", type=Path, required=True, help="demo data folder (imagesTs/, labelsTs/)")
    parser.add_argument("--ct", type=Path, help="a volume the model was not trained for")
    parser.add_argument("--tta", action="store_true", help="average over flips too")
    parser.add_argument("--output", type=Path, help="JSON file for the numbers")
    args = parser.parse_args()
    predictor = Predictor.from_checkpoint(args.model, device="cpu", tta=args.tta or None)
    rows = {}
    for image in sorted((args.data / "imagesTs").glob("*.nii.gz")):
        labels = np.asarray(nib.load(str(args.data / "labelsTs" / image.name)).dataobj).astype(np.int16)
        result = predictor.predict(image, uncertainty=True)
        rows[image.name] = {name: float(result.uncertainty[mask].mean()) for name, mask in regions(labels).items()}
        rows[image.name]["predicted foreground"] = result.uncertainty_means()[1]
        print(image.name, json.dumps({k: round(v, 4) for k, v in rows[image.name].items()}), flush=True)
    keys = list(next(iter(rows.values())))
    summary = {key: (float(np.mean([r[key] for r in rows.values()])), float(np.std([r[key] for r in rows.values()])))
               for key in keys}
    print("brains, mean ± sd over cases: " + "; ".join(f"{k} {m:.4f} ± {s:.4f}" for k, (m, s) in summary.items()))
    report = {"cases": rows, "summary": summary, "tta": args.tta, "model": args.model}
    if args.ct:
        result = predictor.predict(args.ct, uncertainty=True)
        whole, inside = result.uncertainty_means()
        body = np.asarray(nib.load(str(args.ct)).get_fdata(dtype=np.float32)) > -500  # HU: the body, not air
        report["ct"] = {"whole volume": whole, "predicted foreground": inside,
                        "body (HU > -500)": float(result.uncertainty[body].mean()),
                        "predicted foreground fraction": float((result.labels > 0).mean())}
        print(f"{args.ct.name}: " + "; ".join(f"{k} {v:.4f}" for k, v in report["ct"].items()))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
