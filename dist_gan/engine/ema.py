"""Exponential moving average of G with a batch-size-invariant half-life.

As in stylegan2-ada-pytorch: the half-life is given in images (kimg), and the
per-step decay is ``0.5 ** (batch / half_life_images)``. Doubling the batch then
squares the decay per step, so the average over *images* stays the same whether a
run uses batch 64 or 512. The ramp-up caps the half-life at ``rampup * nimg`` so
early in training the average is not dominated by the random init.

EMA probes (``train.ema_probes``) are further averages of the same G with other
half-lives. They never feed back into training, so one run yields the whole
half-life curve: ``dist-gan eval --ema-kimg H`` scores any of them.

BatchNorm statistics are not averaged: the EMA copies G's running mean/variance,
which describe G's activations, not those of the averaged weights. ``recalibrate_bn``
re-estimates them for the network actually sampled from (SWA's ``update_bn``); G's
BN inputs come from latents alone, so no data is needed.
"""

from __future__ import annotations

import copy
from typing import Dict, Iterable, Optional

import torch
from torch import nn
from torch.optim.swa_utils import update_bn


def probe_key(half_life_kimg: float) -> str:
    """How a probe's half-life names its state dict in a checkpoint: 5.0 -> "5", 2.5 -> "2.5"."""
    return f"{float(half_life_kimg):g}"


def make_probes(G_ema: nn.Module, half_lives: Iterable[float]) -> Dict[float, nn.Module]:
    """One frozen copy of ``G_ema`` per extra half-life."""
    return {float(h): copy.deepcopy(G_ema).eval().requires_grad_(False) for h in half_lives}


class StaleEMAWarning(UserWarning):
    """G_ema still holds a large share of the untrained generator."""


def untrained_share(nimg: int, half_life_kimg: float, rampup: float) -> float:
    """The weight the random init still has in an EMA after ``nimg`` images.

    With a ramp-up the half-life never exceeds ``rampup * nimg``, so the share is at most
    ``0.5 ** (1 / rampup)`` (1e-6 at the default 0.05): never stale. Without one it is
    ``0.5 ** (nimg / half-life)``: a half at one half-life.
    """
    if rampup > 0:
        return 0.5 ** (1.0 / rampup)
    return 0.5 ** (nimg / (half_life_kimg * 1000.0)) if half_life_kimg > 0 else 0.0


def stale_ema_message(nimg: int, half_life_kimg: float, rampup: float) -> Optional[str]:
    """A warning when the EMA has averaged fewer images than its half-life, else None."""
    share = untrained_share(nimg, half_life_kimg, rampup)
    if share < 0.5:
        return None
    return (f"G_ema has averaged {nimg / 1000:.2f} kimg, less than its {half_life_kimg:g}-kimg half-life "
            f"(train.ema_rampup=0): {100 * share:.0f}% of it is still the untrained generator. "
            "Use --no-ema for the raw G, or train longer")


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


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(G: nn.Module, nz: int, n: int = 4096, batch: int = 256, seed: int = 0) -> nn.Module:
    """Replace G's BN running statistics by their average over ``n`` latents, then eval mode.

    The latents come from their own seeded generator, so the result is deterministic and
    no global RNG is consumed. A G without BatchNorm is returned unchanged.
    """
    if has_batchnorm(G):
        device = next(G.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        latents = [torch.randn(min(batch, n - i), nz, generator=gen).to(device) for i in range(0, n, batch)]
        update_bn(latents, G)
    return G.eval()
