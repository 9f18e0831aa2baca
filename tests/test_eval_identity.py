"""Identity memorisation: the report's arithmetic on known embeddings, and dlib's pipeline on real faces."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from dist_gan.eval.identity import FaceEmbedder, cached_embeddings, identity_report
from dist_gan.eval.reference import square_resize


def _people(n: int, rng: np.random.Generator) -> np.ndarray:
    """n embeddings of different people: random directions 1.0 apart or more (dlib's scale)."""
    return rng.normal(size=(n, 128)).astype(np.float32) / np.sqrt(2 * 128) * 1.2


def test_copies_are_flagged_against_a_leave_one_out_baseline():
    rng = np.random.default_rng(0)
    train = _people(200, rng)
    train[1] = train[0] + 0.01  # one person twice in the training set: the baseline sees it
    copies = train[10:20] + rng.normal(scale=0.01, size=(10, 128)).astype(np.float32)
    gen = np.concatenate([_people(90, rng), copies])
    r = identity_report(gen, train)
    assert r["gen_same_person"] == 10 and r["gen_same_person_index"] == list(range(90, 100))
    assert r["heldout_same_person"] == 2 and r["heldout_same_person_rate"] == pytest.approx(2 / 200)
    assert r["p_value"] < 1e-3 and r["verdict"] == "possible identity memorisation"
    assert r["closest_pairs"][0]["gen_index"] >= 90 and r["closest_pairs"][0]["distance"] < 0.2
    assert {p["ref_index"] for p in r["closest_pairs"]} <= set(range(10, 20))


def test_threshold_calibrates_below_dlib_where_every_real_face_is_near_someone():
    """Small crops put every real face within 0.6 of another: 0.6 flags everyone, the calibrated threshold only copies."""
    rng = np.random.default_rng(3)
    crowd = lambda n: rng.normal(size=(n, 128)).astype(np.float32) / np.sqrt(2 * 128) * 0.55  # noqa: E731
    train = crowd(300)
    copies = train[:10] + rng.normal(scale=0.005, size=(10, 128)).astype(np.float32)
    gen = np.concatenate([crowd(190), copies])
    fixed = identity_report(gen, train, threshold=0.6)
    assert fixed["heldout_same_person_rate"] == 1.0 and fixed["gen_same_person"] == 200  # no discrimination
    assert fixed["verdict"] == "no identity memorisation signal" and not fixed["threshold_calibrated"]
    r = identity_report(gen, train)
    assert r["threshold_calibrated"] and r["threshold"] == pytest.approx(r["heldout_to_train"]["p1"])
    assert r["threshold"] < 0.6
    assert r["heldout_same_person"] <= 3  # ~1% of 300 by construction
    assert set(range(190, 200)) <= set(r["gen_same_person_index"]) and r["gen_same_person"] <= 13
    assert r["p_value"] < 1e-3 and r["verdict"] == "possible identity memorisation"
    assert r["heldout_under_dlib_threshold"] == 300 and r["gen_under_dlib_threshold"] == 200


def test_new_people_give_no_signal_and_faceless_images_are_counted():
    rng = np.random.default_rng(1)
    train, gen = _people(150, rng), _people(60, rng)
    gen[:5] = np.nan  # no face found in 5 samples
    train[:3] = np.nan
    r = identity_report(gen, train)
    assert r["gen_no_face"] == 5 and r["train_no_face"] == 3 and r["n_generated"] == 60
    assert r["gen_same_person"] == 0 and r["verdict"] == "no identity memorisation signal"
    assert r["gen_to_train"]["min"] > 0.6


def test_no_generated_or_training_faces_give_no_verdict_and_no_crash():
    rng = np.random.default_rng(2)
    r = identity_report(np.full((4, 128), np.nan, np.float32), _people(10, rng))
    assert r["p_value"] is None and r["verdict"].startswith("no verdict")
    r = identity_report(_people(4, rng), np.full((4, 128), np.nan, np.float32))
    assert r["verdict"] == "no verdict: faces were found in fewer than 2 training images" and r["train_no_face"] == 4


@pytest.fixture(scope="module")
def faces(shared_dir) -> np.ndarray:
    with zipfile.ZipFile(shared_dir / "data" / "celeba-10k.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))[:40]
        return np.stack([square_resize(Image.open(io.BytesIO(zf.read(n))), 64, "celeba") for n in names])


def _disguise(img: np.ndarray, shift: int) -> np.ndarray:
    """A planted copy: mirrored, shifted a few pixels (edges replicated) and re-compressed as JPEG q75."""
    out = np.roll(img[:, ::-1], shift, axis=1)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(out)).save(buf, "JPEG", quality=75)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_dlib_finds_planted_copies_of_real_faces(faces, tmp_path):
    embedder = FaceEmbedder()
    train, planted = faces[:30], np.stack([_disguise(faces[i], 2 + i % 3) for i in range(5)])
    noise = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    gen = np.concatenate([planted, noise])
    cache = tmp_path / "ref.npz"
    train_emb, cached = cached_embeddings(embedder, train, cache)
    assert not cached and cache.is_file() and np.isnan(train_emb).any(axis=1).sum() <= 1
    again, cached = cached_embeddings(embedder, train, cache)
    assert cached and np.array_equal(again, train_emb, equal_nan=True)
    r = identity_report(embedder.embed(gen), train_emb, gen, train, tmp_path / "pairs.png")
    assert r["gen_no_face"] == 6  # noise: counted, not matched
    assert r["gen_same_person_index"] == [0, 1, 2, 3, 4]  # each copy matches someone in the set ...
    assert sorted((p["gen_index"], p["ref_index"]) for p in r["closest_pairs"]) == [(i, i) for i in range(5)]  # its source
    assert r["gen_to_train"]["p50"] < 0.4 and (tmp_path / "pairs.png").is_file()
