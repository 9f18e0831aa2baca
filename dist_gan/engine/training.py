"""One wiring of a training run: networks, optimizers, precision, backend, loss, augment, EMA.

The trainer (``engine.loop``) and the benchmarks (``benchmarks/step.py``,
``benchmarks/scaling.py``) build a run here and nowhere else, so a benchmark times
exactly the step the trainer runs. ``Training`` also owns what a step needs from
the run's position (the loss context and the learning rates at ``nimg``) and the
round trip of its state through a checkpoint (``engine.checkpoint`` lays it out).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import torch
from accelerate import Accelerator
from torch import nn

from dist_gan.engine import checkpoint as ckpt
from dist_gan.engine.backends import DDPBackend, DeepSpeedBackend
from dist_gan.engine.ema import make_probes, recalibrate_bn
from dist_gan.engine.precision import Precision, make_adam
from dist_gan.engine.schedule import lr_factor, scaled_rates, warmup_factor
from dist_gan.engine.state import RunState
from dist_gan.engine.step import TrainStep
from dist_gan.losses import LossContext, augment_at, build_augment, build_loss, instance_noise_sigma, lazy_weight, r1_weight_at
from dist_gan.models import build_discriminator, build_generator
from dist_gan.models.fastconv import use_swap_wgrad


class Networks(NamedTuple):
    """What a run trains, before a backend wraps it."""

    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    precision: Precision


def swap_wgrad_wanted(train_cfg, device: torch.device) -> bool:
    """``train.swap_wgrad``: ``auto`` is on where it was measured to win (CPU/oneDNN, eager), off on GPUs."""
    if train_cfg.swap_wgrad == "auto":
        return device.type == "cpu" and not train_cfg.compile
    return train_cfg.swap_wgrad == "always"


def build_networks(cfg, device: torch.device) -> Networks:
    """G, D (seeded identically on every rank), G_ema, both Adams and the precision, per recipe."""
    torch.manual_seed(cfg.seed)
    G, D = build_generator(cfg.model).to(device), build_discriminator(cfg.model).to(device)
    if swap_wgrad_wanted(cfg.train, device):
        use_swap_wgrad(G, cfg.model.resolution)
        use_swap_wgrad(D, cfg.model.resolution)
    if cfg.train.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    rates = scaled_rates(cfg.optim, int(cfg.train.batch))
    opt_G = make_adam(G.parameters(), rates["G"], cfg.optim.g_betas, cfg.optim.impl, device)
    opt_D = make_adam(D.parameters(), rates["D"], cfg.optim.d_betas, cfg.optim.impl, device)
    return Networks(G, D, G_ema, opt_G, opt_D, Precision(cfg.train.precision, device, tf32=cfg.train.tf32))


@dataclass
class Training:
    """A built run: the step and everything it trains, plus the recipe's schedules."""

    cfg: Any
    step: TrainStep
    loss_fn: Any
    augment: Callable[[torch.Tensor], torch.Tensor]
    ema_probes: Dict[float, nn.Module]

    @property
    def backend(self):
        return self.step.backend

    @property
    def G_ema(self) -> nn.Module:
        return self.step.G_ema

    @property
    def precision(self) -> Precision:
        return self.step.precision

    @cached_property
    def recipe_lr(self) -> Dict[str, float]:
        """The recipe's rates after ``optim.lr_scaling`` for the global batch: the warm-up's top, the decay's start."""
        return scaled_rates(self.cfg.optim, int(self.cfg.train.batch))

    @cached_property
    def decaying(self) -> List[str]:
        """The networks whose learning rate ``optim.lr_decay_*`` lowers."""
        if not self.cfg.optim.lr_decay_kimg:
            return []
        return [net for net in ("G", "D") if self.cfg.optim.lr_decay_nets in ("both", net.lower())]

    def context(self, nimg: int) -> LossContext:
        """Instance noise, DiffAugment and the R1 weight as they stand after ``nimg`` images."""
        loss, train = self.cfg.loss, self.cfg.train
        return LossContext(noise_sigma=instance_noise_sigma(loss.instance_noise, loss.noise_anneal_kimg, nimg),
                           augment=augment_at(self.augment, train.diffaug_until_kimg, nimg),
                           r1_weight=r1_weight_at(float(loss.r1_gamma), int(loss.r1_every), nimg, self.step.global_batch),
                           pl_weight=lazy_weight(float(loss.pl_weight), int(loss.pl_every), nimg, self.step.global_batch),
                           penalty_D=self.step.D_penalty)

    def set_learning_rates(self, nimg: int) -> float:
        """Apply the warm-up and the decay at ``nimg`` (a float per param group, so resume needs no extra
        state); returns the factor on the recipe's (scaled) rates, the decaying nets' where they differ."""
        decaying, warmup_kimg = self.decaying, float(self.cfg.optim.warmup_kimg)
        if not decaying and warmup_kimg <= 0:
            return 1.0
        warm = warmup_factor(nimg, warmup_kimg)
        decay = lr_factor(nimg, self.cfg.optim.lr_decay_kimg, self.cfg.optim.lr_decay_to) if decaying else 1.0
        for net in ("G", "D"):
            self.backend.set_lr(net, self.recipe_lr[net] * warm * (decay if net in decaying else 1.0))
        return warm * decay

    def recalibrate_averages(self) -> None:
        """Fit G_ema's and the probes' BN statistics to their own weights (``train.ema_bn_recal``).

        Why: the EMA copies G's running statistics, which describe G's activations; at batch 512 and
        high rates G's weights move far within one half-life, so the averaged network samples with
        statistics that are not its own. The next step copies G's again, so training never sees these:
        they only reach the FID, the grids and the checkpoints. Same latents on every rank: ranks agree.
        """
        for G in (self.G_ema, *self.ema_probes.values()):
            recalibrate_bn(G, int(self.cfg.model.nz))

    def payload(self, run: RunState, world_size: int, rng_per_rank: List[Dict[str, Any]], cfg: Dict[str, Any]) -> Dict[str, Any]:
        """The checkpoint of this run at ``run`` (collective under ZeRO: every rank must call it)."""
        nets = {net: self.backend.export_net(net) for net in ckpt.NETS}
        loss_state = dict(self.loss_fn.state_dict()) if hasattr(self.loss_fn, "state_dict") else {}
        if self.step.path_length is not None:
            loss_state.update(self.step.path_length.state_dict())
        loss_state = loss_state or None
        return ckpt.make_payload(cfg, run, nets, self.G_ema, self.ema_probes, loss_state, world_size, rng_per_rank)

    def restore(self, payload: Dict[str, Any], networks: bool = True) -> RunState:
        """Networks, optimizers, scalers, EMA and loss state as saved; the saved counters.

        The learning rates are the recipe's again (an elastic restart may change them).
        """
        if networks:
            for net in ckpt.NETS:
                self.backend.import_net(net, ckpt.network_state(payload, net))
        ckpt.restore_averages(payload, self.G_ema, self.ema_probes)
        if hasattr(self.loss_fn, "load_state_dict") and "loss_state" in payload:
            self.loss_fn.load_state_dict(payload["loss_state"])
        if self.step.path_length is not None and "pl_mean" in payload.get("loss_state", {}):
            self.step.path_length.load_state_dict(payload["loss_state"])
        for net, lr in self.recipe_lr.items():
            self.backend.set_lr(net, lr)
        return ckpt.run_state(payload)


