"""What the CV benchmarks share: run one CLI command (timed, echoed) and read an evaluation's mean Dice."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path


def run(command: list[str]) -> float:
    """Run ``command`` (echoed first), raise if it fails; returns its wall time in seconds."""
    start = time.perf_counter()
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def mean_dice(folder: Path) -> dict[str, float]:
    """{class: mean Dice over cases} from ``medseg-attn evaluate``'s ``folder/summary.json``."""
    summary = json.loads((folder / "summary.json").read_text())
    return {name: round(float(values["dice"]["mean"]), 4) for name, values in summary["classes"].items()}
