"""The D:G update schedule (n_dis), the learning rates' batch scaling, warm-up and decay, and training-length accounting in images.

``d_steps:g_steps`` per cycle of ``max(d_steps, g_steps)`` iterations, spread as
evenly as integer arithmetic allows: 1:1, 2:1 (D every iteration, G every other),
4:3 (D every iteration, G on 3 of 4), 5:1 (WGAN-GP's n_critic). Length is counted
in real images shown to D (kimg), as StyleGAN2-ADA does, never in epochs; so is the
learning-rate decay window, which makes it a pure function of the images shown: a
resumed run follows the same rates, whatever the batch size or world size. The
warm-up is placed the same way. The batch scaling depends on the global batch
alone, which an elastic restart keeps, never on the number of ranks.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

LR_DECAY_NETS = ("both", "g", "d")  # optim.lr_decay_nets: whose learning rate the decay lowers
LR_SCALINGS = ("none", "sqrt", "linear")  # optim.lr_scaling: how the rates follow the global batch


def _spread(position: int, steps: int, cycle: int) -> bool:
    return (position + 1) * steps // cycle > position * steps // cycle


def phases(iteration: int, d_steps: int, g_steps: int) -> Tuple[bool, bool]:
    """(do_d, do_g) for a 0-based iteration."""
    cycle = max(d_steps, g_steps)
    p = iteration % cycle
    return _spread(p, d_steps, cycle), _spread(p, g_steps, cycle)


def total_images(kimg: float) -> int:
    return int(round(kimg * 1000))


def lr_factor(nimg: int, decay_kimg: Sequence[float], final: float) -> float:
    """Multiplier of the recipe's learning rates after ``nimg`` images: 1 before the window
    ``decay_kimg = [start, end]``, falling linearly to ``final`` across it, ``final`` after it
    (SNGAN-style linear decay, here placed by images so a time-budgeted run can anneal late)."""
    if not decay_kimg:
        return 1.0
    start, end = (total_images(k) for k in decay_kimg)
    if nimg <= start:
        return 1.0
    if nimg >= end:
        return float(final)
    return 1.0 - (1.0 - float(final)) * (nimg - start) / (end - start)


def batch_lr_scale(batch: int, ref_batch: int, rule: str) -> float:
    """Multiplier of the recipe's rates at global ``batch`` for rates tuned at ``ref_batch``:
    1 (none), sqrt(batch / ref_batch) (Adam's noise-scale rule) or batch / ref_batch (Goyal et al.'s linear rule)."""
    if rule not in LR_SCALINGS:
        raise ValueError(f"optim.lr_scaling must be one of {list(LR_SCALINGS)}, got {rule!r}")
    ratio = batch / ref_batch
    return {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[rule]


def scaled_rates(optim_cfg, batch: int) -> Dict[str, float]:
    """G's and D's rates after the batch scaling: what the warm-up rises to and the decay falls from."""
    scale = batch_lr_scale(batch, int(optim_cfg.ref_batch), str(optim_cfg.lr_scaling))
    return {"G": float(optim_cfg.g_lr) * scale, "D": float(optim_cfg.d_lr) * scale}


def warmup_factor(nimg: int, warmup_kimg: float) -> float:
    """Multiplier during the warm-up: rising linearly over the first ``warmup_kimg`` (the first step gets one
    image's worth, not 0), then 1."""
    span = total_images(warmup_kimg)
    if span <= 0 or nimg >= span:
        return 1.0
    return max(nimg, 1) / span
