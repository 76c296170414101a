"""``medseg-attn classify train|predict|evaluate|demo``: image classification from the command line.

Wired into ``medseg-attn`` by :func:`register_cli`, which :mod:`medseg_attn.registry` names beside the classification
task. Library errors become one-line messages and exit code 2 (in :func:`medseg_attn.cli.app.main`), as for every
other command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medseg_attn.cli.arguments import add_demo_arguments, add_train_arguments, train_config_from_args
from medseg_attn.errors import UserError

logger = logging.getLogger("medseg_attn.cli")

__all__ = ["add_parser", "register_cli", "run"]

EXAMPLES = {
    "train": """examples:
  medseg-attn classify train --data images/ --output runs/cls --minutes 10
  medseg-attn classify train --config configs/classify_2d.yaml --data images/ --output runs/cls
  medseg-attn classify train --config configs/classify_3d.yaml --data volumes/ --output runs/cls3d
  medseg-attn classify train --data listing.csv --output runs/cls --set model.attention=false
  medseg-attn classify train --output runs/cls --resume --minutes 20""",
    "predict": """examples:
  medseg-attn classify predict --model runs/cls --input new_images/ --output predictions.csv
  medseg-attn classify predict --model runs/cls/checkpoints/best.pt --input a.png b.png --output p.csv
  medseg-attn classify predict --model runs/cls --input new_images/ --output p.csv --attention-maps attention/

