"""The swapped weight-gradient convolution: same gradients as the stock kernels, on the right layers only."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dist_gan.config import load_config
from dist_gan.engine.training import build_networks, swap_wgrad_wanted
from dist_gan.models import build_discriminator, build_generator
from dist_gan.models.fastconv import _conv_forward, _conv_transpose_forward, use_swap_wgrad


def grads(model: nn.Module, x: torch.Tensor, seed: int = 1, autocast: bool = False):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # dropout draws alike in both copies
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    (y.float() ** 2).sum().backward()
    return [p.grad.clone() for p in model.parameters()], x.grad.clone()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: nn.Conv2d(32, 64, 4, 2, 1, bias=False), (3, 32, 8, 8)),  # D's deepest block, 8 -> 4 px
        (lambda: nn.Conv2d(64, 1, 4, 1, 0, bias=True), (3, 64, 4, 4)),  # D's head, with a bias
        (lambda: nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), (3, 64, 4, 4)),  # G's 4 -> 8 px block
        (lambda: nn.ConvTranspose2d(20, 64, 4, 1, 0, bias=True), (3, 20, 1, 1)),  # G's stem from the latent
        (lambda: nn.Conv2d(8, 16, 3, 2, 1, bias=False), (2, 8, 7, 7)),  # odd size: the correlation is cropped to k
    ],
)
def test_layer_gradients_match_the_stock_kernel(layer, shape):
    torch.manual_seed(0)
    stock = layer()
    swapped = copy.deepcopy(stock)
    fwd = _conv_transpose_forward if isinstance(stock, nn.ConvTranspose2d) else _conv_forward
    swapped.forward = fwd.__get__(swapped)  # a bare layer: switch it directly (use_swap_wgrad probes whole nets)
    x = torch.randn(shape)
    (gw_a, *rest_a), gx_a = grads(stock, x)
    (gw_b, *rest_b), gx_b = grads(swapped, x)
    assert torch.equal(stock(x), swapped(x))
    assert rel_err(gw_b, gw_a) < 1e-5 and rel_err(gx_b, gx_a) < 1e-6
    for a, b in zip(rest_a, rest_b):  # bias
        assert rel_err(b, a) < 1e-5


@pytest.mark.parametrize("recipe", ["dcgan64", "dcgan128", "keras_improved", "wgan_gp"])
def test_whole_networks_match_in_fp32_and_bf16(recipe):
    cfg = load_config([f"recipe={recipe}"])
    res = cfg.model.resolution
    for build, x in ((build_generator, torch.randn(4, cfg.model.nz)), (build_discriminator, torch.randn(4, 3, res, res))):
        torch.manual_seed(0)
        stock = build(cfg.model)
        swapped = copy.deepcopy(stock)
        assert use_swap_wgrad(swapped, res) >= 1
        for autocast, tol in ((False, 1e-4), (True, 3e-2)):
            ga, xa = grads(stock, x, autocast=autocast)
            gb, xb = grads(swapped, x, autocast=autocast)
            assert max(rel_err(b, a) for a, b in zip(ga, gb)) < tol, (recipe, build.__name__, autocast)
            assert rel_err(xb, xa) < tol
            stock.zero_grad(), swapped.zero_grad()


def test_only_the_deep_4x4_layers_are_switched():
    cfg = load_config(["recipe=dcgan64"])
    torch.manual_seed(0)
    G, D = build_generator(cfg.model), build_discriminator(cfg.model)
    assert use_swap_wgrad(G, 64) == 2  # 1 -> 4 px stem and 4 -> 8 px block
    assert use_swap_wgrad(D, 64) == 2  # 8 -> 4 px block and the 4 -> 1 px head
    switched = [type(m).__name__ for m in D.modules() if "forward" in vars(m)]
    assert switched == ["Conv2d", "Conv2d"]
    assert set(G.state_dict()) == set(build_generator(cfg.model).state_dict())  # checkpoints untouched


def test_gradient_penalty_double_backward_matches():
    """WGAN-GP differentiates through the input gradient: the swapped backward must be differentiable too."""
    cfg = load_config(["recipe=wgan_gp"])
    torch.manual_seed(0)
    stock = build_discriminator(cfg.model)
    swapped = copy.deepcopy(stock)
    use_swap_wgrad(swapped, 64)
    x = torch.randn(3, 3, 64, 64)

    def penalty_grads(D):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(xi).sum(), xi, create_graph=True)
        ((g.flatten(1).norm(dim=1) - 1) ** 2).mean().backward()
        return [p.grad.clone() for p in D.parameters()]

    assert max(rel_err(b, a) for a, b in zip(penalty_grads(stock), penalty_grads(swapped))) < 1e-4


def test_spectral_norm_layers_keep_their_parametrisation():
    cfg = load_config(["recipe=dcgan64", "model.spectral_norm=true"])
    torch.manual_seed(0)
    stock = build_discriminator(cfg.model)
    swapped = copy.deepcopy(stock)
    assert use_swap_wgrad(swapped, 64) == 2
    x = torch.randn(4, 3, 64, 64)
    ga, _ = grads(stock, x)
    gb, _ = grads(swapped, x)
    assert max(rel_err(b, a) for a, b in zip(ga, gb)) < 1e-4


def test_recipe_switch_auto_is_cpu_eager_only():
    cfg = load_config(["recipe=smoke"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert swap_wgrad_wanted(cfg.train, cpu) and not swap_wgrad_wanted(cfg.train, cuda)
    assert not swap_wgrad_wanted(load_config(["recipe=smoke", "train.compile=default"]).train, cpu)
    assert swap_wgrad_wanted(load_config(["recipe=smoke", "train.swap_wgrad=always"]).train, cuda)
    assert not swap_wgrad_wanted(load_config(["recipe=smoke", "train.swap_wgrad=never"]).train, cpu)
    nets = build_networks(load_config(["recipe=dcgan64"]), cpu)
    assert sum("forward" in vars(m) for m in nets.D.modules()) == 2
    nets = build_networks(load_config(["recipe=dcgan64", "train.swap_wgrad=never"]), cpu)
    assert sum("forward" in vars(m) for m in nets.D.modules()) == 0
