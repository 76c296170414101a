"""5-fold cross-validation on the CT task end to end, and the fold ensemble against one fold on held-out copies.

    python benchmarks/ct_cv.py --minutes 1 --output bench_ct_cv

The CT task is the one shared abdominal series (tests/data/totalseg_example_ct: 512 x 512 x 20, spleen / liver /
stomach from its TotalSegmentator labels 1, 5, 6). One series cannot be split into folds, so the training set is
that series and five acquisitions of it (:func:`medseg_attn.segmentation.workflows.stress.volume_variants`,
seed 0: moved, resampled to 1.2 x 1.2 x 2.5 mm, noised, +40 HU, all combined) and the held-out set is five more
(seed 1: the same kinds with other noise draws, a second move and HU offset), each written as NIfTI in its own
geometry. Every case is the same patient: this checks that CV, the out-of-fold report, the postprocessing choice
and the fold ensemble run end to end on CT; it measures nothing about new patients.

Runs ``medseg-attn train --folds 5`` (``--minutes`` per fold; ``medseg-attn cv`` runs at its end), then
``predict --model RUN`` (the 5-fold ensemble) and ``predict --model RUN --folds 0`` on the held-out cases and
``evaluate`` for both; prints a table and writes OUT/ct_cv.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is a folder of the repository

from benchmarks.commands import mean_dice, run  # noqa: E402

CT = Path(__file__).resolve().parents[1] / "tests" / "data" / "totalseg_example_ct"
LABELS = {"0": "background", "1": "spleen", "2": "liver", "3": "stomach"}
SOURCE_VALUES = {1: 1, 5: 2, 6: 3}  # TotalSegmentator value -> ours


def build(root: Path, labels: dict[str, str] = LABELS, source_values: dict[int, int] = SOURCE_VALUES,
          name: str = "ct_one_series") -> Path:
    """imagesTr/labelsTr (6 cases) and imagesTs/labelsTs (5 cases) plus dataset.json; returns dataset.json.

    ``source_values`` maps TotalSegmentator's label values (v2 numbering) to ours, ``labels`` names ours."""
    import nibabel as nib
    from monai import transforms as mt

    from medseg_attn.io.readers import LoadVolumed
    from medseg_attn.segmentation.workflows.stress import volume_variants

    data = LoadVolumed(["image", "label"])({"image": CT / "dicom", "label": CT / "example_seg_dicom.nii.gz"})
    data = mt.Orientationd(["image", "label"], axcodes="RAS")(data)
    image = np.asarray(data["image"][0], dtype=np.float32)
    source = np.asarray(data["label"][0]).astype(np.int64)
    label = np.zeros(source.shape, np.uint8)
    for value, ours in source_values.items():
        label[source == value] = ours
    affine = np.asarray(data["image"].affine, dtype=np.float64)
    training = []
    for split, seed in (("Tr", 0), ("Ts", 1)):
        (root / f"images{split}").mkdir(parents=True, exist_ok=True)
        (root / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for name, volume, seg, grid in volume_variants(image, label, affine, seed=seed,
                                                       offset=40.0 if seed == 0 else -30.0):
            if split == "Ts" and name == "as_is":
                continue  # the training series itself is not held out
            case = f"ct_{name}_{seed}.nii.gz"
            nib.save(nib.Nifti1Image(np.round(volume).astype(np.int16), grid), root / f"images{split}" / case)
            nib.save(nib.Nifti1Image(seg.astype(np.uint8), grid), root / f"labels{split}" / case)
            if split == "Tr":
                training.append({"image": f"imagesTr/{case}", "label": f"labelsTr/{case}"})
    spec = {"name": name, "modality": {"0": "CT"}, "labels": labels, "training": training}
    (root / "dataset.json").write_text(json.dumps(spec, indent=1))
    return root / "dataset.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0, help="training budget per fold (default 1)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("bench_ct_cv"))
    args = parser.parse_args(argv)
    cli = [sys.executable, "-m", "medseg_attn.cli"]
    out = args.output
    dataset = build(out / "data")
    seconds = {"train + cv": run([*cli, "-q", "train", "--data", str(dataset), "--folds", str(args.folds),
                                  "--minutes", str(args.minutes), "--output", str(out / "cv")])}
    results = {}
    for name, extra in (("ensemble", []), ("fold 0", ["--folds", "0"])):
        predictions = out / f"pred_{name.replace(' ', '')}"
        seconds[f"predict {name}"] = run([*cli, "predict", "--model", str(out / "cv"), *extra, "--input",
                                          str(out / "data" / "imagesTs"), "--output", str(predictions)])
        run([*cli, "evaluate", "--pred", str(predictions), "--label", str(out / "data" / "labelsTs"), "--output",
             str(out / f"eval_{name.replace(' ', '')}"), "--labels", str(dataset)])
        results[name] = mean_dice(out / f"eval_{name.replace(' ', '')}")
    cv_summary = json.loads((out / "cv" / "cv" / "summary.json").read_text())
    postprocessing = json.loads((out / "cv" / "postprocessing.json").read_text())
    record = {"minutes_per_fold": args.minutes, "folds": args.folds, "held_out": results, "seconds": seconds,
              "cv_summary": cv_summary, "postprocessing": postprocessing}
    (out / "ct_cv.json").write_text(json.dumps(record, indent=2))
    print("| held-out (5 copies) | " + " | ".join(LABELS[k] for k in ("1", "2", "3")) + " |")
    for name, dice in results.items():
        print(f"| {name} | " + " | ".join(f"{dice.get(LABELS[k], float('nan')):.4f}" for k in ("1", "2", "3")) + " |")
    print(json.dumps(seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
