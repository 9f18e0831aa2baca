"""Every loss on a hand-computed case, selected by name through the registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dist_gan.config import load_config
from dist_gan.errors import UserError
from dist_gan.losses import LOSSES, BEGANLoss, LossContext, build_loss, gradient_penalty, inert_options, PathLengthPenalty, r1_penalty, r1_weight_at

CTX = LossContext()


class FirstPixel(nn.Module):
    """D whose logit for an image is its first pixel: lets a test choose the logits exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, 0]


def images(values, size: int = 4) -> torch.Tensor:
    """A batch whose sample i is constant ``values[i]``."""
    v = torch.tensor(values, dtype=torch.float32)
    return v.view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


def loss_named(name: str, **kw):
    cfg = load_config([f"loss.name={name}", *(f"loss.{k}={v}" for k, v in kw.items()),
                       *(["model.arch=began"] if name == "began" else [])])
    return build_loss(cfg.loss)


def test_registry_names():
    assert {"bce", "hinge", "wgan_gp", "began", "lsgan"} <= set(LOSSES)


def test_bce_label_smoothing_known_logits():
    loss_fn = loss_named("bce", real_label=0.9)
    lr, lf = [2.0, -1.0], [0.5, -3.0]
    loss, stats = loss_fn.d_loss(FirstPixel(), images(lr), images(lf), CTX)
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    exp_real = sum(-(0.9 * math.log(sig(t)) + 0.1 * math.log(1 - sig(t))) for t in lr) / 2
    exp_fake = sum(-math.log(1 - sig(t)) for t in lf) / 2
    assert loss.item() == pytest.approx(exp_real + exp_fake, rel=1e-6)
    assert stats["d_real"].item() == pytest.approx((sig(2.0) + sig(-1.0)) / 2, rel=1e-6)
    g, _ = loss_fn.g_loss(FirstPixel(), images(lf), CTX)
    assert g.item() == pytest.approx(sum(-math.log(sig(t)) for t in lf) / 2, rel=1e-6)  # G's target is 1, unsmoothed


def test_hinge_known_logits():
    loss_fn = loss_named("hinge")
    loss, _ = loss_fn.d_loss(FirstPixel(), images([0.5, 2.0]), images([-2.0, 0.5]), CTX)
    # relu(1 - [0.5, 2]) = [0.5, 0] -> 0.25 ; relu(1 + [-2, 0.5]) = [0, 1.5] -> 0.75
    assert loss.item() == pytest.approx(1.0)
    g, _ = loss_fn.g_loss(FirstPixel(), images([-2.0, 0.5]), CTX)
    assert g.item() == pytest.approx(0.75)


def test_lsgan_known_outputs():
    loss_fn = loss_named("lsgan")
    loss, _ = loss_fn.d_loss(FirstPixel(), images([1.0, 0.0]), images([0.0, 2.0]), CTX)
    # 0.5 * mean([0, 1]) + 0.5 * mean([0, 4]) = 0.25 + 1.0
    assert loss.item() == pytest.approx(1.25)
    g, _ = loss_fn.g_loss(FirstPixel(), images([0.0, 2.0]), CTX)
    assert g.item() == pytest.approx(0.5)  # 0.5 * mean([1, 1])


class LinearCritic(nn.Module):
    """D(x) = scale * <w, x> with a unit vector w: the input-gradient norm is |scale| everywhere."""

    def __init__(self, numel: int, scale: float) -> None:
        super().__init__()
        w = torch.zeros(numel)
        w[0] = 1.0
        self.register_buffer("w", w)
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x.flatten(1) @ self.w)


