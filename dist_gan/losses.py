"""GAN objectives as phases, the way stylegan2-ada-pytorch's ``loss.py`` does.

A loss object knows nothing about optimizers, precision or ranks. The loop calls:

- ``d_loss(D, real, fake, ctx)``: D's objective on a real and a (detached) fake batch;
- ``g_loss(D, fake, ctx)``: G's objective on a fake batch through a frozen D;

each returns ``(loss, stats)`` where stats are detached tensors (no host sync). A
regulariser (e.g. the WGAN-GP penalty) lives inside ``d_loss`` of its loss. New
losses register in ``LOSSES`` and are chosen by name (``loss.name``).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dist_gan.augment import diff_augment, parse_policy

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
    r1_weight: float = 0.0  # weight of the R1 penalty on this D step (0 = not due); see ``r1_weight_at``
    pl_weight: float = 0.0  # weight of the path-length penalty on this G step (0 = not due); see ``lazy_weight``
    # the D that penalties on D's input gradient (R1, WGAN-GP) call; None: the D the loss is given.
    # A DeepSpeed engine is not one to take input gradients through (engine/backends.py).
    penalty_D: Optional[nn.Module] = None

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


def augment_at(augment: Callable[[torch.Tensor], torch.Tensor], until_kimg: float, nimg: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """DiffAugment while fewer than ``until_kimg`` kimg have been shown (0 = always), then
    the identity: a function of ``nimg`` alone, so a resumed run switches at the same image."""
    if until_kimg <= 0 or nimg < until_kimg * 1000.0:
        return augment
    return _identity


def r1_penalty(D: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): ``E[||grad_x D(x)||^2]`` on real images, the slope of D where the data is.

    Penalising it keeps D from sharpening its edge around each real image, which is what
    leaves G chasing fine texture; ``create_graph`` keeps it differentiable in D's weights.
    """
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x).float().sum(), x, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()


