"""Image helpers shared by training, eval and tools: tensors <-> uint8, grids, PNGs, plots.

Tensors follow the generator's convention, (N, 3, H, W) or (3, H, W) floats in
[-1, 1]; arrays are HWC / NHWC uint8. Grids are torchvision's ``make_grid``. PNGs
are written from uint8 rounded to nearest (torchvision's ``save_image`` would
quantise [0, 1] floats its own way and shift pixels that sit on a rounding edge).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) or (3, H, W) floats in [-1, 1] -> NHWC / HWC uint8, rounding to nearest."""
    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, fill: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one mosaic with ``pad`` px between and around the tiles, ``nrow`` per row
    (default: square-ish)."""
    # Imported here: torchvision costs ~1.5-3 s of start-up (python -X importtime) that a
    # training or eval process pays only once it draws its first grid.
    from torchvision.utils import make_grid as tv_make_grid

    n = images.shape[0]
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if n == 1:  # torchvision returns a lone image unpadded; keep every grid's frame
        grid = F.pad(x[0], (pad, pad, pad, pad), value=fill)
    else:
        grid = tv_make_grid(x, nrow=nrow, padding=pad, pad_value=fill)
    return grid.permute(1, 2, 0).numpy()


def save_image(image: np.ndarray | torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    """Write one image as PNG: an HWC uint8 array, or a (3, H, W) / (1, 3, H, W) tensor in [-1, 1];
    optionally enlarged ``scale`` x (nearest) for viewing."""
    if isinstance(image, torch.Tensor):
        image = to_uint8(image[0] if image.dim() == 4 else image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, nrow: int | None = None, scale: int = 1,
              fill: int = 0) -> Path:
    """Save a batch ((N,3,H,W) in [-1,1] or (N,H,W,3) uint8) as a grid PNG."""
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else images
    return save_image(make_grid(arr, nrow, fill=fill), path, scale)


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend.

    Imported on first use: it costs ~0.4-1.3 s of start-up (python -X importtime) and
    most commands never plot; the backend must be chosen before pyplot loads.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
