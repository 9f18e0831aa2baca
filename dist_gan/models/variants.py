"""Architecture variants beside DCGAN, and the options any D can take.

- ``keras_improved``: the "improved Keras DCGAN". D: stride-2 3x3 conv blocks
  (BN on all but the first) each followed by LeakyReLU(0.2) and Dropout(0.25),
  then global average pooling (not flatten), a dense 256 hidden layer with
  LeakyReLU + Dropout(0.25), and one logit. G: a dense projection to 4x4, then
  stride-2 transposed convs, each followed by BatchNorm and ReLU, and a 3x3 conv
  to RGB + tanh. (Its recipe gives G twice D's learning rate.)
- ``began``: BEGAN (Berthelot et al. 2017). D is an autoencoder: an encoder of
  two 3x3 convs + ELU per level with stride-2 downsampling (widths growing
  linearly, n, 2n, 3n ...) to 8x8, a linear map to an embedding h (``nz``) and
  back, and a decoder of two convs per level with nearest-neighbour upsampling.
  D returns the reconstruction; G is the same decoder from z (+ tanh).
- ``apply_d_options``: ``model.d_norm`` (swap D's batch norms for layer norm or
  nothing, e.g. for the WGAN-GP critic) and ``model.spectral_norm`` (spectral
  normalisation of every conv/linear of D), for any architecture.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from dist_gan.models.dcgan import dcgan_init, num_blocks

D_NORMS = ("batch", "layer", "none")


# ------------------------------------------------------------------ keras_improved
class KerasGenerator(nn.Module):
    """z -> dense 4x4 -> [ConvTranspose(4, 2, 1) + BN + ReLU] x n -> Conv3x3 -> tanh."""

    def __init__(self, resolution: int = 64, nz: int = 100, ngf: int = 64, channels: int = 3) -> None:
        super().__init__()
        self.resolution, self.nz = resolution, nz
        n = num_blocks(resolution)  # 4x4 -> R: one block per doubling
        widths = [ngf * 2 ** (n - 1 - i) for i in range(n)] + [ngf]  # e.g. 64 px: 8,4,2,1,1 x ngf
        self.w0 = widths[0]
        self.project = nn.Sequential(nn.Linear(nz, widths[0] * 16, bias=False), nn.BatchNorm1d(widths[0] * 16), nn.ReLU(True))
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.Conv2d(widths[-1], channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z.flatten(1))
        return self.net(h.view(z.size(0), self.w0, 4, 4))


class KerasDiscriminator(nn.Module):
    """[Conv3x3 s2 + (BN) + LeakyReLU + Dropout] to 4x4 -> GAP -> Dense 256 + LeakyReLU + Dropout -> logit."""

    def __init__(self, resolution: int = 64, ndf: int = 64, channels: int = 3, dropout: float = 0.25, hidden: int = 256) -> None:
        super().__init__()
        self.resolution = resolution
        n = num_blocks(resolution)  # R -> 4x4: one block per halving
        widths = [channels] + [ndf * 2 ** min(i, 3) for i in range(n)]  # e.g. 64 px: 1,2,4,8 x ndf
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(cin, cout, 3, 2, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(cout))
            layers += [nn.LeakyReLU(0.2, True), nn.Dropout(dropout)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(widths[-1], hidden), nn.LeakyReLU(0.2, True), nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten()


# ------------------------------------------------------------------ BEGAN
BEGAN_BASE = 8  # the encoder/decoder meet at 8x8


def _began_levels(resolution: int) -> int:
    num_blocks(resolution)  # validates the resolution
    return {32: 2, 64: 3, 128: 4}[resolution]


def _conv_pair(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 1, 1), nn.ELU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1), nn.ELU(inplace=True)]


class BeganDecoder(nn.Module):
    """h -> dense 8x8xn -> [2 convs + nearest x2] per level -> 2 convs -> Conv3x3 to RGB. BEGAN's G and D decoder."""

    def __init__(self, resolution: int = 64, nh: int = 64, n: int = 64, channels: int = 3, tanh: bool = False) -> None:
        super().__init__()
        self.resolution, self.nz, self.n = resolution, nh, n
        self.project = nn.Linear(nh, n * BEGAN_BASE * BEGAN_BASE)
        layers: list[nn.Module] = []
        for _ in range(_began_levels(resolution)):
            layers += _conv_pair(n, n) + [nn.Upsample(scale_factor=2, mode="nearest")]
        layers += _conv_pair(n, n) + [nn.Conv2d(n, channels, 3, 1, 1)]
        if tanh:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z.flatten(1))
        return self.net(h.view(z.size(0), self.n, BEGAN_BASE, BEGAN_BASE))


