"""Deterministic samples from a checkpoint: one grid PNG and/or one PNG per image.

Latents are drawn on the CPU from ``torch.Generator().manual_seed(seed)`` whatever the
device, so the same seed gives the same faces everywhere.

Truncation trick (``psi``): every latent component with ``|z_i| > psi`` is redrawn
from N(0, 1) until it falls inside, i.e. z follows a normal truncated to [-psi, psi].
Smaller psi trades variety for typical, cleaner faces; ``None`` or 0 = no truncation.
A generator with a mapping network (StyleGAN2) truncates as StyleGAN does instead: z is
drawn untruncated and w is pulled toward the averaged w, ``w_avg + psi (w - w_avg)``, with
its noise inputs held fixed, so a seed gives the same faces every time.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from dist_gan.engine.checkpoint import load_generator
from dist_gan.errors import UserError
from dist_gan.imaging import save_grid, save_image
from dist_gan.models.dcgan import Generator
from dist_gan.progress import progress_bar
from dist_gan.tools.superres import load_superres


def truncated_normal(n: int, nz: int, seed: int, psi: Optional[float] = None) -> torch.Tensor:
    """(n, nz) standard-normal latents; components beyond ``psi`` are resampled (truncated normal)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, nz, generator=gen)
    if psi:
        if psi < 0.05:
            raise UserError(f"--truncation must be >= 0.05 (got {psi}); 0 disables it")
        bad = z.abs() > psi
        while bad.any():
            z[bad] = torch.randn(int(bad.sum()), generator=gen)
            bad = z.abs() > psi
    return z


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, batch: int = 64, style_psi: float = 1.0) -> torch.Tensor:
    """G(z) in batches, on G's device, returned on the CPU; a styled G (``has_mapping``) with
    its w truncated by ``style_psi`` and constant noise."""
    dev = next(G.parameters()).device
    kw = {"truncation_psi": style_psi, "noise_mode": "const"} if has_mapping(G) else {}
    with torch.no_grad():
        return torch.cat([G(z[i : i + batch].to(dev), **kw).cpu() for i in range(0, len(z), batch)])


def has_mapping(G: nn.Module) -> bool:
    """True for a generator with a mapping network z -> w (StyleGAN2): it truncates and interpolates in w."""
    return hasattr(G, "mapping_ws")


def style_psi(psi: Optional[float]) -> float:
    """``--truncation`` for a styled G: None or 0 = 1 (none), else in [0.05, 1]."""
    if not psi:
        return 1.0
    if not 0.05 <= psi <= 1.0:
        raise UserError(f"--truncation for a generator with a mapping network is a psi in [0.05, 1] (got {psi}); 0 disables it")
    return float(psi)


def demo_generator(resolution: int = 32, nz: int = 100, ngf: int = 16, seed: int = 0) -> nn.Module:
    """A deterministic *untrained* generator with smooth, full-contrast images, for tests and demos.

    Why: a freshly initialised DCGAN gives near-gray, pixel-noise images, on which
    inversion scores are meaningless and alignment has nothing to lock onto. Here the
    last upsampling layer is a bilinear-like kernel with random channel mixing, BN
    statistics are calibrated on random latents, and the output is scaled to use
    the tanh range.
    """
    torch.manual_seed(seed)
    G = Generator(resolution, nz, ngf)
    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 4
    smooth = torch.outer(k1, k1)
    convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    with torch.no_grad():
        last = convs[-1]
        cin, cout = last.weight.shape[:2]
        last.weight.copy_(torch.randn(cin, cout)[:, :, None, None] / cin**0.5 * smooth * 2)
        update_bn([torch.randn(128, nz) for _ in range(4)], G)  # what ema.recalibrate_bn runs, on the seeded global RNG
        G.eval()
        pre = G.net[:-1](torch.randn(256, nz)[:, :, None, None]).std()
        last.weight.mul_(0.9 / pre)
    return G.requires_grad_(False)


def load_sampler(ckpt, superres: Optional[str], device: str, bn_recal: bool = False, ema: bool = True):
    """(G, its recipe, the super-resolution model or None) for the sample and interpolate commands; G is
    the EMA copy unless ``ema`` is False."""
    G, cfg = load_generator(ckpt, ema=ema, device=device, bn_recal=bn_recal)
    sr = load_superres(superres, device=device) if superres else None
    return G, cfg, sr


def run_sample(
    ckpt: str | Path,
    out: str | Path,
    n: int = 64,
    seed: int = 0,
    truncation: Optional[float] = None,
    grid: bool = True,
    singles: bool = False,
    superres: Optional[str | Path] = None,
    device: str = "cpu",
    bn_recal: bool = False,
    ema: bool = True,
) -> List[Path]:
    """The ``dist-gan sample`` command: write ``grid.png`` and/or ``sample_00000.png``..."""
    if n < 1:
        raise UserError(f"--n must be at least 1 (got {n})")
    G, cfg, sr = load_sampler(ckpt, superres, device, bn_recal, ema)
    psi = style_psi(truncation) if has_mapping(G) else 1.0
    z = truncated_normal(n, cfg["model"]["nz"], seed, None if has_mapping(G) else truncation)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    chunks = []
    with progress_bar() as bar:
        task = bar.add_task("sampling", total=n)
        for i in range(0, n, 32):
            x = generate(G, z[i : i + 32], style_psi=psi)
            if sr is not None:
                with torch.no_grad():
                    x = sr(x.to(device)).cpu()
            chunks.append(x)
            bar.update(task, advance=len(x))
    images = torch.cat(chunks)
    if grid:
        written.append(save_grid(images, out / "grid.png", fill=255))
    if singles:
        written += [save_image(im, out / f"sample_{i:05d}.png") for i, im in enumerate(images)]
    torch.save({"z": z, "seed": torch.tensor(seed)}, out / "latents.pt")
    return written + [out / "latents.pt"]
