"""GAN inversion: find the latent z whose image G(z) best matches a target picture.

Why batched restarts: the DCGAN latent landscape has many poor local minima, so K
random starts are optimised together as one batch of K (one forward pass per step)
and the best final one is kept. Adam with the study's lr (0.1) and a cosine decay
to 1% of it, so the last steps refine instead of bouncing.

``affine=True`` also learns a small translate / rotate / scale of the *target*
(``affine_grid`` + ``grid_sample``), one per restart, with an L2 penalty on its
parameters (tx, ty in half-image units, log-scale, angle in radians): the study found
that the crop position dominated the result, and a few pixels of misalignment cost
more than any loss choice. Pixels the warp pulls from outside the picture are
excluded from the loss.

``space`` picks what is optimised: ``z`` (any generator), or for a generator with a
mapping network (StyleGAN2) ``w`` (one style vector for every layer) or ``w+`` (one per
layer, Abdal et al. 2019, "Image2StyleGAN"): W+ reaches images neither z nor w can, which
is what makes a StyleGAN inversion faithful. Restarts start from the w's of random z's;
the noise inputs are held fixed (``noise_mode='const'``) so the objective is deterministic.

Masks (used by ``complete``): 1 = known pixel that the loss sees, 0 = hole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from rich.progress import TextColumn
from torch import nn

from dist_gan.engine.checkpoint import load_generator
from dist_gan.errors import UserError
from dist_gan.imaging import save_image
from dist_gan.progress import progress_bar
from dist_gan.tools.imageio_utils import load_image, psnr, save_curve, save_strip
from dist_gan.tools.perceptual import build_loss

LossFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
LATENT_SPACES = ("z", "w", "w+")  # invert(space=...): what the optimiser moves


def check_space(space: str) -> None:
    if space not in LATENT_SPACES:
        raise UserError(f"unknown latent space {space!r}; valid: {', '.join(LATENT_SPACES)}")


def latent_renderer(G: nn.Module, space: str, nz: int, k: int, gen: torch.Generator,
                    device: torch.device) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``k`` starting latents in ``space`` and the function that draws images from them."""
    check_space(space)
    z = torch.randn(k, nz, generator=gen).to(device)
    if space == "z":
        return z, G
    if not hasattr(G, "mapping_ws"):
        raise UserError(f"latent space {space!r} needs a generator with a mapping network (model.arch=stylegan2); "
                         f"this one has only z")
    with torch.no_grad():
        ws = G.mapping_ws(z)  # (k, num_ws, w_dim), the same w on every layer
    if space == "w":
        return ws[:, 0].clone(), lambda w: G.synthesize(w.unsqueeze(1).expand(-1, G.num_ws, -1), noise_mode="const")
    return ws.clone(), lambda ws_: G.synthesize(ws_, noise_mode="const")


