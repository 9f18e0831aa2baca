"""Helpers of the image tools: read a picture or mask as a tensor at the generator's
size, write strips and loss curves, PSNR (grids, PNGs and tensors <-> uint8 are
``dist_gan.imaging``'s).

Tensors follow the generator's convention: (N, 3, H, W) float in [-1, 1].

Size policy (one for every tool): an input image must already be the size the
generator makes. Nothing is resized silently; ``resize=True`` (``--resize`` on the
command line) opts in to a centre square crop followed by an antialiased resize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from dist_gan.errors import UserError
from dist_gan.imaging import pyplot, save_grid

def _open(path: Path, mode: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except Exception as exc:  # not an image, truncated file
        raise UserError(f"cannot read image {path}: {exc}") from None


def center_square(im: Image.Image) -> Image.Image:
    """The largest centred square of ``im``."""
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s))


def _fit(im: Image.Image, path: Path, resolution: int, resize: bool, what: str, resample: int) -> Image.Image:
    if im.size == (resolution, resolution):
        return im
    if not resize:
        raise UserError(
            f"{what} {path} is {im.size[0]}x{im.size[1]} but the generator makes {resolution}x{resolution} "
            f"images; it is not resized automatically - pass --resize to centre-crop and resize it"
        )
    return center_square(im).resize((resolution, resolution), resample)


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) in [-1, 1]."""
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def load_image(path: str | Path, resolution: int, resize: bool = False) -> torch.Tensor:
    """An RGB image as (1, 3, R, R) in [-1, 1]; refused (UserError) when not RxR unless ``resize``."""
    im = _fit(_open(Path(path), "RGB"), Path(path), resolution, resize, "image", Image.Resampling.BICUBIC)
    return pil_to_tensor(im)


def load_mask(path: str | Path, resolution: int, resize: bool = False) -> torch.Tensor:
    """A mask as (1, 1, R, R) of 0/1: white (>= 128) = 1 = known pixel, black = 0 = hole."""
    im = _fit(_open(Path(path), "L"), Path(path), resolution, resize, "mask", Image.Resampling.NEAREST)
    arr = (np.asarray(im) >= 128).astype(np.float32)
    mask = torch.from_numpy(arr)[None, None]
    if mask.sum() == 0:
        raise UserError(f"mask {path} is all black: no known pixels to fit (white = known, black = hole)")
    return mask


def save_strip(images: Sequence[torch.Tensor], path: str | Path) -> Path:
    """Side-by-side picture of several (1|., 3, H, W) images, e.g. target | reconstruction | difference."""
    parts = [im[0] if im.dim() == 4 else im for im in images]
    return save_grid(torch.stack([p.detach().cpu() for p in parts]), path, nrow=len(parts), fill=255)


def save_curve(
    values: Iterable[float], path: str | Path, title: str = "loss", ylabel: str = "loss", mark: Optional[int] = None, mark_label: str = ""
) -> Path:
    """A loss curve PNG (log y axis when every value is positive), optionally a labelled vertical marker."""
    plt = pyplot()
    vals: List[float] = [float(v) for v in values]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(vals)
    if mark is not None:
        ax.axvline(mark, color="gray", linestyle="--", linewidth=1)
        if mark_label:
            ax.text(mark, ax.get_ylim()[1], " " + mark_label, va="top", fontsize=8, color="gray")
    if vals and min(vals) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB between images in [-1, 1] (computed on the [0, 1] scale), optionally inside ``mask``."""
    a, b = (x.detach().float().clamp(-1, 1) + 1) / 2, (y.detach().float().clamp(-1, 1) + 1) / 2
    err = (a - b) ** 2
    if mask is not None:
        m = mask.expand_as(err)
        mse = (err * m).sum() / m.sum().clamp_min(1)
    else:
        mse = err.mean()
    return float(10 * torch.log10(1.0 / mse.clamp_min(1e-12)))
