"""D:G schedules and kimg accounting."""

from __future__ import annotations

import pytest

from dist_gan.engine.schedule import d_steps_for, phases


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


def test_kimg_accounting_rounds_up():
    assert d_steps_for(60, 128) == 469  # 60,032 images: at least 60 kimg shown
    assert d_steps_for(0.5, 512) == 1
