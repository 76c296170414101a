"""``medseg-attn train --folds N`` (cross-validation in one run folder) and ``medseg-attn cv RUN``."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["EXAMPLES", "RUNNERS", "add_parsers", "is_cv_request", "run_cv_train"]

EXAMPLES = {
    "cv": """examples:
  medseg-attn cv runs/brain_cv                 # after medseg-attn train --data D --folds 5 --output runs/brain_cv
  medseg-attn predict --model runs/brain_cv --input imagesTs/ --output out/          # the 5 folds as an ensemble
  medseg-attn predict --model runs/brain_cv --folds 0 2 --input imagesTs/ --output out/

writes RUN/cv/ (out-of-fold predictions, evaluation/metrics.csv, cv_metrics.csv, cv_dice.png, summary.json) and
RUN/postprocessing.json (per class: the largest connected component kept, or components below a size removed,
where that raised the out-of-fold Dice most); see
docs/cross-validation.md; for a lesion dataset, `medseg-attn cv RUN --lesions` also writes
RUN/cv/evaluation/lesions.csv and lesion_pairs.csv (docs/lesions.md)""",
}


def add_parsers(command) -> None:
    cv = command("cv", "evaluate a cross-validation run out of fold: every case predicted by the fold that did not "
                       "see it; per-fold and pooled Dice / HD95 / surface Dice; chooses the postprocessing")
    cv.add_argument("run", type=Path, help="a CV run folder (medseg-attn train --folds N)")
    cv.add_argument("--tolerance", type=float, default=1.0, help="surface Dice tolerance in mm (default 1)")
    cv.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    from medseg_attn.cli.lesions import add_lesion_arguments

    add_lesion_arguments(cv)


def add_train_cv_arguments(train: argparse.ArgumentParser) -> None:
    """``--folds --fold --init-from`` of ``medseg-attn train``."""
    train.add_argument("--folds", type=int, metavar="N",
                       help="k-fold cross-validation in one run folder: trains every fold into OUTPUT/fold_<k> (cases "
                            "of one patient never cross folds), then runs `medseg-attn cv OUTPUT`; --resume continues "
                            "an interrupted CV (see docs/cross-validation.md)")
    train.add_argument("--fold", type=int, metavar="K",
                       help="with --folds: train only fold K (e.g. one fold per job) with the run's configuration "
                            "and plan (another one is refused, naming the keys); the CV evaluation runs once every "
                            "fold has finished")
    train.add_argument("--init-from", metavar="RUN|CHECKPOINT|BUNDLE",
                       help="fine-tune: start from the weights of a trained run, checkpoint or MONAI bundle "
                            "medseg-attn exported, with the same model section (checked); the output layer is "
                            "re-initialised for classes it does not know (matched by name); sets train.init_from "
                            "(absolute; a CV run records the checkpoint's SHA-256 and starts every fold from it)")


def is_cv_request(args: argparse.Namespace) -> bool:
    from medseg_attn.model_layout import is_cv_run

    return args.folds is not None or (args.resume and is_cv_run(args.output))


def run_cv_train(args: argparse.Namespace, config) -> int:
    import json

    from medseg_attn.segmentation.workflows.crossval import train_cv

    folds = args.folds
    if folds is None:
        from medseg_attn.model_layout import fold_count

        folds = fold_count(args.output)
    results = train_cv(config, args.output, folds, fold=args.fold, resume=args.resume, progress=not args.quiet)
    if all(result is None for result in results.values()):  # nothing left to train: say so, in one line
        which = "every fold" if args.fold is None else f"fold {args.fold}"
        print(f"nothing trained: {which} of this cross-validation run had finished (fold_<k>/finished.json); a "
              f"finished fold is not trained further, whatever --minutes or --epochs say: start a new CV run "
              f"(another --output) to train longer; run: {args.output}")
        results = {}
    for fold, result in results.items():
        status = "finished before" if result is None else (
            f"{result.epochs} epochs, stopped: {result.stopped}, best validation Dice "
            f"{result.best_metric:.4f}" if result.best_metric is not None else f"{result.epochs} epochs")
        print(f"fold {fold}: {status}")
    summary = args.output / "cv" / "summary.json"
    if summary.is_file():
        _print_summary(json.loads(summary.read_text()), args.output)
    print(f"cross-validation run: {args.output}")
    return 0


def _run_cv(args: argparse.Namespace) -> int:
    from medseg_attn.cli.lesions import lesion_options
    from medseg_attn.segmentation.workflows.cross_validation import cross_validate

    summary = cross_validate(args.run, device=args.device, progress=not args.quiet, tolerance_mm=args.tolerance,
                             lesions=lesion_options(args))
    _print_summary(summary, args.run)
    return 0


def _print_summary(summary: dict, run: Path) -> None:
    print(f"{summary['line']} -> {run / 'cv'}")
    if summary.get("lesions"):
        print("lesions (pooled): " + "; ".join(
            f"{name} F1 {v['lesion_f1']:.4f}, lesion-wise Dice {v['lesionwise_dice']:.4f}"
            for name, v in summary["lesions"].items()) + f" -> {run / 'cv' / 'evaluation' / 'lesions.csv'}")
    from medseg_attn.segmentation.workflows.cross_validation import describe_choice

    choices = [f"{entry['name']}: {describe_choice(entry)} ({entry['dice_before']:.4f} -> {entry['dice_after']:.4f})"
               if "dice_before" in entry else  # a lesion class: judged on lesion F1 and lesion-wise Dice
               f"{entry['name']}: {describe_choice(entry)} (lesion F1 {entry['lesion_f1_before']:.4f} -> "
               f"{entry['lesion_f1_after']:.4f})" for entry in summary["postprocessing"]["classes"].values()]
    print(f"postprocessing (out-of-fold Dice without -> with): {'; '.join(choices)} -> {run / 'postprocessing.json'}")


RUNNERS = {"cv": _run_cv}
