"""Shared fixtures. Tests mirror the package: tests/test_<area>_<module>.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()

# Two cores are shared by the whole suite; one thread per test process keeps
# multi-process tests from oversubscribing the machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The real data beside the checkout (../shared). Required: CI has it too."""
    if not (SHARED / "data" / "celeba-10k.zip").exists():
        raise FileNotFoundError(f"../shared with the real data is missing (looked in {SHARED})")
    return SHARED
