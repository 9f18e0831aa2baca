"""The DCGAN generator and discriminator (Radford et al. 2015) at 32, 64 and 128 px.

G: z (nz) -> 4x4 by a transposed conv, then stride-2 ConvTranspose+BN+ReLU blocks
doubling the size and halving the width, and a last ConvTranspose to RGB + tanh.
D: the mirror image, Conv+BN+LeakyReLU(0.2) blocks (no BN on the first, as in the
paper) down to 4x4 and a 4x4 conv to one logit; with ``mbstd_group`` > 0 a minibatch
stddev channel joins the 4x4 features before that conv (not in the paper). D returns logits: the loss applies
the sigmoid (BCEWithLogits), which autocast accepts and is numerically safer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dist_gan.models.minibatch_std import MinibatchStd

SUPPORTED_RESOLUTIONS = (32, 64, 128)
G_INITS = ("dcgan", "nearest")  # model.g_init: how G's stride-2 transposed convs start


def num_blocks(resolution: int) -> int:
    """Number of stride-2 stages between 4x4 and the image size."""
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")
    return int(math.log2(resolution)) - 2


def dcgan_init(module: nn.Module) -> None:
    """The paper's init: conv weights N(0, 0.02); BN gamma N(1, 0.02), beta 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def nearest_upsample_init(module: nn.Module, std: float = 0.02) -> None:
    """Start every stride-2, 4x4 transposed conv as nearest-neighbour upsampling then a 3x3 conv.

    Why: a randomly drawn 4x4 kernel gives each of the four output pixel phases its own
    2x2 sub-kernel, so G starts with a period-2 checkerboard that short runs never train
    away (Odena et al. 2016). A kernel that is a 3x3 kernel convolved with a 2x2 box gives
    all four phases the same response: the layer is then exactly upsample + conv
    (Aitken et al. 2017, "checkerboard artifact free sub-pixel convolution"), and keeps
    the transposed conv's speed and its freedom to learn away from it.
    """
    box = torch.ones(1, 1, 2, 2)
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d) and m.stride == (2, 2) and m.kernel_size == (4, 4):
            cin, cout = m.weight.shape[:2]
            with torch.no_grad():
                k3 = torch.randn(cin * cout, 1, 3, 3) * std
                # each 4x4 entry sums up to four 3x3 entries: halve it to keep the entries' std at ``std``
                m.weight.copy_(F.conv2d(k3, box, padding=1).reshape(cin, cout, 4, 4) / 2)


class Generator(nn.Module):
    """DCGAN generator: (N, nz) or (N, nz, 1, 1) latents -> (N, 3, R, R) images in [-1, 1]."""

    def __init__(self, resolution: int = 64, nz: int = 100, ngf: int = 64, channels: int = 3,
                 init: str = "dcgan") -> None:
        super().__init__()
        if init not in G_INITS:
            raise ValueError(f"model.g_init must be one of {list(G_INITS)}, got {init!r}")
        self.resolution, self.nz = resolution, nz
        n = num_blocks(resolution)
        widths = [ngf * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 64 px: 8,4,2,1 x ngf
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)
        if init == "nearest":
            nearest_upsample_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.net(z)


class Discriminator(nn.Module):
    """DCGAN discriminator: (N, 3, R, R) images -> (N,) logits."""

    def __init__(self, resolution: int = 64, ndf: int = 64, channels: int = 3, mbstd_group: int = 0) -> None:
        super().__init__()
        self.resolution = resolution
        n = num_blocks(resolution)
        widths = [ndf * 2**i for i in range(n)]  # e.g. 64 px: 1,2,4,8 x ndf
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
        if mbstd_group:  # why: D can tell a batch of look-alikes from the reals' spread (low recall is G's weak point)
            layers += [MinibatchStd(mbstd_group)]
        layers += [nn.Conv2d(widths[-1] + (1 if mbstd_group else 0), 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()
