"""Shared fixtures: the real CT series the repository carries in tests/data (see tests/data/README.md)."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session", autouse=True)
def _preprocessing_cache(tmp_path_factory):
    """Every run of the tests preprocesses into its own cache folder, never the user's ~/.cache/medseg-attn."""
    from medseg_attn.segmentation.data.cache import CACHE_ENV

    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("preprocessing-cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous
