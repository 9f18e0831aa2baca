"""Face detectors on real CelebA / anime crops and on noise; optional-package errors."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dist_gan.errors import UserError
from dist_gan.eval import detect as detect_mod
from dist_gan.eval.detect import (
    ANIME_CASCADE_ENV,
    DETECTORS,
    build_detector,
    to_working,
    working_size_text,
)


def load_faces(zip_path: Path, prefix: str, n: int, size: int = 64) -> np.ndarray:
    """First n JPEGs under prefix: center square crop of the short side, LANCZOS to size."""
    out = []
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(x for x in zf.namelist() if x.startswith(prefix) and x.endswith(".jpg"))
        for name in names[:n]:
            im = Image.open(io.BytesIO(zf.read(name))).convert("RGB")
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.LANCZOS)
            out.append(np.asarray(im))
    return np.stack(out)


@pytest.fixture(scope="module")
def celeba(shared_dir: Path) -> np.ndarray:
    return load_faces(shared_dir / "data" / "celeba-10k.zip", "img_align_celeba/", 300)


@pytest.fixture(scope="module")
def anime(shared_dir: Path) -> np.ndarray:
    return load_faces(shared_dir / "data" / "anime-faces-20k.zip", "images/", 300)


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (200, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def anime_cascade(shared_dir: Path) -> str:
    return str(shared_dir / "detectors" / "lbpcascade_animeface.xml")


def test_haar_finds_celeba_faces_not_noise(celeba: np.ndarray, noise: np.ndarray) -> None:
    det = build_detector("haar")
    found = det.detect(celeba)
    assert found.shape == (300,) and found.dtype == bool
    assert found.mean() >= 0.80  # measured 268/300; README: 929/1000
    assert det.detect(noise).mean() <= 0.02  # measured 0/200
    np.testing.assert_array_equal(det.detect(celeba[:10]), found[:10])  # deterministic


def test_anime_cascade_finds_anime_faces_not_noise(
    anime: np.ndarray, noise: np.ndarray, anime_cascade: str
) -> None:
    det = build_detector("anime", anime_cascade)
    assert det.detect(anime).mean() >= 0.90  # measured 298/300
    assert det.detect(noise).mean() <= 0.02  # measured 0/200


def test_describe_states_the_protocol(celeba: np.ndarray) -> None:
    det = build_detector("haar")
    desc = det.describe()
    assert desc["name"] == "haar"
    assert desc["working_size"] == "64 px + 16 px edge border, x2 -> 192 px"
    assert desc["settings"]["scaleFactor"] == 1.1
    assert desc["settings"]["minNeighbors"] == 5
    assert desc["settings"]["minSize"] == [24, 24]
    assert working_size_text(128) == "128 px + 32 px edge border, x1 -> 192 px"
    det.detect(np.zeros((1, 128, 128, 3), np.uint8))
    assert det.describe()["working_size"].startswith("128 px")


def test_working_image_has_an_edge_replicated_border() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    img[0, :] = 255  # top row white: the replicated border above it is white too
    work = to_working(img)
    assert work.shape == (192, 192, 3)
    assert (work[:20, 40:150] == 255).all() and (work[100] == 0).all()


def test_bad_inputs() -> None:
    det = build_detector("haar")
    with pytest.raises(ValueError):
        det.detect(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError):
        det.detect(np.zeros((2, 64, 48, 3), np.uint8))
    with pytest.raises(UserError, match="haar, anime, hog, mtcnn, mmod"):
        build_detector("retina")
    assert set(DETECTORS) == {"haar", "anime", "hog", "mtcnn", "mmod"}


def test_anime_cascade_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo_root: Path, anime_cascade: str
) -> None:
    monkeypatch.delenv(ANIME_CASCADE_ENV, raising=False)
    nowhere = [tmp_path / "cache" / "x.xml", tmp_path / "shared" / "x.xml"]
    monkeypatch.setattr(detect_mod, "default_cascade_locations", lambda: nowhere)
    with pytest.raises(UserError, match="nagadomi/lbpcascade_animeface") as err:
        build_detector("anime")
    assert "--cascade PATH" in str(err.value) and all(str(p) in str(err.value) for p in nowhere)
    monkeypatch.undo()
    monkeypatch.delenv(ANIME_CASCADE_ENV, raising=False)
    with pytest.raises(UserError, match="not found"):
        build_detector("anime", str(tmp_path / "missing.xml"))
    bad = tmp_path / "bad.xml"
    bad.write_text("<not a cascade/>")
    with pytest.raises(UserError, match="could not load"):
        build_detector("anime", str(bad))

    monkeypatch.setenv(ANIME_CASCADE_ENV, anime_cascade)
    assert build_detector("anime").describe()["settings"]["cascade"] == "lbpcascade_animeface.xml"
    monkeypatch.delenv(ANIME_CASCADE_ENV)
    monkeypatch.chdir(tmp_path)  # the default does not depend on the working directory
    assert build_detector("anime").describe()["name"] == "anime"


@pytest.mark.parametrize("name,n", [("mtcnn", 100), ("mmod", 50)])  # MMOD costs 16x MTCNN's time per image
def test_cnn_detectors_find_celeba_faces_not_noise(name: str, n: int, celeba: np.ndarray, noise: np.ndarray) -> None:
    det = build_detector(name)
    found = det.detect(celeba[:n])
    assert found.shape == (n,) and found.mean() >= 0.95  # measured: mtcnn 97/100, mmod 50/50
    assert det.detect(noise[:20]).mean() == 0.0
    np.testing.assert_array_equal(det.detect(celeba[:8]), found[:8])  # deterministic, batch-independent
    assert det.describe()["name"] == name


@pytest.mark.parametrize("name,weight", [("mtcnn", "mtcnn_pnet"), ("mmod", "dlib_mmod")])
def test_missing_weights_say_where_they_were_looked_for_and_what_to_run(
    name: str, weight: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dist_gan.eval import weights

    monkeypatch.setenv("DIST_GAN_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(weights, "_installed", lambda w: None)
    with pytest.raises(UserError, match="dist-gan weights install") as err:
        build_detector(name)
    assert str(tmp_path) in str(err.value) and weights.FILES[weight].archive.requirement in str(err.value)
    with pytest.raises(UserError, match="--cascade"):
        build_detector(name, "x.xml")


def test_the_default_human_detector_is_the_first_installed_of_mtcnn_mmod_haar(monkeypatch: pytest.MonkeyPatch) -> None:
    from dist_gan.eval import weights

    assert detect_mod.default_human_detector() == "mtcnn"
    monkeypatch.setattr(weights, "find", lambda name: None if name.startswith("mtcnn") else Path("x"))
    assert detect_mod.default_human_detector() == "mmod"
    monkeypatch.setattr(weights, "find", lambda name: None)
    assert detect_mod.default_human_detector() == "haar"
