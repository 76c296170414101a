#!/usr/bin/env python
"""Accuracy per CPU-minute: `medseg-attn demo` against a plain MONAI UNet script, same data, same budget, one run.

    python benchmarks/cpu_budget.py --output bench_budget                 # this CPU as it is
    python benchmarks/cpu_budget.py --output bench_budget --isa avx2      # as an AVX2-only CPU would run
    python benchmarks/cpu_budget.py --output B --seeds 0 1 2 --minutes 5 --demo-set model.attention=false

For each seed: ``medseg-attn demo --seed S --stress-cases 0`` (its defaults, plus any ``--demo-set``), then
``benchmarks/monai_script.py`` on the dataset the demo built (the same 20 training and 4 held-out cases), one job
at a time. Prints and writes OUTPUT/cpu_budget.json: steps in the budget and held-out grey/white matter Dice of each,
with the CPU and the instruction sets in effect. Results: docs/benchmarks.md ("Accuracy per CPU-minute").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.commands import ISA_CHOICES, ISA_HELP, apply_isa, machine, machine_line, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="medseg-attn demo against a plain MONAI UNet script in one run")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of each (default 5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--isa", choices=ISA_CHOICES, default="native", help=ISA_HELP)
    parser.add_argument("--demo-set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to the demo as --set KEY=VALUE (repeatable)")
    parser.add_argument("--skip-monai", action="store_true", help="the demo alone")
    args = parser.parse_args(argv)
    apply_isa(args.isa, argv)
    found = machine()
    print(machine_line(found), flush=True)
    rows = []
    for seed in args.seeds:
        demo = args.output / f"demo_s{seed}"
        sets = [part for value in args.demo_set for part in ("--set", value)]
        seconds = run([sys.executable, "-m", "medseg_attn.cli", "demo", "--output", str(demo), "--seed", str(seed),
                       "--minutes", str(args.minutes), "--stress-cases", "0", *sets])
        summary = json.loads((demo / "summary.json").read_text())["attention"]
        rows.append({"candidate": "medseg-attn demo" + "".join(f" --set {s}" for s in args.demo_set), "seed": seed,
                     "steps": summary["steps"], "train_seconds": summary["train_seconds"], "wall_seconds": seconds,
                     **{name: summary["classes"][name]["dice"]["mean"] for name in ("grey_matter", "white_matter")}})
        if not args.skip_monai:
            script = args.output / f"monai_s{seed}"
            seconds = run([sys.executable, str(REPO / "benchmarks" / "monai_script.py"), "--data",
                           str(demo / "data" / "dataset.json"), "--minutes", str(args.minutes), "--seed", str(seed),
                           "--output", str(script)])
            result = json.loads((script / "result.json").read_text())
            rows.append({"candidate": "MONAI UNet script", "seed": seed, "steps": result["steps"],
                         "train_seconds": result["train_seconds"], "wall_seconds": seconds,
                         "grey_matter": result["grey_matter"], "white_matter": result["white_matter"]})
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "cpu_budget.json").write_text(json.dumps({"machine": found, "minutes": args.minutes,
                                                             "rows": rows}, indent=1) + "\n")
    print(f"\n{machine_line(found)}, {args.minutes:g} min budget")
    print(f"{'candidate':60s} {'seed':>4s} {'steps':>6s} {'GM Dice':>8s} {'WM Dice':>8s}")
    for row in rows:
        print(f"{row['candidate']:60s} {row['seed']:4d} {row['steps']:6d} {row['grey_matter']:8.4f} "
              f"{row['white_matter']:8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
