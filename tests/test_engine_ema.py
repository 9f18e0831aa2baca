"""EMA: the half-life is in images, so the batch size does not change the average."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dist_gan.engine.ema import ema_beta, update_ema


@pytest.mark.parametrize("batch", [32, 128, 512])
def test_half_life_is_batch_size_invariant(batch):
    half_life_kimg = 10.0
    steps = int(half_life_kimg * 1000 / batch)
    decay = ema_beta(batch, half_life_kimg, nimg=10**9) ** steps
    assert decay == pytest.approx(0.5, rel=0.05)  # whatever the batch, 10 kimg halves the weight


def test_rampup_caps_the_half_life_early():
    assert ema_beta(64, 10.0, nimg=1000, rampup=0.05) < ema_beta(64, 10.0, nimg=10**7, rampup=0.05)
    assert ema_beta(64, 10.0, nimg=0, rampup=0.05) == 0.0  # first step: copy G


def test_update_ema_lerps_params_and_copies_buffers():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(7.0)
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, model, beta=0.75)
    for b, e, m in zip(before, ema.parameters(), model.parameters()):
        assert torch.allclose(e, 0.75 * b + 0.25 * m)
    assert torch.equal(ema[1].running_mean, torch.full((3,), 7.0))
