#!/usr/bin/env python
"""Benchmark medseg-attn against MONAI's networks in one run and print ratios with their targets.

    python benchmarks/run.py --quick            # a few minutes on 2 CPU cores
    python benchmarks/run.py --output bench/    # the full run (512x512x300 volume), results in docs/benchmarks.md

Needs the ``bench`` extra for MONAI's SwinUNETR / UNETR (``pip install -e '.[bench]'``). What is measured and the
results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is a folder of the repository

from benchmarks.suite import format_report, run_benchmarks  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="time our networks and predictor against MONAI's in one run; "
                                                 "print each ratio with its target; writes OUTPUT/benchmark.json and "
                                                 "OUTPUT/benchmark.png")
    parser.add_argument("--quick", action="store_true", help="small volumes, fewer repetitions (a few minutes)")
    parser.add_argument("--output", type=Path, default=Path("benchmark_out"),
                        help="folder for benchmark.json and benchmark.png (default benchmark_out)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    args = parser.parse_args(argv)
    print(format_report(run_benchmarks(args.output, quick=args.quick, device=args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
