"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

``diff_augment(x, "color,translation,cutout")`` follows the authors' reference
``DiffAugment_pytorch.py`` op for op, on images in [-1, 1]:

- ``color``: brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) around the
  per-pixel channel mean), contrast (x U(0.5, 1.5) around the image mean);
- ``translation``: shift by up to 1/8 of the size in x and y (``translation=``), zero padding;
- ``cutout``: zero one square of half the size at a random centre.

Every op is a differentiable function of ``x`` (additions, products and a gather),
so G's gradient flows through it. Parameters are drawn per sample; the loss applies
the augmentation to every image D sees, real and fake, in both phases.

``p`` < 1 applies each op group to a random fraction ``p`` of the samples only, the
per-sample probability of StyleGAN2-ADA (Karras et al. 2020). ADA's argument: when
part of D's inputs are left clean, G is not rewarded for reproducing the augmentation
(a "leak"), so a weaker ``p`` trades some of the regularisation for fidelity.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

Op = Callable[[torch.Tensor], torch.Tensor]


def _rand(x: torch.Tensor) -> torch.Tensor:
    return torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)


def rand_brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (_rand(x) - 0.5)


def rand_saturation(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x) * 2) + mean


def rand_contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand(x) + 0.5) + mean


def rand_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Integer shift of up to ``ratio`` of the size; pixels shifted in are zeros."""
    n, _, h, w = x.shape
    shift_x, shift_y = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-shift_x, shift_x + 1, size=[n, 1, 1], device=x.device)
    ty = torch.randint(-shift_y, shift_y + 1, size=[n, 1, 1], device=x.device)
    gb, gx, gy = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij"
    )
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def rand_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a (ratio*H) x (ratio*W) square centred at a random point (clipped at the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = torch.randint(0, h + (1 - ch % 2), size=[n, 1, 1], device=x.device)
    oy = torch.randint(0, w + (1 - cw % 2), size=[n, 1, 1], device=x.device)
    gb, gx, gy = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(ch, device=x.device), torch.arange(cw, device=x.device), indexing="ij"
    )
    gx = torch.clamp(gx + ox - ch // 2, min=0, max=h - 1)
    gy = torch.clamp(gy + oy - cw // 2, min=0, max=w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


AUGMENT_FNS: Dict[str, List[Op]] = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "translation": [rand_translation],
    "cutout": [rand_cutout],
}


def parse_policy(policy: str) -> List[str]:
    """``"color, translation"`` -> ``["color", "translation"]``; a clear error for unknown names."""
    names = [p.strip() for p in str(policy or "").split(",") if p.strip()]
    unknown = [p for p in names if p not in AUGMENT_FNS]
    if unknown:
        raise ValueError(
            f"unknown DiffAugment policy {', '.join(map(repr, unknown))} in {policy!r}; "
            f"valid: {', '.join(AUGMENT_FNS)} (comma-separated, e.g. 'color,translation,cutout')"
        )
    return names


def check_p(p: float, name: str = "DiffAugment probability p") -> float:
    """The per-sample probability of each op group: in [0, 1]."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    return p


def check_translation(translation: float, name: str = "DiffAugment translation") -> float:
    """The largest shift as a fraction of the size: in (0, 0.5]."""
    translation = float(translation)
    if not 0.0 < translation <= 0.5:
        raise ValueError(f"{name} must be in (0, 0.5], got {translation}")
    return translation


def diff_augment(x: torch.Tensor, policy: str, p: float = 1.0, translation: float = 0.125) -> torch.Tensor:
    """Apply the comma-separated ``policy`` to an (N, C, H, W) batch; differentiable in ``x``.

    Each op group (``color``, ``translation``, ``cutout``) hits each sample with
    probability ``p``; ``translation`` is the largest shift as a fraction of the size.
    ``p = 1`` draws no extra random numbers, so with the default shift it is
    bit-identical to the reference policy.
    """
    p, translation = check_p(p), check_translation(translation)
    for name in parse_policy(policy):
        if p == 0.0:
            break
        y = x
        for fn in AUGMENT_FNS[name]:
            y = rand_translation(y, translation) if fn is rand_translation else fn(y)
        if p < 1.0:
            keep = torch.rand(x.size(0), 1, 1, 1, device=x.device) >= p
            y = torch.where(keep, x, y)
        x = y
    return x
