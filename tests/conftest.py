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


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """One dist_gan cache for the whole session, never the user's: Inception weights are
    converted once and reference statistics reused across the eval tests. The weight files stay where they are."""
    from dist_gan.eval.weights import weights_dir

    mp = pytest.MonkeyPatch()
    mp.setenv("DIST_GAN_WEIGHTS", str(weights_dir()))  # the weights `dist-gan weights install` fetched stay found
    mp.setenv("DIST_GAN_CACHE", str(tmp_path_factory.getbasetemp() / "dist_gan_cache"))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The real data beside the checkout (../shared). Required: CI has it too."""
    if not (SHARED / "data" / "celeba-10k.zip").exists():
        raise FileNotFoundError(f"../shared with the real data is missing (looked in {SHARED})")
    return SHARED


def pack_synthetic(out: Path, n: int, size: int = 32, shard_size: int = 16, seed: int = 0) -> Path:
    """Procedural faces packed into real WebDataset shards by the product's own packer."""
    from dist_gan.data.pack import pack
    from dist_gan.data.synthetic import draw_faces

    faces = draw_faces(n, out / "faces.zip", size=size, seed=seed)
    pack(faces, out / "shards", resolution=size, shard_size=shard_size, progress=False, workers=1)
    return out / "shards"


@pytest.fixture(scope="session")
def shards32(tmp_path_factory) -> Path:
    """37 faces at 32 px in deliberately uneven shards of 16, 16 and 5."""
    return pack_synthetic(tmp_path_factory.mktemp("shards32"), n=37, size=32, shard_size=16)


SMOKE = [
    "recipe=smoke", "loader.workers=0", "log.progress=false", "log.tensorboard=false",
]
