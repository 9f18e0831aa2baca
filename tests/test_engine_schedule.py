"""D:G schedules, the learning-rate decay window and kimg accounting."""

from __future__ import annotations

import pytest

from dist_gan.engine.schedule import batch_lr_scale, lr_factor, phases, scaled_rates, warmup_factor


@pytest.mark.parametrize("d, g", [(1, 1), (2, 1), (4, 3), (5, 1), (1, 2)])
def test_schedule_counts_per_cycle(d, g):
    cycle = max(d, g)
    flags = [phases(i, d, g) for i in range(cycle * 10)]
    assert sum(f[0] for f in flags) == 10 * d
    assert sum(f[1] for f in flags) == 10 * g


def test_four_three_spreads_g_steps():
    assert [phases(i, 4, 3) for i in range(4)] == [(True, False), (True, True), (True, True), (True, True)]


def test_two_one_alternates_g():
    assert [phases(i, 2, 1)[1] for i in range(4)] == [False, True, False, True]


def test_lr_factor_is_flat_then_linear_then_flat():
    window = [1.0, 3.0]  # kimg
    assert lr_factor(0, window, 0.1) == 1.0
    assert lr_factor(1000, window, 0.1) == 1.0
    assert lr_factor(2000, window, 0.1) == pytest.approx(0.55)
    assert lr_factor(2500, window, 0.0) == pytest.approx(0.25)
    assert lr_factor(3000, window, 0.1) == pytest.approx(0.1)
    assert lr_factor(10**7, window, 0.1) == pytest.approx(0.1)
    factors = [lr_factor(n, window, 0.0) for n in range(0, 4000, 16)]
    assert all(b <= a for a, b in zip(factors, factors[1:]))  # never rises


def test_no_window_means_constant_rates():
    assert lr_factor(123456, [], 0.0) == 1.0


def test_batch_scaling_rules_follow_their_formulas():
    assert batch_lr_scale(512, 64, "none") == 1.0
    assert batch_lr_scale(512, 64, "linear") == 8.0
    assert batch_lr_scale(512, 128, "sqrt") == pytest.approx(2.0)
    assert batch_lr_scale(32, 128, "sqrt") == pytest.approx(0.5)  # smaller batches scale down
    with pytest.raises(ValueError, match="none.*sqrt.*linear"):
        batch_lr_scale(64, 64, "square")


def test_scaled_rates_keep_the_ttur_ratio():
    class Optim:
        g_lr, d_lr, ref_batch, lr_scaling = 1e-4, 4e-4, 128, "sqrt"

    rates = scaled_rates(Optim, 512)
    assert rates == {"G": pytest.approx(2e-4), "D": pytest.approx(8e-4)}


def test_warmup_rises_linearly_then_holds():
    assert warmup_factor(0, 0.0) == warmup_factor(10**6, 0.0) == 1.0
    assert warmup_factor(0, 1.0) == pytest.approx(1e-3)  # the first step: one image's worth, not 0
    assert warmup_factor(250, 1.0) == pytest.approx(0.25)
    assert warmup_factor(1000, 1.0) == warmup_factor(5000, 1.0) == 1.0
