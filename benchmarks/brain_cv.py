"""5-fold cross-validation on the brain demo data at a real budget: the fold ensemble against every single fold.

    python benchmarks/brain_cv.py --minutes 2 --output bench_brain_cv

The data: ``build_demo_dataset`` (the demo's MNI152 cases, each a different random deformation and acquisition),
``--train-cases`` training cases at 2 mm and ``--test-cases`` held-out cases at 1 mm (seeds apart from every
training case). Runs ``medseg-attn train --config demo --folds 5`` (``--minutes`` per fold; ``medseg-attn cv``
runs at its end), then on the held-out cases ``predict --model RUN`` (the 5-fold ensemble, with the
postprocessing the CV chose) and ``predict --model RUN --folds k`` for every fold alone, and ``evaluate`` for
each. Prints a table (the CV's out-of-fold mean +- sd, the ensemble, each fold, the mean of the single folds)
and writes OUT/brain_cv.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is a folder of the repository

from benchmarks.commands import mean_dice, run  # noqa: E402

CLASSES = ("grey_matter", "white_matter")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per fold (default 2)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--train-cases", type=int, default=20)
    parser.add_argument("--test-cases", type=int, default=6)
    parser.add_argument("--output", type=Path, default=Path("bench_brain_cv"))
    args = parser.parse_args(argv)
    from medseg_attn.demo_data import build_demo_dataset

    out = args.output
    dataset = build_demo_dataset(out / "data", train_cases=args.train_cases, test_cases=args.test_cases, seed=0,
                                 progress=False)
    cli = [sys.executable, "-m", "medseg_attn.cli"]
    seconds = {"train + cv": run([*cli, "-q", "train", "--config", "demo", "--data", str(dataset), "--folds",
                                  str(args.folds), "--minutes", str(args.minutes), "--output", str(out / "cv")])}
    models = [("ensemble", [])] + [(f"fold {k}", ["--folds", str(k)]) for k in range(args.folds)]
    results = {}
    for name, extra in models:
        tag = name.replace(" ", "")
        seconds[f"predict {name}"] = run([*cli, "-q", "predict", "--model", str(out / "cv"), *extra, "--input",
                                          str(out / "data" / "imagesTs"), "--output", str(out / f"pred_{tag}")])
        run([*cli, "-q", "evaluate", "--pred", str(out / f"pred_{tag}"), "--label", str(out / "data" / "labelsTs"),
             "--output", str(out / f"eval_{tag}"), "--labels", str(dataset)])
        results[name] = mean_dice(out / f"eval_{tag}")
    singles = [results[f"fold {k}"] for k in range(args.folds)]
    results["single folds, mean"] = {c: round(sum(s[c] for s in singles) / len(singles), 4) for c in CLASSES}
    cv_summary = json.loads((out / "cv" / "cv" / "summary.json").read_text())
    postprocessing = json.loads((out / "cv" / "postprocessing.json").read_text())
    record = {"minutes_per_fold": args.minutes, "folds": args.folds, "train_cases": args.train_cases,
              "test_cases": args.test_cases, "held_out": results, "seconds": seconds, "cv_summary": cv_summary,
              "postprocessing": postprocessing}
    (out / "brain_cv.json").write_text(json.dumps(record, indent=2))
    print(f"| held-out ({args.test_cases} cases) | " + " | ".join(CLASSES) + " |")
    for name, dice in results.items():
        print(f"| {name} | " + " | ".join(f"{dice.get(c, float('nan')):.4f}" for c in CLASSES) + " |")
    print(json.dumps(seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
