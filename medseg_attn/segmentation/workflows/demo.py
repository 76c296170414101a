"""``medseg-attn demo``: the whole pipeline on real brain MRI in a few minutes on a laptop CPU.

1. build a brain-tissue dataset (background / grey matter / white matter) from the shipped MNI152 2009a T1 and
   tissue maps: training cases at 2 mm and held-out cases at 1 mm, each a different random deformation, bias
   field, contrast and noise (held-out cases are never seen in training);
2. train the attention-skip U-Net within the budget (and, with ``baseline``, the same U-Net without attention);
3. predict the held-out 1 mm cases (probabilities resampled to 1 mm before the argmax);
4. evaluate Dice, HD95 and surface Dice, draw an overlay, and write ``summary.md``;
5. stress test (:mod:`medseg_attn.segmentation.workflows.stress`): new unseen deformations under acquisition variants
   (zero background, skull-stripped, bias, gamma, noise, low resolution, rigid moves, an oblique LPS grid) and
   failure modes (flipped header, heavy noise, ghosting, truncated field of view, 6 mm slices, CT into the MR
   model), Dice per variant in ``stress/stress.csv`` and ``stress/stress.png``; each case's failure signals (QC
   score, uncertainty, member disagreement) judged as detectors in ``stress/failure_detection.csv`` and ``.png``;
   both summarised in ``summary.md``.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml

from medseg_attn.config import Config, apply_overrides, from_dict
from medseg_attn.demo_data import LABELS, build_demo_dataset
from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write_text
from medseg_attn.plots import save_overlay_png
from medseg_attn.segmentation.evaluation.evaluate import evaluate_folders
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.workflows.predict import PredictOptions, predict_batch
from medseg_attn.segmentation.workflows.train import train

logger = logging.getLogger(__name__)

__all__ = ["demo_config", "run_demo"]


def demo_config(overrides: list[str] | None = None) -> Config:
    """The demo's configuration (``medseg_attn/resources/configs/demo.yaml``, the same as ``configs/demo.yaml``)."""
    values = yaml.safe_load(resources.files("medseg_attn.resources.configs").joinpath("demo.yaml").read_text())
    return from_dict(apply_overrides(values or {}, overrides or []))


