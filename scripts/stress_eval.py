"""Stress test of a trained segmentation model: Dice per acquisition variant, CSV + PNG.

Brain (the demo's MNI152 model; held-out deformations never used in training):
    python scripts/stress_eval.py --model demo_out/run --output stress/ --cases 3
Any labelled volume (e.g. CT: moved / resampled / noised / HU-offset copies):
    python scripts/stress_eval.py --model runs/ct --output stress_ct/ --image ct_dicom/ --label seg.nii.gz \\
        --label-map 1=1,5=2,6=3

Failure detection (docs/trust.md): add the failure modes and record each case's signals (QC score, uncertainty,
member disagreement), judged as detectors of failed cases (AUROC, AURC):
    python scripts/stress_eval.py --model demo_out/run --output stress/ --cases 6 --failure-modes --signals
    python scripts/stress_eval.py --model demo_out/run --output stress_b/ --cases 6 --first-case 6 \
        --failure-modes --signals --foreign ct_dicom/        # a second set of seeds, and a CT into the MR model

Writes OUTPUT/stress.csv (one row per case and variant) and OUTPUT/stress.png; prints the mean per variant and
its difference from as-is. With --signals also OUTPUT/failure_detection.csv and .png and OUTPUT/qc/ thumbnails.
See docs/preprocessing.md and docs/trust.md.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder or checkpoint")
    parser.add_argument("--output", required=True, help="folder for stress.csv and stress.png")
    parser.add_argument("--cases", type=int, default=3, help="brain: held-out deformations (default 3)")
    parser.add_argument("--first-case", type=int, default=0,
                        help="brain: index of the first held-out deformation (another set of seeds; default 0)")
    parser.add_argument("--variants", nargs="*", help="brain: only these variants")
    parser.add_argument("--failure-modes", action="store_true",
                        help="brain: also the failure modes (flipped header, heavy noise, ghosting, truncated field "
                             "of view, 6 mm slices, CT into the MR model)")
    parser.add_argument("--signals", action="store_true",
                        help="record the QC score, uncertainty and member disagreement of every case and judge them "
                             "as failure detectors (failure_detection.csv/.png)")
    parser.add_argument("--foreign", nargs="*", default=[],
                        help="images of another modality or body part (no label: any structure predicted there "
                             "scores Dice 0), one extra case each")
    parser.add_argument("--image", help="a labelled volume (file or DICOM folder) instead of the brain cases")
    parser.add_argument("--label", help="its label map")
    parser.add_argument("--label-map", help="source=model label values, e.g. 1=1,5=2,6=3 (others -> 0)")
    parser.add_argument("--choose-on", metavar="FOLDER",
                        help="with --signals: choose the review severity (each signal alone, or the QC score plus a "
                             "flag on another signal) on an earlier run's FOLDER/stress.csv (other seeds) and report "
                             "it on this run: OUTPUT/severity_choice.json")
    parser.add_argument("--rescore", action="store_true",
                        help="predict nothing: read OUTPUT/stress.csv of an earlier --signals run (with --choose-on)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("monai", "nibabel"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from medseg_attn.segmentation.inference.predictor import Predictor
    from medseg_attn.segmentation.workflows.stress import (
        BRAIN_VARIANTS,
        FAILURE_VARIANTS,
        brain_variants,
        read_stress_csv,
        run_stress,
        volume_variants,
    )

    predictor = Predictor.from_checkpoint(args.model, device=args.device)
    if args.image:
        image, label, affine = _read_pair(args.image, args.label, args.label_map)
        variants = ((0, variant) for variant in volume_variants(image, label, affine))
        title = f"stress test: {args.image}"
    else:
        names = tuple(args.variants or BRAIN_VARIANTS + (FAILURE_VARIANTS if args.failure_modes else ()))
        cases = range(args.first_case, args.first_case + args.cases)
        variants = ((case, variant) for case in cases for variant in brain_variants(case, names))  # one at a time
        title = f"stress test: {args.cases} held-out brain deformations at 1 mm"
    foreign = ((f"foreign{k}", _foreign(path)) for k, path in enumerate(args.foreign))
    variants = itertools.chain(variants, foreign)
    if args.rescore:  # an earlier run's rows: no prediction
        rows = read_stress_csv(Path(args.output) / "stress.csv")
    else:
        rows = run_stress(predictor, variants, args.output, title, signals=args.signals)
    classes = [n for i, n in sorted(predictor.labels.items()) if i > 0]
    if args.choose_on:
        _report_choice(args.choose_on, rows, classes, args.output)
    base = {c: np.nanmean([r[c] for r in rows if r["variant"] == "as_is"]) for c in classes}
    print(f"{'variant':18s}" + "".join(f"{c:>22s}" for c in classes))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        means = {c: np.nanmean([r[c] for r in rows if r["variant"] == variant]) for c in classes}
        print(f"{variant:18s}" + "".join(f"{means[c]:>12.3f} ({means[c] - base[c]:+.3f})" for c in classes))
    return 0


def _report_choice(folder: str, rows: list, classes: list, output: str) -> None:
    """Choose the severity on FOLDER's cases, judge it on these: severity_choice.json and a printed summary."""
    import json

    from medseg_attn.io.files import atomic_write_text
    from medseg_attn.segmentation.evaluation.failure_detection import (
        TARGETS,
        choose_severity,
        evaluate_signals,
        false_alarm_rate,
        with_severity,
    )
    from medseg_attn.segmentation.workflows.stress import BRAIN_VARIANTS, failure_records, read_stress_csv

    chosen_on = failure_records(read_stress_csv(Path(folder) / "stress.csv"), classes)
    severity, candidates = choose_severity(chosen_on)
    here = with_severity(failure_records(rows, classes), severity)
    reported = evaluate_signals(here, ["chosen"], TARGETS)
    in_distribution = list(BRAIN_VARIANTS)
    alarms = {"chosen_on": false_alarm_rate(chosen_on, severity, in_distribution),
              "reported_on": false_alarm_rate(here, severity, in_distribution)}
    summary = {"chosen": severity.name, "base": severity.base, "extra": severity.extra,
               "threshold": None if severity.extra is None else severity.threshold, "chosen_on": str(folder),
               "candidates_on_chosen_set": [{"severity": r.signal, "auroc": r.auroc, "aurc": r.aurc}
                                            for r in candidates],
               "reported": [r.as_dict() for r in reported],
               "false_alarms_on_good_cases": {k: {"flagged": f, "cases": n} for k, (f, n) in alarms.items()}}
    atomic_write_text(Path(output) / "severity_choice.json", json.dumps(summary, indent=2, default=str) + "\n")
    if severity.base == "qc_score" and severity.extra == "uncertainty_foreground":  # the QC report can apply it
        atomic_write_text(Path(output) / "review.yaml", "# chosen by scripts/stress_eval.py --choose-on "
                          f"{folder}\nreview:\n  max_foreground_uncertainty: {severity.threshold:.4f}\n")
        print(f"  the QC report applies it: predict --uncertainty --review-config {Path(output) / 'review.yaml'}")
    elif severity.extra is not None:
        print(f"  the QC report cannot compute {severity.extra}; its score is the QC score alone")
    print(f"severity chosen on {folder}: {severity.name}")
    for row in reported:
        print(f"  on this run, {row.target}: AUROC {row.auroc:.3f}  AURC {row.aurc:.4f} (oracle {row.optimal_aurc:.4f})"
              f"  n={row.n_cases} failed={row.n_failed}")
    for key, (flagged, total) in alarms.items():
        print(f"  good in-distribution cases flagged ({key.replace('_', ' ')}): {flagged} of {total}")


