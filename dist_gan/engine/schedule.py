"""The D:G update schedule (n_dis) and training-length accounting in images.

``d_steps:g_steps`` per cycle of ``max(d_steps, g_steps)`` iterations, spread as
evenly as integer arithmetic allows: 1:1, 2:1 (D every iteration, G every other),
4:3 (D every iteration, G on 3 of 4), 5:1 (WGAN-GP's n_critic). Length is counted
in real images shown to D (kimg), as StyleGAN2-ADA does, never in epochs.
"""

from __future__ import annotations

import math
from typing import Tuple


def _spread(position: int, steps: int, cycle: int) -> bool:
    return (position + 1) * steps // cycle > position * steps // cycle


def phases(iteration: int, d_steps: int, g_steps: int) -> Tuple[bool, bool]:
    """(do_d, do_g) for a 0-based iteration."""
    cycle = max(d_steps, g_steps)
    p = iteration % cycle
    return _spread(p, d_steps, cycle), _spread(p, g_steps, cycle)


def total_images(kimg: float) -> int:
    return int(round(kimg * 1000))


def d_steps_for(kimg: float, batch: int) -> int:
    """D steps needed to show at least ``kimg`` thousand real images at this global batch."""
    return math.ceil(total_images(kimg) / batch)
