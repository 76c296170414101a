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


def cli(capsys, *args: str):
    """``medseg-attn ARGS`` in this process (``medseg_attn.cli.main``): returncode, stdout and stderr, as
    :func:`cli_helpers.assert_one_line_error` reads them (argparse's SystemExit included)."""
    from types import SimpleNamespace

    from medseg_attn.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def dataset(root: Path, kind: str = "ok", cases: int = 3, labels: dict | None = None, dims: int = 3) -> Path:
    """A tiny MSD dataset (``dataset.json``, imagesTr/, labelsTr/) with one planted problem in case 1: ``shape``
    (label 2 voxels short), ``values`` (a 7), ``fraction`` (a 0.5), ``origin`` (label 30 mm off), ``4d`` (an image
    with 3 volumes on a 4th axis) or ``ok``."""
    import json

    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    training = []
    for i in range(cases):
        shape = (16, 16, 12)[:dims]
        image = rng.normal(100, 20, shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[4:10, 4:10, ...] = 1
        label[10:13, 10:13, ...] = 2
        affine, label_affine = np.diag([2.0, 2.0, 2.0, 1.0]), np.diag([2.0, 2.0, 2.0, 1.0])
        if i == 1 and kind == "shape":
            label = label[:-2]
        if i == 1 and kind == "values":
            label[0, 0] = 7
        if i == 1 and kind == "fraction":
            label = label.astype(np.float32)
            label[0, 0] = 0.5
        if i == 1 and kind == "origin":
            label_affine[:3, 3] = [30.0, 0.0, 0.0]
        if i == 1 and kind == "4d":
            image = np.stack([image] * 3, -1)
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, label_affine), str(root / "labelsTr" / f"c{i}.nii.gz"))
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    labels = labels or {"0": "background", "1": "a", "2": "b"}
    (root / "dataset.json").write_text(json.dumps({"name": root.name, "labels": labels, "modality": {"0": "MRI"},
                                                   "training": training}))
    return root
