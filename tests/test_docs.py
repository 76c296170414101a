"""Every Python block and every ``medseg_attn`` import line of README.md and docs/ runs (issue 33, item 7).

A block runs in a temporary folder holding what its text refers to: a tiny trained run (``runs/brain``,
``runs/spleen``), cases (``case.nii.gz``, ``a.nii.gz``, ``b.nii.gz``) and the arrays it names (``images``,
``volume``, ``labels`` ...). A block that names something the namespace below lacks fails with a NameError, so a
new example must be added here, not skipped."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blob_dataset import tiny_config, write_blob_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
IMPORT_LINE = re.compile(r"^\s*(?:from medseg_attn[\w.]* import [^\n]+|import medseg_attn[\w.]*)\s*$", re.M)


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        for number, match in enumerate(BLOCK.finditer(page.read_text())):
            found.append((page.name, number, match.group(1)))
    return found


def _import_lines() -> list[tuple[str, str]]:
    lines = []
    for page in PAGES:
        text = page.read_text()
        lines += [(page.name, line.strip().rstrip("\\").strip()) for line in IMPORT_LINE.findall(text)
                  if not line.strip().endswith("(")]
    return sorted(set(lines))


def test_the_pages_hold_examples_to_run():
    assert len(_blocks()) >= 5 and len(_import_lines()) >= 5  # the extraction itself works


@pytest.mark.parametrize(("page", "line"), _import_lines())
def test_every_import_line_in_the_docs_imports(page: str, line: str):
    exec(compile(line, f"{page}: {line}", "exec"), {})


@pytest.fixture(scope="module")
def example_folder(tmp_path_factory) -> Path:
    """A folder with what the examples name: a tiny trained run and NIfTI cases."""
    from medseg_attn.segmentation import train

    root = tmp_path_factory.mktemp("docs-examples")
    dataset = write_blob_dataset(root / "data", cases=4)
    train(tiny_config(dataset, "train.max_epochs=1", "model.attention=true"), root / "runs" / "brain", progress=False)
    shutil.copytree(root / "runs" / "brain", root / "runs" / "spleen")
    for name in ("case", "a", "b"):
        shutil.copy(root / "data" / "imagesTr" / "case_0.nii.gz", root / f"{name}.nii.gz")
    return root


def _namespace(page: str, folder: Path) -> dict:
    case = nib.load(str(folder / "case.nii.gz"))
    labels = np.zeros((12, 12, 12), np.int32)
    labels[2:6, 2:6, 2:6], labels[7:10, 7:10, 7:10] = 1, 2
    shared = {"affine": np.diag([2.0, 2.0, 2.0, 1.0]), "labels": labels, "names": {1: "liver", 2: "spleen"},
              "ct_hu": np.random.default_rng(0).normal(40, 20, labels.shape).astype(np.float32)}
    if page == "classification.md":
        return {**shared, "images": torch.randn(2, 3, 32, 32), "volume": torch.randn(1, 1, 64, 64, 64)}
    return {**shared, "volume": np.asarray(case.dataobj, dtype=np.float32)}


@pytest.mark.parametrize(("page", "number", "code"), _blocks(), ids=[f"{p}#{n}" for p, n, _ in _blocks()])
def test_every_python_block_in_the_docs_runs(page: str, number: int, code: str, example_folder: Path,
                                             monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(example_folder)
    exec(compile(code, f"{page} (python block {number})", "exec"), _namespace(page, example_folder))