class BeganEncoder(nn.Module):
    """Image -> Conv3x3 -> [2 convs + stride-2 conv, widths n, 2n, 3n ...] -> 2 convs at 8x8 -> dense to h."""

    def __init__(self, resolution: int = 64, nh: int = 64, n: int = 64, channels: int = 3) -> None:
        super().__init__()
        levels = _began_levels(resolution)
        layers: list[nn.Module] = [nn.Conv2d(channels, n, 3, 1, 1), nn.ELU(inplace=True)]
        for lvl in range(1, levels + 1):
            layers += _conv_pair(n * lvl, n * lvl) + [nn.Conv2d(n * lvl, n * (lvl + 1), 3, 2, 1), nn.ELU(inplace=True)]
        c = n * (levels + 1)
        layers += _conv_pair(c, c)
        self.net = nn.Sequential(*layers)
        self.embed = nn.Linear(c * BEGAN_BASE * BEGAN_BASE, nh)  # no non-linearity, as in the paper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.net(x).flatten(1))


class BeganDiscriminator(nn.Module):
    """The autoencoder D: (N, 3, R, R) -> its reconstruction (N, 3, R, R)."""

    def __init__(self, resolution: int = 64, nh: int = 64, n: int = 64, channels: int = 3) -> None:
        super().__init__()
        self.resolution = resolution
        self.encoder = BeganEncoder(resolution, nh, n, channels)
        self.decoder = BeganDecoder(resolution, nh, n, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def began_generator(resolution: int = 64, nz: int = 64, ngf: int = 64) -> BeganDecoder:
    """BEGAN's G: the decoder architecture from z, squashed to [-1, 1] by tanh like every G here."""
    return BeganDecoder(resolution, nz, ngf, tanh=True)


# ------------------------------------------------------------------ options for any D
def _layer_norm(num_channels: int) -> nn.Module:
    """Layer norm over (C, H, W) with per-channel affine: GroupNorm with one group."""
    return nn.GroupNorm(1, num_channels)


def replace_batch_norm(module: nn.Module, kind: str) -> nn.Module:
    """Swap every BatchNorm in ``module`` for layer norm (``layer``) or nothing (``none``); ``batch`` keeps them."""
    if kind not in D_NORMS:
        raise ValueError(f"model.d_norm must be one of {list(D_NORMS)}, got {kind!r}")
    if kind == "batch":
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _layer_norm(child.num_features) if kind == "layer" else nn.Identity())
        elif isinstance(child, nn.BatchNorm1d):
            setattr(module, name, nn.LayerNorm(child.num_features) if kind == "layer" else nn.Identity())
        else:
            replace_batch_norm(child, kind)
    return module


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """``torch.nn.utils.parametrizations.spectral_norm`` on every conv, transposed conv and linear layer."""
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            spectral_norm(m)
    return module


def apply_d_options(D: nn.Module, model_cfg: Mapping[str, Any]) -> nn.Module:
    """The arch-independent D options of a model config: ``d_norm`` then ``spectral_norm``."""
    replace_batch_norm(D, str(model_cfg.get("d_norm", "batch") or "batch"))
    if model_cfg.get("spectral_norm", False):
        apply_spectral_norm(D)
    return D