def test_wgan_gp_penalty_zero_for_unit_gradient_critic():
    torch.manual_seed(0)
    real, fake = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    D = LinearCritic(48, 1.0)
    assert gradient_penalty(D, real, fake).item() == 0.0
    loss, stats = loss_named("wgan_gp", gp_weight=10).d_loss(D, real, fake, CTX)
    expected = D(fake).mean() - D(real).mean()
    assert stats["gp"].item() == 0.0
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_wgan_gp_penalty_value_and_gradient():
    """scale 2: grad norm 2 -> GP = (2-1)^2 = 1, and d(10 GP)/d scale = 10 * 2 (2-1) = 20."""
    torch.manual_seed(0)
    real, fake = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    D = LinearCritic(48, 2.0)
    loss, stats = loss_named("wgan_gp", gp_weight=10).d_loss(D, real, fake, CTX)
    assert stats["gp"].item() == pytest.approx(1.0, abs=1e-6)
    wdist_grad = (fake[:, 0, 0, 0].mean() - real[:, 0, 0, 0].mean()).item()
    assert loss.item() == pytest.approx(2 * wdist_grad + 10.0, abs=1e-5)
    loss.backward()
    assert D.scale.grad.item() == pytest.approx(wdist_grad + 20.0, abs=1e-5)
    g, _ = loss_named("wgan_gp").g_loss(D, fake, CTX)
    assert g.item() == pytest.approx(-2 * fake[:, 0, 0, 0].mean().item(), abs=1e-6)


