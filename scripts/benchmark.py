#!/usr/bin/env python
"""Benchmark medseg-attn against MONAI's networks in one run and print ratios with their targets.

    python scripts/benchmark.py --quick            # a few minutes on 2 CPU cores
    python scripts/benchmark.py --output bench/    # the full run (512x512x300 volume), results in docs/benchmarks.md

Same as ``medseg-attn benchmark``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medseg_attn.benchmark import format_report, run_benchmarks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small volumes, fewer repetitions (a few minutes)")
    parser.add_argument("--output", type=Path, default=Path("benchmark_out"), help="folder for JSON and PNG")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    report = run_benchmarks(args.output, quick=args.quick, device=args.device)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
