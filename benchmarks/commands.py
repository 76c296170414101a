"""What the benchmarks share: run one CLI command (timed, echoed), read an evaluation's mean Dice, and run as an
AVX2-only CPU would (``--isa avx2``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ISA_CHOICES = ("native", "avx2")
ISA_HELP = ("native (default): every instruction set this CPU has; avx2: run as an AVX2-only CPU would "
            "(ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2, set before torch loads; the ISA in effect is "
            "read back and reported beside every figure)")


def apply_isa(isa: str, argv: list[str]) -> None:
    """``--isa avx2``: start this script again with the AVX2 caps in its environment (torch reads them once, when
    it loads, so they cannot be set later); a no-op when they are set already or for ``native``."""
    from medseg_attn.runtime.device import AVX2_CAPS

    if isa == "avx2" and any(os.environ.get(key) != value for key, value in AVX2_CAPS.items()):
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, sys.argv[0], *argv], {**os.environ, **AVX2_CAPS})


def machine() -> dict:
    """The CPU and the instruction sets in effect (read back, caps included): named beside every figure."""
    from medseg_attn.runtime.device import cpu_isa, cpu_model, isa_caps

    return {"cpu": cpu_model(), "isa": cpu_isa(), "isa_caps": isa_caps()}


def machine_line(found: dict) -> str:
    """'CPU model, ISA aten=... onednn=... (caps: ...)' for a :func:`machine` record."""
    isa = found.get("isa", {})
    caps = ", ".join(f"{key}={value}" for key, value in found.get("isa_caps", {}).items()) or "none"
    return (f"{found.get('cpu', '?')}, ISA aten={isa.get('aten', '?')} onednn={isa.get('onednn', '?')} "
            f"(caps: {caps})")


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
