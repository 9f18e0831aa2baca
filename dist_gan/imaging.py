"""Small image helpers shared by training, eval and tools: tensors <-> uint8 grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [-1, 1] -> (N, H, W, 3) uint8, rounding to nearest."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, fill: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows*H, nrow*W, 3) mosaic with ``pad`` px between tiles."""
    n, h, w, c = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_image(array: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Write an HWC uint8 array as PNG, optionally enlarged ``scale`` x (nearest) for viewing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Save a batch ((N,3,H,W) in [-1,1] or (N,H,W,3) uint8) as a grid PNG."""
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else images
    return save_image(make_grid(arr, nrow), path, scale)