def build_training(cfg, accelerator: Accelerator, local_batch: int, accum: int = 1,
                   resume: Optional[Dict[str, Any]] = None) -> Training:
    """Build the run ``cfg`` describes on this rank (identical init on every rank), optionally from a checkpoint."""
    G, D, G_ema, opt_G, opt_D, precision = build_networks(cfg, accelerator.device)
    ema_probes = make_probes(G_ema, cfg.train.ema_probes)  # eval-only averages at other half-lives
    loss_fn = build_loss(cfg.loss)
    world = accelerator.num_processes
    if cfg.backend == "deepspeed":
        initial = {net: ckpt.network_state(resume, net) for net in ckpt.NETS} if resume is not None else None
        backend = DeepSpeedBackend(accelerator, G, D, opt_G, opt_D, precision, micro_batch=local_batch,
                                   accum=accum, zero_stage=cfg.zero_stage, initial_state=initial)
    else:
        backend = DDPBackend.prepare(accelerator, G, D, opt_G, opt_D, precision)
        if resume is not None:
            for net in ckpt.NETS:
                backend.import_net(net, ckpt.network_state(resume, net))
    step = TrainStep(
        backend=backend, G_ema=G_ema, loss_fn=loss_fn, precision=precision, accelerator=accelerator,
        nz=cfg.model.nz, local_batch=local_batch, accum=accum, global_batch=local_batch * world * accum,
        ema_kimg=cfg.train.ema_kimg, ema_rampup=cfg.train.ema_rampup, compile=cfg.train.compile, ema_probes=ema_probes,
        r1_gamma=float(cfg.loss.r1_gamma), path_length=float(cfg.loss.pl_weight) > 0,
    )
    augment = build_augment(cfg.train.diffaug, cfg.train.diffaug_p, cfg.train.diffaug_translation)
    return Training(cfg=cfg, step=step, loss_fn=loss_fn, augment=augment, ema_probes=ema_probes)