@dataclass
class InversionResult:
    """Best restart: its latent, image, the (aligned) target it was fitted to, and its loss curve."""

    z: torch.Tensor  # the latent in ``space``: (1, nz) for z, (1, w_dim) for w, (1, num_ws, w_dim) for w+
    image: torch.Tensor  # (1, 3, R, R) = G(z)
    target: torch.Tensor  # (1, 3, R, R) target as fitted (warped when affine)
    mask: Optional[torch.Tensor]  # (1, 1, R, R) pixels the loss saw, or None for all
    affine: Optional[torch.Tensor]  # (4,) tx, ty, log_scale, angle, or None
    losses: List[float]  # best restart's objective per step
    final_losses: List[float] = field(default_factory=list)  # every restart's final objective
    best_restart: int = 0
    blur_until: Optional[int] = None  # last step of the coarse-to-fine blur (loss is not comparable before)
    space: str = "z"  # the latent space optimised (LATENT_SPACES)

    @property
    def psnr(self) -> float:
        """PSNR (dB) of G(z) against the fitted target, over the pixels the loss saw."""
        return psnr(self.image, self.target, self.mask)

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Everything worth keeping as a plain tensor dict (loads with ``weights_only=True``)."""
        out = {
            "z": self.z.detach().cpu(),
            "loss": torch.tensor(self.losses[-1] if self.losses else float("nan")),
            "losses": torch.tensor(self.losses),
            "psnr": torch.tensor(self.psnr),
            "best_restart": torch.tensor(self.best_restart),
            "space": torch.tensor(LATENT_SPACES.index(self.space)),  # an index: the file stays tensors only
        }
        if self.affine is not None:
            out["affine"] = self.affine.detach().cpu()
        return out


def affine_theta(p: torch.Tensor) -> torch.Tensor:
    """(K, 4) parameters tx, ty, log_scale, angle -> (K, 2, 3) matrices for ``affine_grid``."""
    tx, ty, log_s, ang = p.unbind(1)
    s, c, si = torch.exp(log_s), torch.cos(ang), torch.sin(ang)
    return torch.stack([torch.stack([s * c, -s * si, tx], 1), torch.stack([s * si, s * c, ty], 1)], 1)


def warp(img: torch.Tensor, p: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Resample ``img`` (K, C, H, W) through the affine maps of ``p`` (K, 4)."""
    theta = affine_theta(p)
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (differentiable)."""
    r = max(1, int(math.ceil(2 * sigma)))
    c = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    g = torch.exp(-(c**2) / (2 * sigma**2))
    g = g / g.sum()
    ch = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).repeat(ch, 1, 1, 1), groups=ch)
    return F.conv2d(x, g.view(1, 1, -1, 1).repeat(ch, 1, 1, 1), groups=ch)


def shift_image(img: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate by whole pixels (right/down positive), replicating the edge: a test/demo helper."""
    _, _, h, w = img.shape
    padded = F.pad(img, (abs(dx), abs(dx), abs(dy), abs(dy)), mode="replicate")
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[..., top : top + h, left : left + w]


