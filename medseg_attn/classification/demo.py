"""``medseg-attn classify demo``: image classification on real brain MRI in a few minutes on a laptop CPU.

1. build an ImageFolder of axial slices of random variants of the shipped MNI152 2009a T1, labelled by the
   level of the brain they show (ten classes, :mod:`medseg_attn.classification.demo_data`); training, validation and
   test brains are disjoint;
2. train the classifier (U-Net encoder + attention head) within the budget, and with ``baseline`` the matched
   classifier with the attention head switched off (global average pooling + the same MLP);
3. evaluate each on the test brains and write ``summary.md`` / ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medseg_attn.classification.demo_data import build_slice_dataset
from medseg_attn.classification.predictor import Classifier, evaluate_classifier
from medseg_attn.classification.train import train_classifier
from medseg_attn.config import ClassifyConfig, apply_overrides, from_dict
from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["classify_demo_config", "run_classify_demo"]


def classify_demo_config(overrides: list[str] | None = None) -> ClassifyConfig:
    """The demo's configuration (``medseg_attn/resources/configs/classify_2d.yaml``, the same as
    ``configs/classify_2d.yaml``)."""
    values = yaml.safe_load(resources.files("medseg_attn.resources.configs").joinpath("classify_2d.yaml").read_text())
    return from_dict(apply_overrides(values or {}, overrides or []), ClassifyConfig)


def _variant(output: Path, name: str, config: ClassifyConfig, test: Path, progress: bool) -> dict[str, Any]:
    run_dir = output / f"run{name}"
    started = time.perf_counter()
    result = train_classifier(config, run_dir, progress=progress)
    train_seconds = time.perf_counter() - started
    classifier = Classifier.from_checkpoint(run_dir, device=config.train.device)
    metrics = evaluate_classifier(test, output / f"evaluation{name}", classifier=classifier, progress=progress)
    parameters = sum(p.numel() for p in classifier.network.parameters())
    label = "attention head" if config.model.attention else "average pooling (attention off)"
    return {"name": name or "attention", "label": label, "attention": config.model.attention, "result": result,
            "train_seconds": train_seconds, "metrics": metrics, "parameters": parameters}


def run_classify_demo(
    output: str | Path,
    minutes: float = 2.0,
    attention: bool = True,
    baseline: bool = False,
    seed: int = 0,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> Path:
    """Run the classification demo into ``output``; returns the path of ``summary.md``.

    Raises:
        ValueError: ``output`` already holds a demo run, or a bad argument.
    """
    output = Path(output)
    if (output / "run").exists() or (output / "run_baseline").exists():
        raise UserError(f"{output}: already holds a demo run; choose another --output or remove it")
    if minutes <= 0:
        raise UserError(f"--minutes must be positive, got {minutes}")
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = build_slice_dataset(output / "data", seed=seed, progress=progress)
    build_seconds = time.perf_counter() - started
    base = classify_demo_config([f"data.train={data}", f"train.minutes={minutes}", f"train.seed={seed}",
                                 *(overrides or [])])
    variants = [_variant(output, "", base.replace(model={"attention": attention}), data / "test", progress)]
    if baseline:
        variants.append(_variant(output, "_baseline", base.replace(model={"attention": not attention}),
                                 data / "test", progress))
    description = json.loads((data / "classes.json").read_text())
    report = _report(output, variants, description, build_seconds, time.perf_counter() - started, minutes)
    path = atomic_write_text(output / "summary.md", report)
    atomic_write_text(output / "summary.json", json.dumps(
        {v["name"]: {"attention": v["attention"], "epochs": v["result"].epochs, "steps": v["result"].steps,
                     "train_seconds": round(v["train_seconds"], 1), "parameters": v["parameters"],
                     **{k: v["metrics"][k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc")}}
         for v in variants}, indent=2))
    return path


def _report(output: Path, variants: list[dict[str, Any]], description: dict[str, Any], build_seconds: float,
            total_seconds: float, minutes: float) -> str:
    images = description["images"]
    lines = [
        "# medseg-attn classify demo: axial brain level on MNI152 2009a T1 slices",
        "",
        f"{len(description['classes'])} classes ({', '.join(description['classes'])}); "
        f"{sum(images['train'].values())} training, {sum(images['val'].values())} validation and "
        f"{sum(images['test'].values())} test slices from disjoint random brains; {minutes:g} min of training each.",
        "",
        "| head | test accuracy | balanced accuracy | macro F1 | one-vs-rest AUC | parameters | epochs | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        m = v["metrics"]
        lines.append(f"| {v['label']} | {m['accuracy']:.3f} | {m['balanced_accuracy']:.3f} | {m['macro_f1']:.3f} | "
                     f"{m['auc']:.4f} | {v['parameters'] / 1e6:.2f} M | {v['result'].epochs} | {v['result'].steps} |")
    lines += [
        "",
        f"Time: dataset {build_seconds:.0f} s, "
        + ", ".join(f"{v['name']}: training {v['train_seconds']:.0f} s" for v in variants)
        + f"; total {total_seconds / 60:.1f} min.",
        "",
        "Files:",
        f"- dataset (ImageFolder, train/ val/ test/): {output / 'data'}",
    ]
    for v in variants:
        suffix = "" if v["name"] == "attention" else v["name"]
        lines += [f"- run ({v['name']}): {output / f'run{suffix}'} (checkpoints, history.csv, training_curves.png, "
                  "confusion_matrix.png, tensorboard/)",
                  f"- test metrics: {output / f'evaluation{suffix}'} (metrics.json, per_class.csv, "
                  "confusion_matrix.csv/.png, predictions.csv)"]
    lines += ["", f"View the training curves with: tensorboard --logdir {output}", ""]
    return "\n".join(lines)
