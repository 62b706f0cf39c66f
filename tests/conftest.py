"""Shared test fixtures: where ../shared is, and small helpers."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MRCNN_NUCLEI_SHARED", REPO.parent / "shared"))


def _shared_path(*parts):
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must run with ../shared beside the checkout")
        pytest.skip(f"{path} not found (put the shared data folder beside the repo, or set "
                    "MRCNN_NUCLEI_SHARED)")
    return path


@pytest.fixture(scope="session")
def dsb_root():
    """../shared/data/dsb2018_stage1_train (folder holding stage1_train/, val_ids.txt)."""
    return _shared_path("data", "dsb2018_stage1_train")


@pytest.fixture(scope="session")
def monuseg_root():
    """../shared/data/monuseg_train (Tissue_Images/, Annotations/)."""
    return _shared_path("data", "monuseg_train")


@pytest.fixture(scope="session")
def legacy_dir():
    """../shared/legacy (layer names JSON, first-layer arrays)."""
    return _shared_path("legacy")
