"""Improved precision/recall: the k-NN radii and manifold test against brute force, and the metric's behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from dist_gan.eval.precision_recall import inside_manifold, knn_radii, precision_recall, radii_cache_path


def _brute_radii(x: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


@pytest.mark.parametrize("k", [1, 3])
def test_radii_are_the_kth_other_neighbour(k):
    x = np.random.default_rng(0).normal(size=(70, 8)) + 40.0  # offset: centring must keep float32 exact enough
    np.testing.assert_allclose(knn_radii(x, k, chunk=16), _brute_radii(x, k), rtol=1e-4)


def test_inside_manifold_matches_brute_force():
    rng = np.random.default_rng(1)
    s, q = rng.normal(size=(50, 4)), rng.normal(size=(90, 4)) * 1.5
    r = knn_radii(s, 3)
    d = np.sqrt(((q[:, None, :] - s[None, :, :]) ** 2).sum(-1))
    expected = (d <= r[None, :]).any(1)
    assert 0 < expected.sum() < len(q)  # the case splits, so the test can fail either way
    np.testing.assert_array_equal(inside_manifold(q, s, r, chunk=7), expected)


def test_two_samples_of_one_distribution_score_high_and_distant_ones_zero():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same = precision_recall(a, b)
    assert same["precision"] >= 0.7 and same["recall"] >= 0.7
    far = precision_recall(a + 20.0, b)
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_collapse_keeps_precision_and_loses_recall():
    ref = np.random.default_rng(3).normal(size=(1000, 16))
    collapsed = np.repeat(ref[:1], 1000, axis=0)  # one real sample, repeated
    pr = precision_recall(collapsed, ref)
    assert pr["precision"] == 1.0 and pr["recall"] <= 0.05


def test_a_narrow_generator_is_precise_but_covers_less():
    rng = np.random.default_rng(4)
    ref, full, narrow = rng.normal(size=(800, 8)), rng.normal(size=(800, 8)), 0.4 * rng.normal(size=(800, 8))
    a, b = precision_recall(full, ref), precision_recall(narrow, ref)
    assert b["precision"] >= a["precision"] - 0.02 and b["recall"] < a["recall"] - 0.3


def test_reference_radii_are_cached_beside_the_statistics(tmp_path):
    rng = np.random.default_rng(5)
    ref, gen = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    cache = radii_cache_path(tmp_path / "ref-abc.npz", 3)
    assert cache.name == "ref-abc.radii-v1-k3.npy"
    first = precision_recall(gen, ref, ref_cache=cache)
    assert first["ref_radii_cached"] is False and cache.is_file()
    second = precision_recall(gen, ref, ref_cache=cache)
    assert second["ref_radii_cached"] is True
    assert (second["precision"], second["recall"]) == (first["precision"], first["recall"])
    np.save(cache, np.zeros(5))  # radii of another reference size: recomputed, not trusted
    assert precision_recall(gen, ref, ref_cache=cache)["ref_radii_cached"] is False


def test_too_few_rows_is_an_error():
    with pytest.raises(ValueError, match="more than k=3"):
        knn_radii(np.zeros((3, 4)), 3)
