#!/usr/bin/env python
"""Benchmark medseg-attn against MONAI's networks in one run and print ratios with their targets.

    python scripts/benchmark.py --quick            # a few minutes on 2 CPU cores
    python scripts/benchmark.py --output bench/    # the full run (512x512x300 volume), results in docs/benchmarks.md

Same as ``medseg-attn benchmark`` (this script forwards its arguments to it); see ``--help``.
"""

from __future__ import annotations

import sys

from medseg_attn.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
