"""Nearest neighbours against brute force, and the leak report on planted cases."""

from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image

from dist_gan.eval.leak import (
    binomial_sf,
    leak_report,
    nearest_neighbours,
    pair_grid_size,
    preview_cell,
)


def brute(
    q: np.ndarray, r: np.ndarray, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(((q[:, None, :].astype(np.float64) - r[None].astype(np.float64)) ** 2).sum(-1))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    idx = d.argmin(axis=1)
    return d[np.arange(len(q)), idx], idx


def test_nn_matches_brute_force_across_chunks() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(53, 16)).astype(np.float32)
    r = rng.normal(size=(81, 16)).astype(np.float32)
    d, i = nearest_neighbours(q, r, chunk=7)
    bd, bi = brute(q, r)
    assert d.dtype == np.float64 and i.dtype == np.int64
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-12)


def test_nn_exclude_self_ignores_only_the_diagonal() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(size=(64, 8))
    d, i = nearest_neighbours(r, r, exclude_self=True, chunk=10)
    bd, bi = brute(r, r, exclude_self=True)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-12)
    assert (i != np.arange(len(r))).all()

    dup = np.concatenate([r, r[:1]])  # row 64 duplicates row 0
    d, i = nearest_neighbours(dup, dup, exclude_self=True)
    assert i[0] == 64 and i[64] == 0 and d[0] == 0.0 and d[64] == 0.0


def test_nn_is_exact_for_near_duplicates_far_from_origin() -> None:
    """float32 matmul alone would return ~1e-1 noise here; the float64 re-rank does not."""
    rng = np.random.default_rng(2)
    r = 1000.0 + rng.normal(size=(200, 2048))
    q = r[[5, 17]].copy()
    q[0, 0] += 1e-6
    d, i = nearest_neighbours(q, r)
    np.testing.assert_array_equal(i, [5, 17])
    assert abs(d[0] - 1e-6) < 1e-12 and d[1] == 0.0


def test_nn_ties_go_to_lowest_index() -> None:
    r = np.zeros((5, 3))
    d, i = nearest_neighbours(np.zeros((2, 3)), r)
    np.testing.assert_array_equal(i, [0, 0])
    np.testing.assert_array_equal(d, [0.0, 0.0])


def test_binomial_sf_matches_exact_sum() -> None:
    n, p = 40, 0.01
    for c in (0, 1, 2, 5):
        exact = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(c, n + 1))
        assert math.isclose(binomial_sf(c, n, p), exact, rel_tol=1e-9)


def test_copies_are_found_and_drawn(tmp_path) -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(300, 32))
    copied = [3, 50, 77, 120, 299]
    far = rng.normal(size=(95, 32)) + 10.0  # farther from every ref row than the real-real median
    gen = np.concatenate([ref[copied], far])
    ref_img = rng.integers(0, 256, (300, 64, 64, 3), dtype=np.uint8)
    gen_img = rng.integers(0, 256, (100, 64, 64, 3), dtype=np.uint8)
    png = tmp_path / "sub" / "pairs.png"
    rep = leak_report(gen, ref, gen_img, ref_img, png, k_pairs=8)

    json.dumps(rep)  # plain python types only
    assert rep["under_threshold"] == len(copied)
    assert rep["copies"] == len(copied)
    assert rep["gen_to_ref"]["min"] == 0.0
    assert rep["verdict"] == "memorisation: copies of reference images"
    assert sorted(p["ref_index"] for p in rep["closest_pairs"][:5]) == copied
    assert [p["gen_index"] for p in rep["closest_pairs"][:5]] == [0, 1, 2, 3, 4]
    assert rep["real_real"]["p1"] <= rep["real_real"]["p5"] <= rep["real_real"]["median"]
    assert rep["png"] == str(png)

    with Image.open(png) as im:
        assert preview_cell(64) == 192  # 64-px faces drawn x3
        assert im.size == pair_grid_size(8, 192) == (8 * 192 + 9 * 6, 2 * 192 + 3 * 6 + 30)
        # top-left tile is generated image 0 upscaled x3 (nearest)
        tile = np.asarray(im)[6 : 6 + 192, 6 : 6 + 192]
        np.testing.assert_array_equal(tile[::3, ::3], gen_img[0])
        # below it, its nearest reference image: ref 3
        tile = np.asarray(im)[6 + 192 + 6 : 6 + 2 * 192 + 6, 6 : 6 + 192]
        np.testing.assert_array_equal(tile[::3, ::3], ref_img[3])


def test_independent_samples_look_like_new_real_images() -> None:
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(400, 24))
    gen = rng.normal(size=(300, 24))
    rep = leak_report(gen, ref, None, None, None)
    # new samples from the same distribution land under the real-real median about half the time
    assert 0.3 < rep["under_threshold_fraction"] < 0.7
    assert rep["under_real_p1"] <= 12  # expected 3
    assert rep["copies"] == 0
    assert rep["verdict"] == "no memorisation signal"
    assert rep["png"] is None and len(rep["closest_pairs"]) == 8


def test_near_copies_flag_possible_memorisation() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(400, 24))
    near = ref[:30] + 0.01 * rng.normal(size=(30, 24))  # far below the real-real p1
    gen = np.concatenate([near, rng.normal(size=(170, 24))])
    rep = leak_report(gen, ref, None, None, None, k_pairs=3)
    assert rep["copies"] == 0
    assert rep["under_real_p1"] >= 30
    assert rep["under_real_p1_p_value"] < 1e-3
    assert rep["verdict"] == "possible memorisation"
    assert len(rep["closest_pairs"]) == 3
