"""Minibatch standard deviation (Karras et al. 2018, "Progressive Growing of GANs"): D sees its batch's variety.

One layer for every arch whose D takes it (``model.mbstd_group``): StyleGAN2's epilogue and, on request, DCGAN's last
4x4 stage.
"""

from __future__ import annotations

import torch
from torch import nn


class MinibatchStd(nn.Module):
    """Appends the stddev across groups of samples as extra feature maps.

    Why: D then sees the batch's variety and can penalise a G whose samples are too alike
    (mode collapse). Groups of ``min(group_size, N)`` samples; where N is not divisible by
    it, the largest divisor of N below it is used (the official code would fail there).
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:
            g -= 1
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # group members are samples i, i + N/G, ...
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # (N/G, F)
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
