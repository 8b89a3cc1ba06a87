"""Shared fixtures: where the real CIFAR-10 copy lives, small datasets, quiet training configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    """$EFFDL_DATA, else ../shared/data beside the repository (as in CI), if it exists."""
    for candidate in (os.environ.get("EFFDL_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "cifar10").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture
def synthetic():
    from effdl.data import load_dataset

    return load_dataset("synthetic")


@pytest.fixture
def cifar10_root() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("CIFAR-10 copy not found (set EFFDL_DATA)")
    return root