def _variant(output: Path, name: str, config: Config, dataset: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Train one model, predict the held-out cases, evaluate them."""
    run_dir = output / f"run{name}"
    started = time.perf_counter()
    result = train(config, run_dir, progress=progress)
    train_seconds = time.perf_counter() - started
    root = Path(dataset["root"])
    images = [root / p for p in dataset["test"]]
    predictions = output / f"predictions{name}"
    started = time.perf_counter()  # the predict command's own workflow: label maps, report.csv, report.html
    predict_batch(PredictOptions(model=(run_dir,), inputs=tuple(images), output=predictions, overwrite=True,
                                 device=config.train.device, progress=progress))
    predict_seconds = time.perf_counter() - started
    summary = evaluate_folders(predictions, root / "labelsTs", output / f"evaluation{name}", labels=LABELS,
                               progress=progress)
    label = {"monai_unet": "MONAI UNet", "monai_attention_unet": "MONAI AttentionUnet"}.get(
        config.model.architecture, "AttentionSkipUNet, attention " + ("on" if config.model.attention else "off"))
    return {"name": name or "attention", "label": label, "attention": config.model.attention, "result": result,
            "train_seconds": train_seconds, "predict_seconds": predict_seconds, "summary": summary,
            "predictions": predictions}


def run_demo(
    output: str | Path,
    minutes: float = 5.0,
    attention: bool = True,
    baseline: bool = False,
    train_cases: int = 20,
    test_cases: int = 4,
    seed: int = 0,
    overrides: list[str] | None = None,
    progress: bool = True,
    stress_cases: int = 1,
) -> Path:
    """Run the demo into ``output``; returns the path of ``summary.md``.

    Raises:
        ValueError: ``output`` already holds a demo run.
    """
    output = Path(output)
    if (output / "run").exists() or (output / "run_baseline").exists():
        raise UserError(f"{output}: already holds a demo run; choose another --output or remove it")
    if minutes <= 0 or train_cases < 2 or test_cases < 1:
        raise UserError("demo needs --minutes > 0, --train-cases >= 2 and --test-cases >= 1")
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info("building the demo dataset (%d training cases at 2 mm, %d held-out at 1 mm)", train_cases, test_cases)
    dataset_json = build_demo_dataset(output / "data", train_cases=train_cases, test_cases=test_cases, seed=seed,
                                      progress=progress)
    dataset = json.loads(Path(dataset_json).read_text())
    dataset["root"] = str(Path(dataset_json).parent)
    build_seconds = time.perf_counter() - started

    base = demo_config([f"data.dataset={dataset_json}", f"train.minutes={minutes}", f"train.seed={seed}",
                        *(overrides or [])])
    variants = [_variant(output, "", base.replace(model={"attention": attention}), dataset, progress)]
    if baseline:
        variants.append(_variant(output, "_baseline", base.replace(model={"attention": not attention}), dataset,
                                 progress))

    first_case = Path(dataset["root"]) / dataset["test"][0]
    name = first_case.name
    image = np.asarray(nib.load(str(first_case)).dataobj, dtype=np.float32)
    reference = np.asarray(nib.load(str(Path(dataset["root"]) / "labelsTs" / name)).dataobj)
    predicted = np.asarray(nib.load(str(variants[0]["predictions"] / name)).dataobj)
    dice = [2 * np.sum((predicted == k) & (reference == k)) / max(1, np.sum(predicted == k) + np.sum(reference == k))
            for k in (1, 2)]
    save_overlay_png(output / "overlay.png", image, predicted, reference, LABELS,
                     title=f"held-out {name} ({variants[0]['label']}): grey matter Dice {dice[0]:.3f}, "
                           f"white matter Dice {dice[1]:.3f}")
    stress_rows = _stress(output, variants[0], stress_cases)
    report = _report(output, variants, build_seconds, time.perf_counter() - started, minutes, train_cases, test_cases)
    report += _stress_report(output, stress_rows, variants[0]["label"])
    path = atomic_write_text(output / "summary.md", report)
    atomic_write_text(output / "summary.json", json.dumps(
        {v["name"]: {"attention": v["attention"], "classes": v["summary"]["classes"],
                     "epochs": v["result"].epochs, "steps": v["result"].steps,
                     "train_seconds": round(v["train_seconds"], 1),
                     **({"stress": _stress_means(stress_rows)} if v is variants[0] and stress_rows else {})}
         for v in variants}, indent=2, allow_nan=False,
        default=lambda o: None))
    return path


def _report(output: Path, variants: list[dict[str, Any]], build_seconds: float, total_seconds: float,
            minutes: float, train_cases: int, test_cases: int) -> str:
    lines = [
        "# medseg-attn demo: brain tissue segmentation on MNI152 2009a T1",
        "",
        f"Training: {train_cases} deformed cases at 2 mm ({minutes:g} min budget each); held-out: {test_cases} "
        "unseen deformations at 1 mm, evaluated at 1 mm.",
        "",
        "| model | grey matter Dice | white matter Dice | GM HD95 (mm) | WM HD95 (mm) | GM surface Dice (1 mm) "
        "| WM surface Dice (1 mm) | steps | stopped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        classes = v["summary"]["classes"]
        gm, wm = classes["grey_matter"], classes["white_matter"]
        lines.append(
            f"| {v['label']} | {_fmt(gm['dice'])} | {_fmt(wm['dice'])} | {_fmt(gm['hd95'], 2)} | {_fmt(wm['hd95'], 2)} "
            f"| {_fmt(gm['surface_dice'])} | {_fmt(wm['surface_dice'])} | {v['result'].steps} | "
            f"{v['result'].stopped} |")
    lines += [
        "",
        "Values are mean ± standard deviation over the held-out cases.",
        "",
        f"Time: dataset {build_seconds:.0f} s, "
        + ", ".join(f"{v['name']}: training {v['train_seconds']:.0f} s + prediction {v['predict_seconds']:.0f} s"
                    for v in variants)
        + f"; total {total_seconds / 60:.1f} min.",
        "",
        "Files:",
        f"- dataset (MSD layout): {output / 'data' / 'dataset.json'}",
    ]
    for v in variants:
        suffix = "" if v["name"] == "attention" else v["name"]
        lines += [
            f"- run ({v['name']}): {output / f'run{suffix}'} (checkpoints, history.csv, training_curves.png, "
            "tensorboard/)",
            f"- predictions: {v['predictions']} (report.csv, QC report report.html, run.json)",
            f"- metrics: {output / f'evaluation{suffix}' / 'metrics.csv'}, summary.json, dice_boxplot.png",
        ]
    lines += [f"- overlay: {output / 'overlay.png'}", "",
              f"View the training curves with: tensorboard --logdir {output}", ""]
    return "\n".join(lines)


def _stress(output: Path, variant: dict[str, Any], cases: int) -> list[dict[str, Any]]:
    """The stress test of the first model on ``cases`` new unseen deformations (nothing when 0)."""
    if cases <= 0:
        return []
    from medseg_attn.segmentation.workflows.stress import BRAIN_VARIANTS, FAILURE_VARIANTS, brain_variants, run_stress

    names = BRAIN_VARIANTS + FAILURE_VARIANTS
    logger.info("stress test: %d unseen case(s) x %d variants and failure modes", cases, len(names))
    predictor = Predictor.from_checkpoint(output / f"run{'' if variant['name'] == 'attention' else variant['name']}")
    pairs = ((case, item) for case in range(cases) for item in brain_variants(case, names))
    return run_stress(predictor, pairs, output / "stress", f"{variant['label']}: {cases} unseen deformation(s), 1 mm",
                      signals=True)


def _stress_means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    names = list(dict.fromkeys(row["variant"] for row in rows))
    return {name: {key: round(float(np.nanmean([r[key] for r in rows if r["variant"] == name])), 4)
                   for key in ("grey_matter", "white_matter")} for name in names}


def _stress_report(output: Path, rows: list[dict[str, Any]], label: str) -> str:
    if not rows:
        return ""
    means = _stress_means(rows)
    base = means["as_is"]
    cases = len({row["case"] for row in rows})
    from medseg_attn.segmentation.workflows.stress import BRAIN_VARIANTS

    flagged = {name: sum(1 for r in rows if r["variant"] == name and r.get("qc_score", 0) > 0) for name in means}
    lines = ["", f"## Stress test ({label}, {cases} unseen deformation(s) at 1 mm)", "",
             "| variant | grey matter Dice | white matter Dice | GM change | WM change | QC-flagged cases |",
             "|---|---|---|---|---|---|"]
    for name, values in means.items():
        gm, wm = values["grey_matter"], values["white_matter"]
        kind = "" if name in BRAIN_VARIANTS else " (failure mode)"
        lines.append(f"| {name}{kind} | {gm:.3f} | {wm:.3f} | {gm - base['grey_matter']:+.3f} | "
                     f"{wm - base['white_matter']:+.3f} | {flagged[name]} of {cases} |")
    worst = min(min(v["grey_matter"] - base["grey_matter"], v["white_matter"] - base["white_matter"])
                for name, v in means.items() if name in BRAIN_VARIANTS)
    lines += ["", f"Largest drop from as-is over the acquisition variants: {worst:+.3f}. Variants: "
              f"docs/preprocessing.md. Per case: {output / 'stress' / 'stress.csv'}; picture: "
              f"{output / 'stress' / 'stress.png'}", ""]
    return "\n".join(lines) + _detection_report(output / "stress")


def _detection_report(folder: Path) -> str:
    """The failure-detection table of the stress run (AUROC / AURC per signal), if it was written."""
    from medseg_attn.io.tables import read_csv_rows

    table = folder / "failure_detection.csv"
    if not table.exists():
        return ""
    lines = ["", "### Failure detection (which signal finds the failed cases; docs/trust.md)", "",
             "| signal | target | AUROC | AURC | oracle AURC | cases | failed |", "|---|---|---|---|---|---|---|"]
    for row in read_csv_rows(table):
        lines.append(f"| {row['signal']} | {row['target']} | {row['auroc'] or 'n/a'} | {row['aurc']} | "
                     f"{row['optimal_aurc']} | {row['n_cases']} | {row['n_failed']} |")
    lines += ["", f"Risk-coverage curves: {folder / 'failure_detection.png'}. With one unseen deformation this "
              "is a handful of cases; scripts/stress_eval.py measures it on more.", ""]
    return "\n".join(lines)


def _fmt(stats: dict[str, Any], digits: int = 3) -> str:
    mean, std = stats.get("mean"), stats.get("std")
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"
