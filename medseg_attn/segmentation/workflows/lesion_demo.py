"""``medseg-attn demo --task lesions``: a lesion study end to end on two-channel brain MRI.

1. build the lesion dataset (:mod:`medseg_attn.lesion_data`): T1-like and FLAIR-like MRI of deformed MNI152
   brains with 1-10 synthetic white-matter lesions each, nested regions (white matter incl. lesions ⊃ lesions),
   training cases at 2 mm and held-out cases at 1 mm;
2. train the attention-skip U-Net on the regions (one sigmoid per region, Dice + BCE) within the budget; with
   ``baseline`` also the same U-Net without attention and MONAI's ``UNet``, through the same pipeline and budget;
3. predict the held-out cases (region probabilities resampled to 1 mm, then painted in regions_class_order);
4. evaluate: Dice per region and per painted class, and lesion by lesion (``evaluate --lesions``: lesion F1,
   BraTS-2023 lesion-wise Dice and HD95); ``summary.md`` and ``summary.json`` side by side.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from medseg_attn.config import Config
from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write_text
from medseg_attn.lesion_data import build_lesion_dataset
from medseg_attn.segmentation.data.datasets import load_dataset
from medseg_attn.segmentation.evaluation.evaluate import evaluate_folders
from medseg_attn.segmentation.evaluation.lesion_report import LesionOptions
from medseg_attn.segmentation.measures.regions import Regions
from medseg_attn.segmentation.workflows.demo import demo_config
from medseg_attn.segmentation.workflows.predict import PredictOptions, predict_batch
from medseg_attn.segmentation.workflows.train import train

logger = logging.getLogger(__name__)

__all__ = ["run_lesion_demo"]

VARIANTS = ("", "_attention_off", "_attention_on", "_monai_unet")  # run folder suffixes


def _variant(output: Path, name: str, config: Config, root: Path, regions: Regions, progress: bool
             ) -> dict[str, Any]:
    run_dir, predictions = output / f"run{name}", output / f"predictions{name}"
    started = time.perf_counter()
    result = train(config, run_dir, progress=progress)
    train_seconds = time.perf_counter() - started
    images = sorted((root / "imagesTs").glob("*.nii.gz"))
    predict_batch(PredictOptions(model=(run_dir,), inputs=tuple(images), output=predictions, overwrite=True,
                                 device=config.train.device, progress=progress))
    summary = evaluate_folders(predictions, root / "labelsTs", output / f"evaluation{name}",
                               labels=regions.labels, progress=progress,
                               lesions=LesionOptions(structures=("lesion",)), regions=regions)
    model = config.model
    label = "MONAI UNet" if model.architecture == "monai_unet" else \
        f"AttentionSkipUNet, attention {'on' if model.attention else 'off'}"
    return {"name": name.lstrip("_") or "attention", "label": label, "result": result,
            "train_seconds": train_seconds, "summary": summary}


def run_lesion_demo(output: str | Path, minutes: float = 5.0, attention: bool = True, baseline: bool = False,
                    train_cases: int = 20, test_cases: int = 4, seed: int = 0, overrides: list[str] | None = None,
                    progress: bool = True, test_spacing: float = 1.0) -> Path:
    """Run the lesion demo into ``output``; returns the path of ``summary.md``.

    Raises:
        UserError: ``output`` already holds a demo run, or counts / minutes out of range.
    """
    output = Path(output)
    if any((output / f"run{name}").exists() for name in VARIANTS):
        raise UserError(f"{output}: already holds a demo run; choose another --output or remove it")
    if minutes <= 0 or train_cases < 2 or test_cases < 1:
        raise UserError("demo needs --minutes > 0, --train-cases >= 2 and --test-cases >= 1")
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    dataset_json = build_lesion_dataset(output / "data", train_cases=train_cases, test_cases=test_cases, seed=seed,
                                        test_spacing=test_spacing, progress=progress)
    root = Path(dataset_json).parent
    regions = load_dataset(dataset_json).regions
    assert regions is not None  # the lesion dataset is region-based by construction
    base = demo_config([f"data.dataset={dataset_json}", f"train.minutes={minutes}", f"train.seed={seed}",
                        *(overrides or [])])
    chosen = {"": {"attention": attention}} if not baseline else \
        {"": {"attention": attention}, "_attention_off" if attention else "_attention_on": {"attention": not attention},
         "_monai_unet": {"architecture": "monai_unet"}}
    variants = [_variant(output, name, base.replace(model=model), root, regions, progress)
                for name, model in chosen.items()]
    report = _report(output, variants, minutes, train_cases, test_cases, test_spacing,
                     time.perf_counter() - started)
    path = atomic_write_text(output / "summary.md", report)
    atomic_write_text(output / "summary.json", json.dumps({v["name"]: _numbers(v) for v in variants}, indent=2,
                                                          allow_nan=False, default=lambda o: None))
    return path


def _numbers(variant: dict[str, Any]) -> dict[str, Any]:
    lesion = variant["summary"]["lesions"]["structures"]["lesion"]
    return {"label": variant["label"], "steps": variant["result"].steps, "epochs": variant["result"].epochs,
            "train_seconds": round(variant["train_seconds"], 1),
            "region_dice": {name: round(values["dice"]["mean"], 4)
                            for name, values in variant["summary"]["regions"].items()},
            "lesion_f1": round(lesion["lesion_f1"], 4), "lesionwise_dice": lesion["lesionwise_dice"]["mean"],
            "lesionwise_hd95": lesion["lesionwise_hd95"]["mean"],
            "lesions": {key: lesion[key] for key in ("reference_lesions", "true_positives", "false_positives",
                                                     "false_negatives")}}


def _report(output: Path, variants: list[dict[str, Any]], minutes: float, train_cases: int, test_cases: int,
            test_spacing: float, seconds: float) -> str:
    lines = ["# medseg-attn demo: white-matter lesions on two-channel brain MRI (T1-like, FLAIR-like)", "",
             f"Training: {train_cases} cases at 2 mm ({minutes:g} min budget each); held-out: {test_cases} unseen "
             f"cases at {test_spacing:g} mm. Regions: white matter (incl. lesions) ⊃ lesion; grey matter.", "",
             "| model | GM Dice | WM region Dice | lesion Dice (voxels) | lesion F1 | lesion-wise Dice | "
             "lesion-wise HD95 (mm) | found / missed / false | steps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        n = _numbers(v)
        counts = n["lesions"]
        lines.append(f"| {v['label']} | {n['region_dice']['grey_matter']:.3f} | "
                     f"{n['region_dice']['white_matter']:.3f} | {n['region_dice']['lesion']:.3f} | "
                     f"{n['lesion_f1']:.3f} | {n['lesionwise_dice']:.3f} | {n['lesionwise_hd95']:.1f} | "
                     f"{counts['true_positives']} / {counts['false_negatives']} / {counts['false_positives']} | "
                     f"{n['steps']} |")
    lines += ["", "Region Dice: mean over held-out cases; lesion F1 pooled over all cases; lesion-wise Dice and HD95 "
              "(BraTS 2023: misses and false lesions count 0 / 374 mm) are means over cases. Definitions: "
              "docs/lesions.md.", "", f"Total {seconds / 60:.1f} min. Files: {output / 'data' / 'dataset.json'}; "
              "per model run*/, predictions*/ (report.html), evaluation*/ (metrics.csv, lesions.csv, "
              "lesion_pairs.csv, summary.json, dice_boxplot.png).", ""]
    return "\n".join(lines)
