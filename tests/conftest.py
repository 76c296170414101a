"""Shared fixtures: where the real data in ../shared/data lives, and small real volumes cut from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data beside the checkout, or $MEDSEG_SHARED_DATA."""
    return Path(os.environ.get("MEDSEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set MEDSEG_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def ct_dir(shared_data: Path) -> Path:
    path = shared_data / "totalseg_example_ct"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
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
