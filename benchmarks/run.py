#!/usr/bin/env python
"""Benchmark medseg-attn against MONAI's networks in one run and print ratios with their targets.

    python benchmarks/run.py --quick            # a few minutes on 2 CPU cores
    python benchmarks/run.py --output bench/    # the full run (512x512x300 volume), results in docs/benchmarks.md
    python benchmarks/run.py --prediction-only --isa avx2   # whole-volume prediction alone, as an AVX2-only CPU

Needs the ``bench`` extra for MONAI's SwinUNETR / UNETR (``pip install -e '.[bench]'``). What is measured and the
results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is a folder of the repository

from benchmarks.commands import ISA_CHOICES, ISA_HELP, apply_isa  # noqa: E402
from benchmarks.suite import (  # noqa: E402
    PREDICTION_SHAPES,
    QUICK_PREDICTION_SHAPES,
    format_prediction,
    format_report,
    run_benchmarks,
    run_prediction,
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="time our networks and predictor against MONAI's in one run; "
                                                 "print each ratio with its target; writes OUTPUT/benchmark.json and "
                                                 "OUTPUT/benchmark.png")
    parser.add_argument("--quick", action="store_true", help="small volumes, fewer repetitions (a few minutes)")
    parser.add_argument("--output", type=Path, default=Path("benchmark_out"),
                        help="folder for benchmark.json and benchmark.png (default benchmark_out)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    parser.add_argument("--isa", choices=ISA_CHOICES, default="native", help=ISA_HELP)
    parser.add_argument("--prediction-only", action="store_true",
                        help="only whole-volume prediction: ours against MONAI UNet + sliding_window_inference in "
                             "fp32 (256x256x128 and 512x512x300; --quick: smaller), ratios printed")
    args = parser.parse_args(argv)
    apply_isa(args.isa, argv)
    if args.prediction_only:
        shapes = QUICK_PREDICTION_SHAPES if args.quick else PREDICTION_SHAPES
        print(format_prediction(run_prediction(args.output, shapes, device=args.device)))
    else:
        print(format_report(run_benchmarks(args.output, quick=args.quick, device=args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