def _foreign(path: str):
    """A case of another modality or body part: its image, an empty label, its affine."""
    from medseg_attn.io.readers import LoadVolumed

    image = LoadVolumed("image")({"image": path})["image"]
    array = np.asarray(image[0], dtype=np.float32)
    return "foreign", array, np.zeros(array.shape, np.uint8), np.asarray(image.affine, dtype=np.float64)


def _read_pair(image_path: str, label_path: str | None, label_map: str | None):
    """Image (first channel) and label on the image's grid (RAS world affine), labels remapped."""
    from medseg_attn.io.readers import LoadVolumed

    if not label_path:
        raise SystemExit("--image needs --label")
    data = LoadVolumed(["image", "label"])({"image": image_path, "label": label_path})
    image = np.asarray(data["image"][0], dtype=np.float32)
    label = np.asarray(data["label"][0]).astype(np.int64)
    affine = np.asarray(data["image"].affine, dtype=np.float64)
    if not np.allclose(affine, np.asarray(data["label"].affine), atol=1e-3) or image.shape != label.shape:
        from monai import transforms as mt

        # the label may be stored with an axis flipped (LAS): both to RAS
        ras = mt.Orientationd(["image", "label"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(data)
        image = np.asarray(ras["image"][0], dtype=np.float32)
        label = np.asarray(ras["label"][0]).astype(np.int64)
        affine = np.asarray(ras["image"].affine, dtype=np.float64)
    if label_map:
        mapped = np.zeros_like(label)
        for pair in label_map.split(","):
            source, target = (int(v) for v in pair.split("="))
            mapped[label == source] = target
        label = mapped
    return image, label.astype(np.uint8), affine


if __name__ == "__main__":
    sys.exit(main())
