"""Image completion (inpainting) by masked GAN inversion.

Mask convention: a grayscale PNG the size of the target, WHITE = known pixel (kept,
and the only pixels the loss sees), BLACK = hole (filled from the generator).
The latent is fitted to the known pixels only, then the generated pixels are pasted
into the hole: ``result = target * mask + G(z) * (1 - mask)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
from PIL import Image
from torch import nn

from dist_gan.errors import UserError
from dist_gan.imaging import save_image
from dist_gan.tools.imageio_utils import load_mask, save_curve, save_strip
from dist_gan.tools.invert import InversionResult, invert, load_inversion_inputs
from dist_gan.tools.perceptual import LossFn

@dataclass
class Completion:
    """The pasted result, the raw generated image and the inversion behind it."""

    completed: torch.Tensor  # (1, 3, R, R)
    generated: torch.Tensor  # (1, 3, R, R)
    inversion: InversionResult


def check_mask(target: torch.Tensor, mask: torch.Tensor) -> None:
    """Refuse a mask whose size does not match the target, or that leaves nothing known/missing."""
    if mask.shape[-2:] != target.shape[-2:]:
        raise UserError(
            f"mask is {mask.shape[-1]}x{mask.shape[-2]} but the target is {target.shape[-1]}x{target.shape[-2]}; "
            "they must be the same size"
        )
    if float(mask.sum()) == 0:
        raise UserError("mask is all black: no known pixels to fit (white = known, black = hole)")


def paste(target: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Known pixels from the target, hole pixels from the generator."""
    return target * mask + generated * (1 - mask)


def complete(G: nn.Module, target: torch.Tensor, mask: torch.Tensor, loss_fn: LossFn, **invert_kwargs) -> Completion:
    """Fit z to the known pixels (mask = 1) and fill the hole (mask = 0) from G(z)."""
    check_mask(target, mask)
    inv = invert(G, target, loss_fn, mask=mask, affine=False, description="completing", **invert_kwargs)
    return Completion(paste(target, inv.image, mask), inv.image, inv)


def save_completion(c: Completion, target: torch.Tensor, mask: torch.Tensor, out: Path) -> Dict[str, Path]:
    """Write the completed image, the generated image, the latent and a before | after picture.

    The "before" panel shows the hole as mid-gray.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    before = target * mask
    paths = {
        "completed": save_image(c.completed, out / "complete_result.png"),
        "generated": save_image(c.generated, out / "complete_generated.png"),
        "before_after": save_strip([before, c.generated, c.completed], out / "complete_before_after.png"),
        "loss_curve": save_curve(c.inversion.losses, out / "complete_loss.png", title="completion: best restart"),
        "latent": out / "complete_latent.pt",
    }
    torch.save(c.inversion.tensors(), paths["latent"])
    return paths


def run_complete(
    ckpt: str | Path,
    target_path: str | Path,
    mask_path: str | Path,
    out: str | Path,
    loss: str = "mse",
    weights: Optional[str] = None,
    steps: int = 1000,
    restarts: int = 4,
    lr: float = 0.1,
    seed: int = 0,
    resize: bool = False,
    lpips_weights: Optional[str] = None,
    device: str = "cpu",
    ema: bool = True,
) -> Completion:
    """The ``dist-gan complete`` command."""
    G, cfg, target, loss_fn = load_inversion_inputs(ckpt, target_path, loss, weights, lpips_weights, resize, device, ema)
    mask = _load_mask_matching(mask_path, target_path, cfg["model"]["resolution"], resize).to(device)
    c = complete(G, target, mask, loss_fn, steps=steps, restarts=restarts, lr=lr, seed=seed, nz=cfg["model"]["nz"])
    save_completion(c, target, mask, Path(out))
    return c


def _load_mask_matching(mask_path: str | Path, target_path: str | Path, res: int, resize: bool) -> torch.Tensor:
    """The mask must have exactly the target file's size (checked before any resize)."""
    try:
        with Image.open(target_path) as t:
            tsize = t.size
    except Exception:
        tsize = None
    if not Path(mask_path).is_file():
        raise UserError(f"mask not found: {mask_path}")
    try:
        with Image.open(mask_path) as m:
            msize = m.size
    except Exception as exc:
        raise UserError(f"cannot read mask {mask_path}: {exc}") from None
    if tsize is not None and msize != tsize:
        raise UserError(
            f"mask {mask_path} is {msize[0]}x{msize[1]} but the target is {tsize[0]}x{tsize[1]}; "
            "they must be the same size (white = known, black = hole)"
        )
    return load_mask(mask_path, res, resize=resize)
