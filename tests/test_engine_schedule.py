"""D:G schedules, the learning-rate decay window and kimg accounting."""

from __future__ import annotations

import pytest

from dist_gan.engine.schedule import lr_factor, phases


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
