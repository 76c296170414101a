"""Shared fixtures: the real CT series the repository carries in tests/data (see tests/data/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def ct_dir() -> Path:
    """TotalSegmentator's example CT: ``dicom/`` (20-slice series) and ``example_seg_dicom.nii.gz`` (its labels)."""
    path = TEST_DATA / "totalseg_example_ct"
    assert (path / "dicom").is_dir() and (path / "example_seg_dicom.nii.gz").is_file(), f"{path} is incomplete"
    return path
