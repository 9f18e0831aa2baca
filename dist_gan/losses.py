"""GAN objectives as phases, the way stylegan2-ada-pytorch's ``loss.py`` does.

A loss object knows nothing about optimizers, precision or ranks. The loop calls:

- ``d_loss(D, real, fake, ctx)``: D's objective on a real and a (detached) fake batch;
- ``g_loss(D, fake, ctx)``: G's objective on a fake batch through a frozen D;

each returns ``(loss, stats)`` where stats are detached tensors (no host sync). A
regulariser (e.g. the WGAN-GP penalty) lives inside ``d_loss`` of its loss. New
losses register in ``LOSSES`` and are chosen by name (``loss.name``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Stats = Dict[str, torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class LossContext:
    """Per-step facts a loss may need.

    ``augment`` is applied to every image D sees, real or fake, in both phases
    (DiffAugment must be differentiable and applied to both, or D learns the
    augmentation); then instance noise with the current ``noise_sigma``.
    """

    noise_sigma: float = 0.0
    augment: Callable[[torch.Tensor], torch.Tensor] = _identity

    def d_input(self, x: torch.Tensor) -> torch.Tensor:
        """What D sees of an image batch: augmented, then noised."""
        return add_instance_noise(self.augment(x), self.noise_sigma)


def add_instance_noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Instance noise (Sønderby et al. 2016): blur the supports so D cannot separate them perfectly."""
    return x + sigma * torch.randn_like(x) if sigma > 0 else x


def instance_noise_sigma(sigma: float, anneal_kimg: float, nimg: int) -> float:
    """sigma, falling linearly to 0 over ``anneal_kimg`` when that is positive."""
    if anneal_kimg <= 0:
        return sigma
    return sigma * max(0.0, 1.0 - nimg / (anneal_kimg * 1000.0))


class BCELoss:
    """Non-saturating GAN loss on logits, with one-sided label smoothing.

    BCE-with-logits, never Sigmoid+BCELoss: autocast refuses the latter on CUDA and
    it loses precision for confident D. Only the real label is smoothed (0.9), as
    Salimans et al. 2016 advise: smoothing fake labels rewards G's mistakes.
    """

    def __init__(self, real_label: float = 1.0, **_: object) -> None:
        self.real_label = real_label

    def d_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, ctx: LossContext) -> Tuple[torch.Tensor, Stats]:
        logits_real = D(ctx.d_input(real)).float()
        logits_fake = D(ctx.d_input(fake)).float()
        loss_real = F.binary_cross_entropy_with_logits(logits_real, torch.full_like(logits_real, self.real_label))
        loss_fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
        loss = loss_real + loss_fake
        stats = {
            "loss_d": loss.detach(),
            "d_real": torch.sigmoid(logits_real.detach()).mean(),
            "d_fake": torch.sigmoid(logits_fake.detach()).mean(),
        }
        return loss, stats

    def g_loss(self, D: nn.Module, fake: torch.Tensor, ctx: LossContext) -> Tuple[torch.Tensor, Stats]:
        logits = D(ctx.d_input(fake)).float()
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        return loss, {"loss_g": loss.detach()}


LOSSES: Dict[str, Callable[..., object]] = {"bce": BCELoss}


def build_loss(loss_cfg: Mapping[str, object]):
    """The loss object named by ``loss.name``, configured from the rest of the section."""
    name = str(loss_cfg["name"])
    if name not in LOSSES:
        raise ValueError(f"unknown loss.name {name!r}; valid: {sorted(LOSSES)}")
    return LOSSES[name](**{k: v for k, v in loss_cfg.items() if k != "name"})


def build_augment(policy: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """DiffAugment for a policy such as ``color,translation,cutout``; identity when empty."""
    if not policy:
        return _identity
    from functools import partial

    from dist_gan.augment import diff_augment

    return partial(diff_augment, policy=policy)
