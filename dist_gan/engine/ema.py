"""Exponential moving average of G with a batch-size-invariant half-life.

As in stylegan2-ada-pytorch: the half-life is given in images (kimg), and the
per-step decay is ``0.5 ** (batch / half_life_images)``. Doubling the batch then
squares the decay per step, so the average over *images* stays the same whether a
run uses batch 64 or 512. The ramp-up caps the half-life at ``rampup * nimg`` so
early in training the average is not dominated by the random init.

EMA probes (``train.ema_probes``) are further averages of the same G with other
half-lives. They never feed back into training, so one run yields the whole
half-life curve: ``dist-gan eval --ema-kimg H`` scores any of them.
"""

from __future__ import annotations

import copy
from typing import Dict, Iterable

import torch
from torch import nn


def probe_key(half_life_kimg: float) -> str:
    """How a probe's half-life names its state dict in a checkpoint: 5.0 -> "5", 2.5 -> "2.5"."""
    return f"{float(half_life_kimg):g}"


def make_probes(G_ema: nn.Module, half_lives: Iterable[float]) -> Dict[float, nn.Module]:
    """One frozen copy of ``G_ema`` per extra half-life."""
    return {float(h): copy.deepcopy(G_ema).eval().requires_grad_(False) for h in half_lives}


def ema_beta(batch: int, half_life_kimg: float, nimg: int, rampup: float = 0.0) -> float:
    """Per-step decay for a global batch of ``batch`` images after ``nimg`` images."""
    half_life = half_life_kimg * 1000.0
    if rampup > 0:
        half_life = min(half_life, nimg * rampup)
    if half_life <= 0:
        return 0.0
    return 0.5 ** (batch / half_life)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers (BN stats) copied."""
    ema_params = list(ema.parameters())
    params = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params)]
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
