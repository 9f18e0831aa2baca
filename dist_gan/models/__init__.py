"""Model registry: ``build_generator`` / ``build_discriminator`` from a model config.

Architectures are looked up by name (``model.arch``); variants register themselves
in ``ARCHS`` so recipes can select them without the engine knowing about them.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

from torch import nn

from dist_gan.models.dcgan import G_INITS, SUPPORTED_RESOLUTIONS, Discriminator, Generator
from dist_gan.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from dist_gan.models.variants import (D_NORMS, BeganDiscriminator, KerasDiscriminator, KerasGenerator, apply_d_options,
                                      began_generator)

RESOLUTIONS = SUPPORTED_RESOLUTIONS  # model.resolution: every arch is built for these
MBSTD_ARCHS = ("dcgan", "stylegan2")  # the archs whose D reads model.mbstd_group
__all__ = ["ARCHS", "D_NORMS", "G_INITS", "MBSTD_ARCHS", "RESOLUTIONS", "build_discriminator", "build_generator"]

# name -> (make_G(cfg), make_D(cfg)); cfg is the ``model`` section plus ``resolution``.
ARCHS: Dict[str, Tuple[Callable[[Mapping[str, Any]], nn.Module], Callable[[Mapping[str, Any]], nn.Module]]] = {
    "dcgan": (
        lambda c: Generator(c["resolution"], c["nz"], c["ngf"], init=c.get("g_init", "dcgan")),
        lambda c: Discriminator(c["resolution"], c["ndf"], mbstd_group=c.get("mbstd_group", 0)),
    ),
    "keras_improved": (
        lambda c: KerasGenerator(c["resolution"], c["nz"], c["ngf"]),
        lambda c: KerasDiscriminator(c["resolution"], c["ndf"]),
    ),
    "began": (  # D is an autoencoder (returns reconstructions): pair with loss.name=began
        lambda c: began_generator(c["resolution"], c["nz"], c["ngf"]),
        lambda c: BeganDiscriminator(c["resolution"], c["nz"], c["ndf"]),
    ),
    "stylegan2": (  # widths from channel_base/channel_max, not ngf/ndf; no tanh on G (as the paper)
        lambda c: StyleGAN2Generator(c["resolution"], z_dim=c["nz"], w_dim=c["w_dim"], mapping_depth=c["mapping_depth"],
                                     channel_base=c["channel_base"], channel_max=c["channel_max"],
                                     style_mixing_prob=c["style_mixing_prob"]),
        lambda c: StyleGAN2Discriminator(c["resolution"], channel_base=c["channel_base"], channel_max=c["channel_max"],
                                         mbstd_group=max(c["mbstd_group"], 1), mbstd_channels=1 if c["mbstd_group"] else 0),
    ),
}


def _lookup(arch: str):
    if arch not in ARCHS:
        raise ValueError(f"unknown model.arch {arch!r}; valid: {sorted(ARCHS)}")
    return ARCHS[arch]


def build_generator(model_cfg: Mapping[str, Any]) -> nn.Module:
    """G for a model config with keys arch, resolution, nz, ngf (and arch-specific extras)."""
    return _lookup(model_cfg["arch"])[0](model_cfg)


def build_discriminator(model_cfg: Mapping[str, Any]) -> nn.Module:
    """D for a model config with keys arch, resolution, ndf (and arch-specific extras).

    Then the options every arch takes: ``d_norm`` (batch | layer | none) and
    ``spectral_norm`` (on every conv/linear), see ``variants.apply_d_options``.
    """
    return apply_d_options(_lookup(model_cfg["arch"])[1](model_cfg), model_cfg)
