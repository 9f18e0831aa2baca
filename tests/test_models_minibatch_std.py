"""models/minibatch_std.py: the spread of each group of samples as an extra feature map."""

from __future__ import annotations

import torch

from dist_gan.models.minibatch_std import MinibatchStd


def test_the_extra_channel_is_zero_for_identical_samples_and_positive_for_varied_ones():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    same = x[:1].expand(4, -1, -1, -1).clone()
    mb = MinibatchStd(group_size=4)
    assert mb(same)[:, -1].max() < 1e-3 < mb(x)[:, -1].min()
    assert torch.equal(mb(x)[:, :3], x)  # the features pass through unchanged


def test_groups_are_strided_so_each_group_spans_the_batch():
    """Samples i, i + N/G, ... form a group: two groups of two here, (0, 2) and (1, 3)."""
    x = torch.zeros(4, 1, 2, 2)
    x[2] = 2.0  # group (0, 2) spreads, group (1, 3) does not
    y = MinibatchStd(group_size=2)(x)[:, -1, 0, 0]
    assert y[1] < 1e-3 and y[3] < 1e-3 and y[0] > 0.9 and y[2] > 0.9


def test_batches_not_divisible_by_the_group_size_still_work():
    for n in (6, 3, 1):
        assert MinibatchStd(group_size=4)(torch.randn(n, 8, 4, 4)).shape == (n, 9, 4, 4)
