"""Fine-tuning a CT model to new structures from two cases, against training from scratch in the same time.

    python benchmarks/ct_finetune.py --source bench_ct_cv/cv/fold_0 --minutes 1 --matched-minutes 3 \
        --output bench_ct_finetune

The source is a trained CT model (e.g. a fold of ``benchmarks/ct_cv.py``: spleen / liver / stomach). The new task
is liver, aorta and inferior vena cava (TotalSegmentator v2 labels 5, 52, 63 of the shared series): liver is kept
by name, aorta and vena cava are new classes. Its data are the acquisitions of the one shared series that
``ct_cv.build`` makes; only the first ``--cases`` training copies are used (the series itself and a moved copy by
default), and the five held-out copies score every run. Runs ``medseg-attn train`` twice with the same budget and
seed (from scratch, and ``--init-from SOURCE``), with ``--matched-minutes M`` a third time from scratch for M
minutes (the source's training time plus the fine-tuning budget: the same total compute), then ``predict`` and
``evaluate`` on the held-out copies; prints a table and writes OUT/ct_finetune.json. The source model has seen
these images (with other labels): this measures new structures on a known scanner and patient, not a new site.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is a folder of the repository

from benchmarks.commands import mean_dice, run  # noqa: E402
from benchmarks.ct_cv import build  # noqa: E402

LABELS = {"0": "background", "1": "liver", "2": "aorta", "3": "inferior_vena_cava"}
SOURCE_VALUES = {5: 1, 52: 2, 63: 3}  # TotalSegmentator v2 value -> ours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="trained CT run, checkpoint or bundle")
    parser.add_argument("--minutes", type=float, default=1.0, help="training budget of each run (default 1)")
    parser.add_argument("--cases", type=int, default=2, help="training copies used (default 2)")
    parser.add_argument("--matched-minutes", type=float, default=None,
                        help="also train from scratch this long: the source's training time plus --minutes "
                             "gives the same total compute as fine-tuning")
    parser.add_argument("--output", type=Path, default=Path("bench_ct_finetune"))
    args = parser.parse_args(argv)
    cli = [sys.executable, "-m", "medseg_attn.cli"]
    out = args.output
    dataset = build(out / "data", LABELS, SOURCE_VALUES, name="ct_vessels")
    spec = json.loads(dataset.read_text())
    spec["training"] = spec["training"][: args.cases]
    dataset.write_text(json.dumps(spec, indent=1))
    common = ["--minutes", str(args.minutes), "--set", "train.seed=0", "--cache", str(out / "cache")]
    results, seconds = {}, {}
    arms = [("scratch", []), ("init_from", ["--init-from", str(args.source)])]
    if args.matched_minutes:
        arms.append((f"scratch_{args.matched_minutes:g}min", ["--minutes", str(args.matched_minutes)]))
    for name, extra in arms:
        shutil.rmtree(out / name, ignore_errors=True)
        seconds[name] = run([*cli, "-q", "train", "--data", str(dataset), "--output", str(out / name), *common,
                             *extra])
        run([*cli, "-q", "predict", "--model", str(out / name), "--input", str(out / "data" / "imagesTs"),
             "--output", str(out / f"pred_{name}")])
        run([*cli, "-q", "evaluate", "--pred", str(out / f"pred_{name}"), "--label", str(out / "data" / "labelsTs"),
             "--output", str(out / f"eval_{name}"), "--labels", str(dataset)])
        results[name] = mean_dice(out / f"eval_{name}")
    record = {"source": str(args.source), "minutes": args.minutes, "training_cases": [e["image"] for e in
              spec["training"]], "held_out": results, "seconds": seconds}
    (out / "ct_finetune.json").write_text(json.dumps(record, indent=2))
    classes = [LABELS[k] for k in ("1", "2", "3")]
    print(f"| held-out (5 copies), {args.cases} training cases, {args.minutes} min | " + " | ".join(classes) + " |")
    for name, dice in results.items():
        print(f"| {name} | " + " | ".join(f"{dice.get(c, float('nan')):.4f}" for c in classes) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