class QuadraticCritic(nn.Module):
    """D(x) = a * sum(x^2): grad_x D = 2 a x, so R1 = E[4 a^2 ||x||^2] and dR1/da = 8 a E||x||^2."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x.flatten(1).square().sum(1)


def test_r1_penalty_value_and_gradient_on_a_known_critic():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4)
    sq = x.flatten(1).square().sum(1).mean().item()
    D = QuadraticCritic(1.5)
    r1 = r1_penalty(D, x)
    assert r1.item() == pytest.approx(4 * 1.5**2 * sq, rel=1e-5)
    r1.backward()
    assert D.a.grad.item() == pytest.approx(8 * 1.5 * sq, rel=1e-5)
    assert r1_penalty(LinearCritic(48, 3.0), x).item() == pytest.approx(9.0)  # |grad| = 3 everywhere


def test_r1_is_lazy_on_the_images_shown():
    """Due on every 4th D step (batch 8: images 0, 32, 64 ...) with weight gamma/2 * 4, else 0; off at gamma 0."""
    weights = [r1_weight_at(0.5, 4, nimg, 8) for nimg in range(0, 96, 8)]
    assert weights == [1.0, 0, 0, 0] * 3
    assert r1_weight_at(0.0, 4, 0, 8) == 0.0
    assert sum(r1_weight_at(0.5, 1, nimg, 8) for nimg in range(0, 96, 8)) == pytest.approx(sum(weights))


def test_r1_keys_are_checked():
    for bad in ("loss.r1_gamma=-1", "loss.r1_every=0"):
        with pytest.raises(UserError, match="loss.r1_gamma must be >= 0"):
            load_config([bad])


class LinearStyleG(nn.Module):
    """mapping_ws: z copied to 3 layers; synthesize: c * (sum of the layers' w) as a 1x4x4 image. So J_w^T y is
    c * y for every layer and each path length is exactly c * |y|."""

    num_ws = 3

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c))

    def mapping_ws(self, z: torch.Tensor) -> torch.Tensor:
        return z.unsqueeze(1).expand(-1, self.num_ws, -1)

    def synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        return self.c * ws.sum(1).view(-1, 1, 4, 4)


def test_path_length_penalty_on_a_linear_generator():
    z = torch.randn(5, 16)
    pl = PathLengthPenalty(decay=0.01)
    torch.manual_seed(7)
    penalty, mean = pl(LinearStyleG(2.0), z)
    torch.manual_seed(7)
    y = torch.randn(5, 1, 4, 4) / 4.0  # the same draw: 1/sqrt(H W) with H = W = 4
    lengths = 2.0 * y.flatten(1).norm(dim=1)
    assert mean.item() == pytest.approx(lengths.mean().item(), rel=1e-5)
    a = 0.01 * lengths.mean()  # the running mean from 0, one step of decay 0.01
    assert pl.pl_mean.item() == pytest.approx(a.item(), rel=1e-5)
    assert penalty.item() == pytest.approx((lengths - a).square().mean().item(), rel=1e-4)
    restored = PathLengthPenalty()
    restored.load_state_dict(pl.state_dict())
    assert restored.pl_mean.item() == pl.pl_mean.item()
    with pytest.raises(UserError, match="needs a generator with a mapping network"):
        load_config(["loss.pl_weight=2"])


class ScaleAE(nn.Module):
    """'Autoencoder' D(x) = a * x; with a = 0 the reconstruction loss is mean |x|."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x


def test_began_k_t_update_on_known_reconstruction_losses():
    loss_fn = loss_named("began", gamma=0.5, lambda_k=1.0)
    D, real, fake = ScaleAE(), images([0.4, -0.4]), images([0.1, -0.1])  # L(x) = 0.4, L(G(z)) = 0.1
    loss, stats = loss_fn.d_loss(D, real, fake, CTX)
    assert loss.item() == pytest.approx(0.4)  # k_0 = 0
    assert stats["k_t"].item() == pytest.approx(0.1)  # 0 + 1 * (0.5 * 0.4 - 0.1)
    assert stats["m_global"].item() == pytest.approx(0.5)  # 0.4 + |0.2 - 0.1|
    loss.backward()  # the graph kept the k_t it was built with
    assert D.a.grad.item() == pytest.approx(-0.4)  # d/da of |a-1|*0.4 at a=0
    loss, stats = loss_fn.d_loss(D, real, fake, CTX)
    assert loss.item() == pytest.approx(0.4 - 0.1 * 0.1)
    assert stats["k_t"].item() == pytest.approx(0.2)
    g, gstats = loss_fn.g_loss(D, fake, CTX)
    assert g.item() == pytest.approx(0.1) and set(gstats) == {"loss_g"}


def test_began_k_t_clipped_and_saved():
    loss_fn = BEGANLoss(gamma=0.5, lambda_k=100.0)
    D = ScaleAE()
    _, stats = loss_fn.d_loss(D, images([0.4]), images([0.1]), CTX)
    assert stats["k_t"].item() == 1.0  # 0 + 100 * 0.1 clipped
    _, stats = loss_fn.d_loss(D, images([0.1]), images([0.4]), CTX)
    assert stats["k_t"].item() == 0.0  # 1 + 100 * (0.05 - 0.4) clipped
    loss_fn.k_t = torch.tensor(0.25)
    state = loss_fn.state_dict()
    other = BEGANLoss()
    other.load_state_dict(state)
    assert isinstance(other.k_t, torch.Tensor) and other.k_t.item() == 0.25


def test_began_needs_autoencoder_d():
    with pytest.raises(ValueError, match="autoencoder"):
        BEGANLoss().d_loss(FirstPixel(), images([0.1]), images([0.2]), CTX)


@pytest.mark.parametrize("name", ["bce", "hinge", "lsgan", "wgan_gp"])
def test_stats_are_detached_tensors(name):
    D = nn.Sequential(nn.Conv2d(3, 4, 4), nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0))
    real, fake = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    loss_fn = loss_named(name)
    loss, stats = loss_fn.d_loss(D, real, fake, CTX)
    g, gstats = loss_fn.g_loss(D, fake.requires_grad_(True), CTX)
    for v in {**stats, **gstats}.values():
        assert isinstance(v, torch.Tensor) and not v.requires_grad and v.dim() == 0
    assert loss.requires_grad and g.requires_grad


def test_unknown_loss_name_fails_at_config_load():
    from dist_gan.errors import UserError

    with pytest.raises(UserError, match="loss.name"):
        load_config(["loss.name=nope"])
    with pytest.raises(UserError, match="began"):
        load_config(["loss.name=began"])  # needs the autoencoder D


def test_keys_the_chosen_loss_ignores_are_named_with_their_readers():
    cfg = load_config(["loss.name=hinge", "loss.real_label=0.9", "loss.gp_weight=5"]).loss
    assert inert_options(cfg) == ["loss.real_label=0.9 has no effect with loss.name=hinge; only bce, lsgan read it",
                                  "loss.gp_weight=5 has no effect with loss.name=hinge; only wgan_gp read it"]
    assert inert_options(load_config(["loss.name=hinge"]).loss) == []  # defaults are not flagged
    assert inert_options(load_config(["loss.name=lsgan", "loss.real_label=0.9"]).loss) == []  # lsgan reads it
    assert inert_options(load_config(["loss.name=bce", "loss.gamma=0.7"]).loss) == [
        "loss.gamma=0.7 has no effect with loss.name=bce; only began read it"]
