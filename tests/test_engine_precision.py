"""Mixed precision: one loss scaler per network, so a D overflow never touches G."""

from __future__ import annotations

import copy

import torch
from accelerate import Accelerator

from dist_gan.engine.precision import Precision, make_adam
from dist_gan.engine.step import TrainStep
from dist_gan.losses import BCELoss, LossContext
from dist_gan.models.dcgan import Discriminator, Generator


class OverflowingD(BCELoss):
    """D's loss overflows (as an fp16 D can); G's loss is the ordinary one."""

    def d_loss(self, D, real, fake, ctx):
        loss, stats = super().d_loss(D, real, fake, ctx)
        return loss * float("inf"), stats


def make_step(loss_fn, precision: str = "fp16"):
    torch.manual_seed(0)
    acc = Accelerator(mixed_precision="no", cpu=True)
    G, D = Generator(32, 8, 8), Discriminator(32, 8)
    prec = Precision(precision, torch.device("cpu"))
    opt_G, opt_D = make_adam(G.parameters(), 1e-3, (0.5, 0.999), "auto", acc.device), make_adam(D.parameters(), 1e-3, (0.5, 0.999), "auto", acc.device)
    step = TrainStep(G=G, D=D, G_ema=copy.deepcopy(G), opt_G=opt_G, opt_D=opt_D, scaler_G=prec.make_scaler(),
                     scaler_D=prec.make_scaler(), loss_fn=loss_fn, precision=prec, accelerator=acc, nz=8,
                     local_batch=4, accum=1, global_batch=4, ema_kimg=0.01, ema_rampup=0.0)
    return step, G, D


def test_d_overflow_skips_only_d_and_cuts_only_d_scale():
    step, G, D = make_step(OverflowingD())
    # A modest start scale, so G's own fp16 backward cannot overflow by itself.
    step.backend.scalers.update({net: torch.amp.GradScaler("cpu", init_scale=256.0) for net in ("G", "D")})
    g_before, d_before = copy.deepcopy(G.state_dict()), copy.deepcopy(D.state_dict())
    scale_g, scale_d = step.scaler_G.get_scale(), step.scaler_D.get_scale()
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    step(lambda: real, True, True, LossContext(), nimg=0)
    assert step.scaler_D.get_scale() == scale_d / 2  # D's step skipped, D's scale backed off
    assert step.scaler_G.get_scale() == scale_g  # G's scaler untouched
    assert all(torch.equal(d_before[k], v) for k, v in D.state_dict().items() if "running" not in k and "num_batches" not in k)
    assert not torch.equal(g_before["net.0.weight"], G.state_dict()["net.0.weight"])  # G still stepped


def test_bf16_needs_no_scaler():
    step, _, _ = make_step(BCELoss(), precision="bf16")
    assert not step.scaler_G.is_enabled() and not step.scaler_D.is_enabled()
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    step(lambda: real, True, True, LossContext(), nimg=0)
    stats = step.pop_stats()
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