def invert(
    G: nn.Module,
    target: torch.Tensor,
    loss_fn: LossFn,
    steps: int = 2000,
    restarts: int = 4,
    lr: float = 0.1,
    affine: bool = False,
    affine_lr: float = 0.01,
    affine_penalty: float = 0.1,
    coarse_to_fine: Optional[float] = None,
    mask: Optional[torch.Tensor] = None,
    seed: int = 0,
    nz: Optional[int] = None,
    show_progress: bool = True,
    description: str = "inverting",
    space: str = "z",
) -> InversionResult:
    """Fit ``restarts`` latents to ``target`` (1, 3, R, R) in [-1, 1] and return the best."""
    device = target.device
    nz = nz or getattr(G, "nz", None)
    if nz is None:
        raise ValueError("pass nz for a generator without an `nz` attribute")
    gen = torch.Generator().manual_seed(seed)
    k = max(1, int(restarts))
    z, render = latent_renderer(G, space, nz, k, gen, device)
    z.requires_grad_(True)
    groups = [{"params": [z], "lr": lr}]
    p = None
    if affine:
        p = torch.zeros(k, 4, device=device, requires_grad=True)
        groups.append({"params": [p], "lr": affine_lr})
    opt = torch.optim.Adam(groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    tgt = target.expand(k, -1, -1, -1)
    known = (mask if mask is not None else torch.ones_like(target[:, :1])).expand(k, -1, -1, -1)

    # coarse-to-fine: blur both images (sigma in px, fading to 0 by mid-run) so the
    # alignment sees a few pixels of shift as a smooth basin rather than noise
    sigma0 = (target.shape[-1] / 16 if affine else 0.0) if coarse_to_fine is None else coarse_to_fine
    sigma = [sigma0]

    def objective() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = render(z)
        if p is not None:
            t = warp(tgt, p, padding="border")
            m = (warp(known, p, padding="zeros") > 0.999).float()
            xb, tb = (gaussian_blur(x, sigma[0]), gaussian_blur(t, sigma[0])) if sigma[0] > 0.05 else (x, t)
            loss = loss_fn(xb, tb, m) + affine_penalty * (p**2).sum(1)
        else:
            t, m = tgt, known
            loss = loss_fn(x, t, m if mask is not None else None)
        return loss, x, t, m

    history: List[torch.Tensor] = []
    steps = max(1, int(steps))
    with progress_bar(TextColumn("{task.fields[info]}"), enabled=show_progress) as bar:
        task = bar.add_task(description, total=steps, info="")
        for step in range(steps):
            frac = step / steps
            sigma[0] = sigma0 * max(0.0, 1.0 - 2.0 * frac)
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))
            loss, *_ = objective()
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            history.append(loss.detach().cpu())
            if step % 10 == 0 or step == steps - 1:
                bar.update(task, completed=step + 1, info=f"best loss {float(loss.detach().min()):.4g}")
        bar.update(task, completed=steps)

    with torch.no_grad():
        loss, x, t, m = objective()
    best = int(torch.argmin(loss))
    curve = [float(h[best]) for h in history] + [float(loss[best])]
    return InversionResult(
        z=z[best : best + 1].detach(),
        image=x[best : best + 1].detach(),
        target=t[best : best + 1].detach(),
        mask=None if (p is None and mask is None) else m[best : best + 1].detach(),
        affine=None if p is None else p[best].detach(),
        losses=curve,
        final_losses=[float(v) for v in loss],
        best_restart=best,
        blur_until=(steps // 2) if sigma0 > 0 else None,
        space=space,
    )


def difference_image(a: torch.Tensor, b: torch.Tensor, gain: float = 2.0) -> torch.Tensor:
    """|a - b| as a picture in [-1, 1]: black = identical, brighter = larger error (x gain)."""
    return ((a - b).abs().mean(1, keepdim=True).repeat(1, 3, 1, 1) * gain / 2).clamp(0, 1) * 2 - 1


def save_inversion(result: InversionResult, out: Path, stem: str = "invert") -> Dict[str, Path]:
    """Write reconstruction, target | reconstruction | difference strip, loss curve and latent."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "reconstruction": save_image(result.image, out / f"{stem}_reconstruction.png"),
        "strip": save_strip([result.target, result.image, difference_image(result.target, result.image)], out / f"{stem}_strip.png"),
        "loss_curve": save_curve(
            result.losses, out / f"{stem}_loss.png", title=f"{stem}: best restart",
            mark=result.blur_until, mark_label="coarse-to-fine blur ends",
        ),
        "latent": out / f"{stem}_latent.pt",
    }
    torch.save(result.tensors(), paths["latent"])
    return paths


def load_inversion_inputs(ckpt, target_path, loss: str, weights: Optional[str], lpips_weights: Optional[str],
                          resize: bool, device: str, ema: bool = True):
    """(G, its recipe, the target at G's resolution, the loss) for the invert and complete commands; G is
    the EMA copy unless ``ema`` is False."""
    G, cfg = load_generator(ckpt, ema=ema, device=device)
    target = load_image(target_path, cfg["model"]["resolution"], resize=resize).to(device)
    loss_fn = build_loss(loss, weights=weights, lpips_weights=lpips_weights)
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(device)
    return G, cfg, target, loss_fn


def run_invert(
    ckpt: str | Path,
    target_path: str | Path,
    out: str | Path,
    loss: str = "mse",
    weights: Optional[str] = None,
    affine: bool = False,
    steps: int = 2000,
    restarts: int = 4,
    lr: float = 0.1,
    seed: int = 0,
    resize: bool = False,
    lpips_weights: Optional[str] = None,
    device: str = "cpu",
    ema: bool = True,
    space: str = "z",
) -> InversionResult:
    """The ``dist-gan invert`` command: load G and target, invert, write the outputs."""
    check_space(space)  # before loading anything
    G, cfg, target, loss_fn = load_inversion_inputs(ckpt, target_path, loss, weights, lpips_weights, resize, device, ema)
    result = invert(G, target, loss_fn, steps=steps, restarts=restarts, lr=lr, affine=affine, seed=seed, nz=cfg["model"]["nz"],
                    space=space)
    save_inversion(result, Path(out))
    return result
