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


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors on a shared 2-core CPU: extra intra-op threads cost more than they gain."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
