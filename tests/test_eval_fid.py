"""FID/KID/IS math against closed forms and against torch-fidelity's own functions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from dist_gan.eval.fid import (
    feature_stats,
    fid_from_features,
    fid_to_stats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 64
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_frechet_identical_is_zero():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 32))
    mu, s = feature_stats(a)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_non_diagonal_matches_scipy_sqrtm():
    rng = np.random.default_rng(2)
    d = 48
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("n", [10, 60])  # fewer and more samples than dimensions
def test_fid_to_stats_low_rank_path_is_exact(n):
    rng = np.random.default_rng(8)
    ref = rng.normal(size=(200, 40)) @ rng.normal(size=(40, 40))
    gen = rng.normal(0.1, 1.0, size=(n, 40))
    mu, s = feature_stats(ref)
    # rel 1e-7: sqrt of the D-N rounding-level zero eigenvalues makes the D x D path the less exact one
    assert fid_to_stats(gen, mu, s) == pytest.approx(frechet_distance(*feature_stats(gen), mu, s), rel=1e-7)


def test_fid_matches_torch_fidelity_on_features():
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(3)
    f1 = rng.normal(size=(300, 40))
    f2 = rng.normal(0.3, 1.2, size=(300, 40))
    theirs = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(f1)),
                                      fid_features_to_statistics(torch.from_numpy(f2)), verbose=False)[KEY_METRIC_FID]
    assert fid_from_features(f1, f2) == pytest.approx(theirs, rel=1e-7)


def test_kid_self_split_near_zero_and_shift_positive():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(800, 64))
    perm = rng.permutation(len(a))
    same = kernel_inception_distance(a[perm[:400]], a[perm[400:]], subsets=20, subset_size=200)
    shifted = kernel_inception_distance(a[:400], a[400:] + 0.5, subsets=20, subset_size=200)
    assert abs(same["kid_mean"]) < 3 * same["kid_std"] + 1e-3
    assert shifted["kid_mean"] > 10 * max(abs(same["kid_mean"]), same["kid_std"])
    assert shifted["kid_subset_size"] == 200


def test_kid_matches_torch_fidelity():
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    rng = np.random.default_rng(5)
    f1 = rng.normal(size=(150, 32)).astype(np.float32)
    f2 = rng.normal(0.2, 1.0, size=(120, 32)).astype(np.float32)
    theirs = kid_features_to_metric(torch.from_numpy(f1), torch.from_numpy(f2), kid_subsets=10, kid_subset_size=100,
                                    kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=7, verbose=False)
    ours = kernel_inception_distance(f1, f2, subsets=10, subset_size=100, seed=7)
    assert ours["kid_mean"] == pytest.approx(theirs[KEY_METRIC_KID_MEAN], rel=1e-5)
    assert ours["kid_std"] == pytest.approx(theirs[KEY_METRIC_KID_STD], rel=1e-4)


def test_inception_score_closed_form_and_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    # Each sample certain of its own class, classes balanced: IS = number of classes.
    logits = np.full((100, 10), -50.0)
    logits[np.arange(100), np.arange(100) % 10] = 50.0
    assert inception_score(logits, splits=1)["is_mean"] == pytest.approx(10, rel=1e-6)
    z = np.random.default_rng(6).normal(size=(200, 20)) * 3
    theirs = isc_features_to_metric(torch.from_numpy(z), splits=10, shuffle=True, rng_seed=2020)
    assert inception_score(z)["is_mean"] == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    with pytest.raises(ValueError):
        inception_score(np.full((10, 5), np.nan))


def test_kid_of_two_sets_no_larger_than_a_subset_is_computed_once_and_claims_no_spread():
    """n = 1000 against 1000 with 1000-image subsets: every draw is both whole sets, so no std (it read 0.0)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

    rng = np.random.default_rng(6)
    f1 = rng.normal(size=(120, 32)).astype(np.float32)
    f2 = rng.normal(0.2, 1.0, size=(120, 32)).astype(np.float32)
    whole = kernel_inception_distance(f1, f2, subsets=100, subset_size=1000)
    assert whole["kid_std"] is None and whole["kid_subsets"] == 1 and whole["kid_subset_size"] == 120
    theirs = kid_features_to_metric(torch.from_numpy(f1), torch.from_numpy(f2), kid_subsets=3, kid_subset_size=120,
                                    kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=7, verbose=False)
    assert whole["kid_mean"] == pytest.approx(theirs[KEY_METRIC_KID_MEAN], rel=1e-5)
    assert kernel_inception_distance(f1, f2[:100], subsets=5, subset_size=1000)["kid_std"] > 0  # 100 of 120: draws differ


def test_kid_cell_shows_a_spread_only_where_one_was_measured():
    from benchmarks import harness as H

    assert H.kid_cell(0.0533, None) == "53.3" and H.kid_cell(0.0533, 7.9e-17) == "53.3"
    assert H.kid_cell(0.0533, 0.0021) == "53.3 ± 2.1" and H.kid_cell(None, None) == "-"
