#!/usr/bin/env python
"""What a missing sequence costs, with and without channel dropout, on the lesion demo task (docs/inputs.md).

    python scripts/missing_channels.py --output OUT [--minutes 3] [--train-cases 20] [--test-cases 4]

Builds the lesion dataset (two channels: T1-like, FLAIR-like), trains the default network twice in the same budget,
once with channel dropout (data.augmentation.channel_dropout_probability 0.2, the default) and once without (0),
then predicts the held-out cases with both channels, with FLAIR missing (--channels T1) and with T1 missing
(--channels FLAIR), and evaluates each: grey-matter, white-matter-region and lesion Dice, pooled lesion F1 and
lesion-wise Dice. Prints a markdown table (also OUT/missing_channels.md) with the steps each model trained.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from medseg_attn.lesion_data import build_lesion_dataset
from medseg_attn.segmentation.data.datasets import load_dataset
from medseg_attn.segmentation.evaluation.evaluate import evaluate_folders
from medseg_attn.segmentation.evaluation.lesion_report import LesionOptions
from medseg_attn.segmentation.workflows.demo import demo_config
from medseg_attn.segmentation.workflows.predict import PredictOptions, predict_batch
from medseg_attn.segmentation.workflows.train import train

INPUTS = {"both": ("T1", "FLAIR"), "FLAIR missing": ("T1",), "T1 missing": ("FLAIR",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--train-cases", type=int, default=20)
    parser.add_argument("--test-cases", type=int, default=4)
    args = parser.parse_args()
    out = args.output
    dataset_json = out / "data" / "dataset.json"
    if not dataset_json.exists():
        build_lesion_dataset(out / "data", args.train_cases, args.test_cases, progress=False)
    dataset = load_dataset(dataset_json)
    root = dataset_json.parent
    inputs = {}
    for name, channels in INPUTS.items():  # one folder per input kind, files renumbered _0000, _0001 as given
        folder = out / "inputs" / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for image in sorted((root / "imagesTs").glob("*_0000.nii.gz")):
            case = image.name[: -len("_0000.nii.gz")]
            for position, channel in enumerate(channels):
                source = root / "imagesTs" / f"{case}_{dataset.channel_names.index(channel):04d}.nii.gz"
                shutil.copy(source, folder / f"{case}_{position:04d}.nii.gz")
        inputs[name] = folder
    rows = []
    for dropout in (0.2, 0.0):
        run = out / f"run_dropout_{dropout:g}"
        config = demo_config([f"data.dataset={dataset_json}", f"train.minutes={args.minutes}",
                              f"data.augmentation.channel_dropout_probability={dropout}"])
        result = train(config, run, progress=False)
        for name, folder in inputs.items():
            predictions = out / f"predictions_dropout_{dropout:g}" / folder.name
            predict_batch(PredictOptions(model=(run,), inputs=(folder,), output=predictions, overwrite=True,
                                         channels=INPUTS[name], progress=False))
            summary = evaluate_folders(predictions, root / "labelsTs", out / f"evaluation_dropout_{dropout:g}" /
                                       folder.name, labels=dataset.regions.labels, progress=False,
                                       lesions=LesionOptions(structures=("lesion",)), regions=dataset.regions)
            region = {n: v["dice"]["mean"] for n, v in summary["regions"].items()}
            lesion = summary["lesions"]["structures"]["lesion"]
            rows.append(f"| {dropout:g} | {name} | {region['grey_matter']:.3f} | {region['white_matter']:.3f} | "
                        f"{region['lesion']:.3f} | {lesion['lesion_f1']:.3f} | {lesion['lesionwise_dice']['mean']:.3f} "
                        f"| {result.steps} |")
    table = "\n".join(["| channel dropout | input | GM Dice | WM region Dice | lesion Dice | lesion F1 | lesion-wise "
                       "Dice | steps |", "|---|---|---|---|---|---|---|---|", *rows])
    (out / "missing_channels.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