def lazy_weight(weight: float, every: int, nimg: int, batch: int) -> float:
    """A regulariser's weight on the step that starts after ``nimg`` images: ``weight * every`` on
    every ``every``-th step, 0 on the others (StyleGAN2's lazy regularisation: the same expected
    penalty at ``1/every`` of its cost). A function of the images shown, so a resumed run pays it on
    the same steps."""
    if weight <= 0 or (nimg // batch) % every:
        return 0.0
    return weight * every


def r1_weight_at(gamma: float, every: int, nimg: int, batch: int) -> float:
    """R1's lazy weight: ``gamma / 2`` (the paper's convention) every ``every``-th D step."""
    return lazy_weight(gamma / 2.0, every, nimg, batch)


class PathLengthPenalty:
    """StyleGAN2's path-length regulariser (Karras et al. 2020, Sec. 3.2): ``E[(|J_w^T y| - a)^2]``.

    ``y`` is a random image-space direction scaled by ``1/sqrt(H W)``, ``J_w`` the Jacobian of the
    synthesis at w, and ``a`` a running mean of the lengths (``decay`` 0.01), averaged over ranks so
    every rank holds the same ``a``. A fixed step in w then moves the image by a fixed amount, which
    makes G smoother and easier to invert. ``a`` is state: it goes into the checkpoint.
    Needs a generator with ``mapping_ws`` and ``synthesize`` (model.arch=stylegan2).
    """

    def __init__(self, decay: float = 0.01) -> None:
        self.decay = decay
        self.pl_mean = torch.zeros(())

    def __call__(self, G: nn.Module, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(penalty, mean length of this batch); updates the running mean."""
        ws = G.mapping_ws(z)
        if not ws.requires_grad:  # a mapping without weights to train (or frozen): differentiate at w itself
            ws = ws.detach().requires_grad_(True)
        img = G.synthesize(ws)
        y = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img.float() * y.float()).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(2).mean(1).sqrt()
        batch_mean = _all_mean(lengths.detach().mean())
        self.pl_mean = self.pl_mean.to(batch_mean.device).lerp(batch_mean, self.decay)
        return (lengths - self.pl_mean).square().mean(), batch_mean

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.pl_mean = torch.as_tensor(state["pl_mean"], dtype=torch.float32).clone()


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


class HingeLoss:
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018): D on ``relu(1 -+ logits)``, G on ``-logits``."""

    def __init__(self, **_: object) -> None:
        pass

    def d_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, ctx: LossContext) -> Tuple[torch.Tensor, Stats]:
        logits_real = D(ctx.d_input(real)).float()
        logits_fake = D(ctx.d_input(fake)).float()
        loss = F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()
        stats = {"loss_d": loss.detach(), "d_real": logits_real.detach().mean(), "d_fake": logits_fake.detach().mean()}
        return loss, stats

    def g_loss(self, D: nn.Module, fake: torch.Tensor, ctx: LossContext) -> Tuple[torch.Tensor, Stats]:
        loss = -D(ctx.d_input(fake)).float().mean()
        return loss, {"loss_g": loss.detach()}


class LSGANLoss:
    """Least-squares GAN (Mao et al. 2017), a-b-c = 0-1-1: D pulls reals to ``real_label`` and fakes to 0.

    D: ``0.5 E[(D(x) - b)^2] + 0.5 E[D(G(z))^2]``; G: ``0.5 E[(D(G(z)) - 1)^2]``.
    """

    def __init__(self, real_label: float = 1.0, **_: object) -> None:
        self.real_label = real_label

    def d_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, ctx: LossContext) -> Tuple[torch.Tensor, Stats]:
        out_real = D(ctx.d_input(real)).float()
        out_fake = D(ctx.d_input(fake)).float()
        loss = 0.5 * (out_real - self.real_label).square().mean() + 0.5 * out_fake.square().mean()
        stats = {"loss_d": loss.detach(), "d_real": out_real.detach().mean(), "d_fake": out_fake.detach().mean()}
        return loss, stats

    def g_loss(self, D: nn.Module, fake: torch.Tensor, ctx: LossContext) -> Tuple[torch.Tensor, Stats]:
        loss = 0.5 * (D(ctx.d_input(fake)).float() - 1.0).square().mean()
        return loss, {"loss_g": loss.detach()}


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP's ``E[(||grad_x D(x_hat)||_2 - 1)^2]`` on random interpolates of real and fake.

    ``create_graph`` keeps the penalty differentiable w.r.t. D's parameters; the
    per-sample mixing weight is uniform, as in Gulrajani et al. 2017, Algorithm 1.
    """
    eps = torch.rand(real.size(0), *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x_hat = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)
    out = D(x_hat).float()
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    norm = grad.float().flatten(1).norm(2, dim=1)
    return (norm - 1.0).square().mean()


class WGANGPLoss:
    """Wasserstein loss with gradient penalty (Gulrajani et al. 2017).

    D (the critic): ``E[D(G(z))] - E[D(x)] + gp_weight * GP``, the penalty taken on
    what D sees (augmented, noised) of the real and fake batches; G: ``-E[D(G(z))]``.
    Pair it with a critic without batch norm (``model.d_norm=layer|none``): the
    penalty is per sample, and BN couples the samples of a batch.
    """

    def __init__(self, gp_weight: float = 10.0, **_: object) -> None:
        self.gp_weight = gp_weight

    def d_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, ctx: LossContext) -> Tuple[torch.Tensor, Stats]:
        x_real, x_fake = ctx.d_input(real), ctx.d_input(fake)
        out_real = D(x_real).float()
        out_fake = D(x_fake).float()
        wdist = out_real.mean() - out_fake.mean()
        gp = gradient_penalty(ctx.penalty_D or D, x_real, x_fake) if self.gp_weight > 0 else torch.zeros((), device=real.device)
        loss = -wdist + self.gp_weight * gp
        stats = {
            "loss_d": loss.detach(),
            "wdist": wdist.detach(),
            "gp": gp.detach(),
            "d_real": out_real.detach().mean(),
            "d_fake": out_fake.detach().mean(),
        }
        return loss, stats

    def g_loss(self, D: nn.Module, fake: torch.Tensor, ctx: LossContext) -> Tuple[torch.Tensor, Stats]:
        loss = -D(ctx.d_input(fake)).float().mean()
        return loss, {"loss_g": loss.detach()}


def _all_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks when running distributed (an async collective, no host sync)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / dist.get_world_size()
    return t


class BEGANLoss:
    """Boundary Equilibrium GAN (Berthelot et al. 2017). D is an autoencoder returning reconstructions.

    With ``L(v) = E|v - D(v)|`` (pixel-wise L1 of D's reconstruction):

    - D: ``L(x) - k_t L(G(z))``;  G: ``L(G(z))``;
    - ``k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1)`` after every D step;
    - convergence measure ``M_global = L(x) + |gamma L(x) - L(G(z))|``, logged as ``m_global``.

    ``k_t`` is a device tensor, replaced (never modified in place: the D graph saved
    the old value) without a host sync. Under DDP the balance term is averaged over
    ranks first, so every rank holds the same ``k_t``; ``state_dict`` carries it into
    checkpoints (the loop saves it as ``loss_state``).
    """

    @staticmethod
    def check_gamma(gamma: float, name: str = "loss.gamma") -> float:
        """The diversity ratio k_t aims at: in (0, 1]."""
        if not 0.0 < float(gamma) <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {gamma}")
        return float(gamma)

    def __init__(self, gamma: float = 0.5, lambda_k: float = 0.001, k_init: float = 0.0, **_: object) -> None:
        self.check_gamma(gamma)
        self.gamma, self.lambda_k = float(gamma), float(lambda_k)
        self.k_t = torch.tensor(float(min(max(k_init, 0.0), 1.0)))

    @staticmethod
    def recon_loss(D: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``E|x - D(x)|`` (the mean over batch and pixels)."""
        rec = D(x)
        if rec.shape != x.shape:
            raise ValueError(
                f"loss.name=began needs an autoencoder D that returns images {tuple(x.shape)}, "
                f"got output {tuple(rec.shape)}: use model.arch=began"
            )
        return (rec.float() - x.float()).abs().mean()

    def d_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, ctx: LossContext) -> Tuple[torch.Tensor, Stats]:
        l_real = self.recon_loss(D, ctx.d_input(real))
        l_fake = self.recon_loss(D, ctx.d_input(fake))
        k = self.k_t.to(l_real.device)
        loss = l_real - k * l_fake
        balance = _all_mean((self.gamma * l_real - l_fake).detach())
        m_global = l_real.detach() + balance.abs()
        self.k_t = (k + self.lambda_k * balance).clamp(0.0, 1.0)  # a new tensor: ``k`` stays saved for backward
        stats = {"loss_d": loss.detach(), "l_real": l_real.detach(), "l_fake": l_fake.detach(),
                 "k_t": self.k_t, "m_global": m_global}
        return loss, stats

    def g_loss(self, D: nn.Module, fake: torch.Tensor, ctx: LossContext) -> Tuple[torch.Tensor, Stats]:
        loss = self.recon_loss(D, ctx.d_input(fake))
        return loss, {"loss_g": loss.detach()}

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"k_t": self.k_t.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.k_t = torch.as_tensor(state["k_t"], dtype=torch.float32).clone()


