"""One training iteration's phases over prepared networks: D step, G step, EMA.

Built for the trainer and the benchmarks alike by ``engine.training.build_training``,
so benchmarks time exactly the step the trainer runs. Statistics stay on the
device (summed tensors); the loop reads them at its sync points only, so a step
never forces a host sync.

The fast path, each part a recipe switch: autocast and channels_last come from
``train.precision``/``train.channels_last``; Adam is fused (``optim.impl``) and
gradients are freed with ``set_to_none``; G's forward is computed once and reused
for D's and G's steps when both run and ``accum == 1``; D is frozen (no weight
gradients) during G's step; ``compile`` (``train.compile``) wraps G and D in
``torch.compile`` with an eager fallback.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Dict, Optional

import torch
from torch import nn

from dist_gan.engine.backends import DDPBackend
from dist_gan.engine.ema import ema_beta, update_ema
from dist_gan.engine.precision import Precision, maybe_compile
from dist_gan.losses import LossContext, PathLengthPenalty, r1_penalty


class TrainStep:
    """D and G phases for one rank, over a backend (DDP or DeepSpeed).

    Pass ``backend``, or (for DDP) the prepared ``G``/``D``/optimizers/scalers and the
    step wraps them in a ``DDPBackend``. ``G``/``D`` may be wrapped; ``*_raw`` are the modules.
    """

    def __init__(
        self, *, G_ema: nn.Module, loss_fn, precision: Precision, accelerator, nz: int, local_batch: int,
        accum: int, global_batch: int, ema_kimg: float, ema_rampup: float, backend=None,
        G: nn.Module | None = None, D: nn.Module | None = None, opt_G=None, opt_D=None, scaler_G=None, scaler_D=None,
        compile: str = "", ema_probes: Optional[Dict[float, nn.Module]] = None, r1_gamma: float = 0.0,
        path_length: bool = False,
    ) -> None:
        if backend is None:
            backend = DDPBackend(accelerator, G, D, opt_G, opt_D, scaler_G, scaler_D)
        self.backend = backend
        self.G, self.D, self.G_ema = backend.G, backend.D, G_ema
        self.G_raw, self.D_raw = backend.G_raw, backend.D_raw
        self.D_penalty = backend.D_penalty  # what R1 and WGAN-GP differentiate w.r.t. its input (LossContext.penalty_D)
        self.D_frozen = self.D_raw  # what G's loss calls: the raw D, so DDP never reduces D's grads twice
        self.compile = compile if getattr(backend, "name", "ddp") == "ddp" else ""
        if compile and not self.compile:
            warnings.warn(f"train.compile={compile!r} is ignored with backend={backend.name}: "
                          "its engines own the modules", RuntimeWarning, stacklevel=2)
        if self.compile and (getattr(loss_fn, "gp_weight", 0) > 0 or r1_gamma > 0 or path_length):  # no double backward
            warnings.warn(f"train.compile={compile!r} is ignored with a gradient penalty (double backward)",
                          RuntimeWarning, stacklevel=2)
            self.compile = ""
        if self.compile:  # lazy: compiles on the first step, falls back to eager if that fails
            self.G, self.D = maybe_compile(self.G, self.compile), maybe_compile(self.D, self.compile)
            self.D_frozen = maybe_compile(self.D_raw, self.compile)
        self.loss_fn, self.precision, self.accelerator = loss_fn, precision, accelerator
        self.nz, self.local_batch, self.accum, self.global_batch = nz, local_batch, accum, global_batch
        self.ema_kimg, self.ema_rampup = ema_kimg, ema_rampup
        self.ema_probes = ema_probes or {}
        self.path_length = PathLengthPenalty() if path_length else None  # G's lazy regulariser, with its running mean
        self.device = accelerator.device
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, int] = {}

    def _latents(self) -> torch.Tensor:
        return torch.randn(self.local_batch, self.nz, device=self.device)

    @property
    def scaler_G(self):
        return self.backend.scalers["G"]

    @property
    def scaler_D(self):
        return self.backend.scalers["D"]

    def _record(self, stats: Dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums[k] + v.float() if k in self.sums else v.float()
            self.counts[k] = self.counts.get(k, 0) + 1

    def d_phase(self, next_real: Callable[[], torch.Tensor], ctx: LossContext, keep_fake: bool) -> Optional[torch.Tensor]:
        """D learns to tell reals from detached fakes. Returns the fakes (with graph) if asked to keep them."""
        keep_fake = keep_fake and self.accum == 1
        self.D_raw.requires_grad_(True)
        fake = None
        for r in range(self.accum):
            real = next_real()
            last = r == self.accum - 1
            with self.backend.hold_sync("D", last), self.precision.autocast():
                with contextlib.nullcontext() if keep_fake else torch.no_grad():
                    fake = self.G(self._latents())
                loss, stats = self.loss_fn.d_loss(self.D, real, fake.detach(), ctx)
                if ctx.r1_weight > 0:  # lazy R1 on what D sees of the reals
                    r1 = r1_penalty(ctx.penalty_D or self.D, ctx.d_input(real))
                    loss = loss + ctx.r1_weight * r1
                    stats = {**stats, "r1": r1.detach()}
            self.backend.backward("D", loss, self.accum, last)
            self._record(stats)
        self.backend.step("D")
        return fake if keep_fake else None

    def g_phase(self, ctx: LossContext, nimg: int, fake: Optional[torch.Tensor] = None) -> None:
        """G learns to fool D. D is frozen and called un-wrapped: DDP must not reduce its grads."""
        self.D_raw.requires_grad_(False)
        for r in range(self.accum):
            last = r == self.accum - 1
            with self.backend.hold_sync("G", last), self.precision.autocast():
                fake_r = fake if fake is not None else self.G(self._latents())
                loss, stats = self.loss_fn.g_loss(self.D_frozen, fake_r, ctx)
                if ctx.pl_weight > 0 and self.path_length is not None:  # on half a batch, as StyleGAN2 does
                    pl, length = self.path_length(self.G_raw, self._latents()[: max(1, self.local_batch // 2)])
                    loss = loss + ctx.pl_weight * pl
                    stats = {**stats, "pl": pl.detach(), "pl_length": length}
            self.backend.backward("G", loss, self.accum, last)
            self._record(stats)
        self.backend.step("G")
        self.D_raw.requires_grad_(True)
        update_ema(self.G_ema, self.G_raw, ema_beta(self.global_batch, self.ema_kimg, nimg, self.ema_rampup))
        for half_life, probe in self.ema_probes.items():
            update_ema(probe, self.G_raw, ema_beta(self.global_batch, half_life, nimg, self.ema_rampup))

    def __call__(self, next_real: Callable[[], torch.Tensor], do_d: bool, do_g: bool, ctx: LossContext, nimg: int) -> int:
        """Run the scheduled phases; returns the real images consumed (global)."""
        fake = self.d_phase(next_real, ctx, keep_fake=do_g) if do_d else None
        shown = self.global_batch if do_d else 0
        if do_g:
            self.g_phase(ctx, nimg + shown, fake)
        return shown

    def pop_stats(self) -> Dict[str, float]:
        """Means over steps and ranks, in one collective: the loop's single host sync."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        vec = torch.stack([self.sums[k] / self.counts[k] for k in keys])
        if self.accelerator.num_processes > 1:
            vec = self.accelerator.reduce(vec, reduction="mean")
        self.sums.clear()
        self.counts.clear()
        return dict(zip(keys, vec.tolist()))