--attention-maps DIR writes where the attention head looked, per image: DIR/<name>_attention.png (2D: the image
beside a heat overlay with a colour bar) or DIR/<name>_attention.nii.gz (3D: on the input's own voxel grid);
sub-folders of the inputs are kept. See docs/explainability.md.""",
    "evaluate": """examples:
  medseg-attn classify evaluate --model runs/cls --data images/test --output evaluation/
  medseg-attn classify evaluate --model runs/cls --output evaluation/      # the run's test set
  medseg-attn classify evaluate --predictions predictions.csv --data images/test --output evaluation/""",
    "demo": """examples:
  medseg-attn classify demo --output cls_demo                 # about 3 minutes on a 2-core CPU
  medseg-attn classify demo --output cls_demo --baseline      # attention head vs average pooling""",
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``classify`` command (with its own sub-commands) to ``medseg-attn``'s sub-parsers."""
    classify = subparsers.add_parser(
        "classify", help="image classification: train, predict, evaluate, demo",
        description="Image classification (ImageFolder or CSV listing, 2D or 3D) with an attention head on the "
                    "U-Net encoder.")
    commands = classify.add_subparsers(dest="classify_command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES.get(name),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    train = command("train", "train a classifier on an ImageFolder (root/<class>/<image>) or a CSV listing")
    add_train_arguments(train, config_help="YAML config (see configs/classify_2d.yaml, classify_3d.yaml)",
                        data_help="ImageFolder root, a folder holding train/ [val/] [test/], or a CSV listing "
                                  "(path,label); sets data.train", set_example="model.attention=false")

    predict = command("predict", "classify images; writes a CSV: file, class name, index, class probabilities")
    predict.add_argument("--model", required=True, help="run folder (uses checkpoints/best.pt) or a .pt checkpoint")
    predict.add_argument("--input", nargs="+", required=True, help="image files and/or folders (searched "
                                                                   "recursively)")
    predict.add_argument("--output", type=Path, required=True, help="predictions CSV to write")
    predict.add_argument("--batch-size", type=int, help="images per forward pass (default: the training batch)")
    predict.add_argument("--attention-maps", type=Path, metavar="DIR",
                         help="also write each image's head attention into DIR (PNG overlay for 2D images, NIfTI on "
                              "the input grid for 3D volumes); needs a classifier trained with attention")
    predict.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")

    evaluate = command("evaluate", "accuracy, balanced accuracy, macro F1, one-vs-rest AUC, per-class precision "
                                   "and recall, confusion matrix (PNG and CSV)")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="run folder or checkpoint to run on the labelled images")
    source.add_argument("--predictions", type=Path, help="a predictions CSV (from classify predict) to score")
    evaluate.add_argument("--data", help="labelled images: ImageFolder root or CSV listing (default with --model: "
                                         "the run's test set)")
    evaluate.add_argument("--output", type=Path, required=True, help="folder for metrics.json, per_class.csv, "
                                                                     "confusion_matrix.csv/.png, predictions.csv")
    evaluate.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")

    demo = command("demo", "build an axial-brain-level dataset from the shipped MNI152 MRI, train, evaluate")
    add_demo_arguments(demo, output_help="folder for the dataset, runs and report", minutes=2.0,
                       minutes_help="training budget per model", attention_help="attention head",
                       baseline_help="also train the matched classifier without attention (average pooling) and "
                                     "compare", config_name="classify_2d.yaml")
    return classify


def register_cli(subparsers: argparse._SubParsersAction) -> dict:
    """Add ``classify`` to ``medseg-attn``'s sub-parsers; its runner by name."""
    add_parser(subparsers)
    return {"classify": run}


def _train(args: argparse.Namespace) -> int:
    from medseg_attn.classification.train import train_classifier
    from medseg_attn.config import ClassifyConfig

    config = train_config_from_args(args, "data.train", kind=ClassifyConfig)
    result = train_classifier(config, args.output, resume=args.resume, progress=not args.quiet)
    if args.resume and result.epochs_run == 0:
        print(f"nothing trained: the run already has {result.epochs} epochs and {result.seconds / 60:.1f} min "
              f"(stopped: {result.stopped}); its checkpoints are unchanged; raise --minutes or --epochs to train on; "
              f"run: {result.run_dir}")
        return 0
    monitor = config.train.monitor.replace("_", " ")
    best = f"{result.best_metric:.4f} at epoch {result.best_epoch}" if result.best_metric is not None else "n/a"
    print(f"trained {result.epochs} epochs ({result.steps} steps, {result.seconds / 60:.1f} min, stopped: "
          f"{result.stopped}); best validation {monitor} {best}; run: {result.run_dir}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from medseg_attn.classification.predictor import Classifier, collect_images, predict_images, write_attention_maps
    from medseg_attn.io.files import check_output_location

    check_output_location(args.output, args.input, folder=False)  # never over an input or inside an input folder
    if args.attention_maps is not None:
        check_output_location(args.attention_maps, args.input, folder=True, option="--attention-maps")
    files = collect_images(args.input)
    classifier = Classifier.from_checkpoint(args.model, device=args.device, batch_size=args.batch_size)
    if args.attention_maps is not None:
        classifier.check_attention()  # before any image: a model without attention is a one-line error
    rows = predict_images(classifier, files, args.output, progress=not args.quiet)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["class_name"]] = counts.get(row["class_name"], 0) + 1
    summary = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
    print(f"classified {len(rows)} image(s) ({summary}) -> {args.output}")
    if args.attention_maps is not None:
        written = write_attention_maps(classifier, files, args.attention_maps, progress=not args.quiet)
        print(f"wrote {len(written)} attention map(s) -> {args.attention_maps}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from medseg_attn.classification.predictor import Classifier, evaluate_classifier

    classifier = Classifier.from_checkpoint(args.model, device=args.device) if args.model else None
    reference = args.data
    if reference is None:
        if classifier is None:
            raise UserError("--predictions needs --data (the labelled images)")
        reference = _run_test_set(args.model, classifier.classes)
    metrics = evaluate_classifier(reference, args.output, classifier=classifier, predictions=args.predictions,
                                  progress=not args.quiet)
    auc = "n/a" if metrics["auc"] != metrics["auc"] else f"{metrics['auc']:.4f}"
    print(f"{metrics['images']} image(s): accuracy {metrics['accuracy']:.4f}, balanced accuracy "
          f"{metrics['balanced_accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, AUC {auc} -> {args.output}")
    return 0


def _run_test_set(model: str, classes: list[str]):
    """The test set a run was configured with (data.test, or the test/ folder of a split layout)."""
    from medseg_attn.classification.listings import list_images, split_layout
    from medseg_attn.config import ClassifyConfig, from_dict
    from medseg_attn.model_layout import find_checkpoint
    from medseg_attn.training.checkpoint import load_checkpoint

    path = find_checkpoint(model)
    data = from_dict(load_checkpoint(path).config, ClassifyConfig).data
    if data.test:
        return list_images(data.test, classes)
    layout = split_layout(Path(data.train)) if data.train else None
    if layout and "test" in layout:
        return list_images(layout["test"], classes)
    raise UserError(f"{path}: the run has no test set (data.test); pass --data with labelled images")


def _demo(args: argparse.Namespace) -> int:
    from medseg_attn.classification.demo import run_classify_demo
    from medseg_attn.io.files import check_output_location

    check_output_location(args.output, [], folder=True)
    report = run_classify_demo(args.output, minutes=args.minutes, attention=args.attention == "on",
                               baseline=args.baseline, seed=args.seed, overrides=args.overrides,
                               progress=not args.quiet)
    print(report.read_text())
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``classify`` command (errors propagate to the caller, which reports them)."""
    runners = {"train": _train, "predict": _predict, "evaluate": _evaluate, "demo": _demo}
    command = getattr(args, "classify_command", None)
    if command is None:
        print("usage: medseg-attn classify {train,predict,evaluate,demo} ... (see --help)", file=sys.stderr)
        return 2
    return runners[command](args)
