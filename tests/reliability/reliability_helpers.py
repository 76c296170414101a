"""Helpers of the reliability suite: small real volumes, input digests, the CLI under a memory limit."""

from __future__ import annotations

import hashlib
import resource
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

PEAK = """import resource, sys
from medseg_attn.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(f"PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
sys.exit(code)
"""


def volume(path: Path, seed: int = 0, shape=(20, 22, 16), spacing=(2.0, 2.0, 2.5)) -> Path:
    """A small random NIfTI volume (LPS-like affine)."""
    data = np.random.default_rng(seed).normal(100, 30, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])), str(path))
    return path


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256: inputs must be byte-identical after a run."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_limited(*args: str, memory_gib: float = 6.0, timeout: int = 120, env: dict | None = None
                ) -> tuple[subprocess.CompletedProcess, int]:
    """``medseg-attn ARGS`` in a subprocess whose address space is capped at ``memory_gib`` (RLIMIT_AS), so a
    bomb fails the test instead of the machine; returns the result and the peak resident memory in bytes."""
    limit = int(memory_gib * 2 ** 30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True, timeout=timeout,
                            preexec_fn=cap, env=env)
    peaks = [line for line in result.stdout.splitlines() if line.startswith("PEAK_RSS_KB ")]
    return result, (int(peaks[-1].split()[1]) * 1024 if peaks else -1)