LOSSES: Dict[str, Callable[..., object]] = {
    "bce": BCELoss,
    "hinge": HingeLoss,
    "lsgan": LSGANLoss,
    "wgan_gp": WGANGPLoss,
    "began": BEGANLoss,
}


def _options(loss_cls: Callable[..., object]) -> Dict[str, object]:
    """A loss's own keys and their defaults, read from its constructor (``**_`` swallows the rest)."""
    params = inspect.signature(loss_cls).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def inert_options(loss_cfg: Mapping[str, object]) -> List[str]:
    """Keys another loss reads that ``loss_cfg`` sets away from their default although its loss ignores them.

    ``loss.real_label=0.9`` with ``loss.name=hinge`` would otherwise pass silently: hinge has no labels.
    Each entry is one line: the key, its value and the losses that read it.
    """
    chosen = _options(LOSSES[str(loss_cfg["name"])])
    readers: Dict[str, List[str]] = {}
    for name, cls in LOSSES.items():
        for key, default in _options(cls).items():
            if key not in chosen and key in loss_cfg and loss_cfg[key] != default:
                readers.setdefault(key, []).append(name)
    return [f"loss.{key}={_shown(loss_cfg[key])} has no effect with loss.name={loss_cfg['name']}; only {', '.join(names)} read it"
            for key, names in readers.items()]


def build_loss(loss_cfg: Mapping[str, object]):
    """The loss object named by ``loss.name``, configured from the rest of the section."""
    name = str(loss_cfg["name"])
    if name not in LOSSES:
        raise ValueError(f"unknown loss.name {name!r}; valid: {sorted(LOSSES)}")
    return LOSSES[name](**{k: v for k, v in loss_cfg.items() if k != "name"})


def build_augment(policy: str, p: float = 1.0, translation: float = 0.125) -> Callable[[torch.Tensor], torch.Tensor]:
    """DiffAugment for a policy such as ``color,translation,cutout``, each op group applied
    with per-sample probability ``p`` and shifts up to ``translation`` of the size;
    identity when the policy is empty or ``p`` is 0."""
    if not policy or float(p) == 0.0:
        return _identity
    policy = ",".join(parse_policy(policy))  # fail now, with the valid names, not mid-training
    return partial(diff_augment, policy=policy, p=float(p), translation=float(translation))
