"""Procedurally drawn cartoon faces: a dataset that needs no download.

Quickstart and tests need face-like images with real structure (a head, two
eyes, a mouth in the right places) so that a briefly trained GAN visibly
learns *something*. Each face is drawn at 4x with PIL and downsampled with
LANCZOS for antialiasing. Face ``i`` of seed ``s`` comes from its own
generator ``numpy.random.default_rng([s, i])``, so it does not depend on how
many faces are drawn, and every run is byte-identical.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import re
import zipfile
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from dist_gan.data.images import encode_png
from dist_gan.errors import UserError
from dist_gan.files import atomic_open
from dist_gan.progress import progress_bar

RGB = Tuple[int, int, int]
SUPERSAMPLE = 4
FOLDER = "faces"

SKIN = [(255, 226, 200), (246, 206, 170), (234, 184, 140), (214, 160, 110), (176, 120, 78), (128, 84, 52), (92, 60, 38)]
HAIR = [(24, 20, 18), (52, 34, 22), (92, 60, 34), (140, 96, 56), (214, 180, 116), (150, 58, 28), (170, 170, 172)]
HAIR_FANCY = [(40, 60, 160), (190, 70, 140), (60, 140, 90)]
IRIS = [(92, 56, 28), (60, 40, 24), (70, 120, 170), (80, 130, 80), (110, 110, 120)]
SHIRT = [(40, 70, 140), (150, 40, 40), (40, 110, 70), (230, 230, 230), (30, 30, 30), (200, 160, 60), (120, 80, 150)]


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: float) -> RGB:
    c = np.asarray(colour, dtype=float) + rng.normal(0.0, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _shade(colour: Sequence[int], factor: float) -> RGB:
    return tuple(int(max(0, min(255, v * factor))) for v in colour)  # type: ignore[return-value]


def _pick(rng: np.random.Generator, palette: Sequence[RGB]) -> RGB:
    return palette[int(rng.integers(len(palette)))]


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    """A two-colour linear gradient at a random angle."""
    c1 = rng.uniform(40, 235, 3)
    c2 = np.clip(c1 + rng.normal(0, 45, 3), 0, 255)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1) - 0.5
    t = np.clip(0.5 + xx * math.cos(angle) + yy * math.sin(angle), 0, 1)[..., None]
    arr = (c1 * (1 - t) + c2 * t).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def draw_face(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One cartoon face as a ``size`` x ``size`` RGB image, fully determined by ``rng``'s state."""
    side = size * SUPERSAMPLE
    u = float(side)
    img = _background(rng, side)
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)

    def box(x0: float, y0: float, x1: float, y1: float) -> Tuple[float, float, float, float]:
        return (x0 * u, y0 * u, x1 * u, y1 * u)

    scale = rng.uniform(0.85, 1.08)
    cx = 0.5 + rng.normal(0, 0.025)
    cy = 0.5 + rng.normal(0, 0.025)
    hw = 0.27 * scale * rng.uniform(0.92, 1.08)  # head half-width
    hh = 0.33 * scale * rng.uniform(0.95, 1.06)  # head half-height
    skin = _jitter(rng, _pick(rng, SKIN), 8)
    hair = _jitter(rng, _pick(rng, HAIR_FANCY if rng.random() < 0.08 else HAIR), 10)
    style = int(rng.integers(4))  # 0 short, 1 long, 2 buzz, 3 side-swept

    # shoulders, neck, long hair behind the head
    shirt = _jitter(rng, _pick(rng, SHIRT), 12)
    d.ellipse(box(cx - 0.42, cy + hh + 0.05, cx + 0.42, cy + hh + 0.6), fill=shirt)
    d.rectangle(box(cx - hw * 0.42, cy + hh * 0.5, cx + hw * 0.42, cy + hh + 0.12), fill=_shade(skin, 0.85))
    if style == 1:
        d.rounded_rectangle(
            box(cx - hw * 1.22, cy - hh * 0.9, cx + hw * 1.22, cy + hh * rng.uniform(0.9, 1.4)),
            radius=hw * 0.6 * u,
            fill=hair,
        )
    # ears, head
    for sx in (-1, 1):
        d.ellipse(box(cx + sx * hw - 0.045, cy - 0.01, cx + sx * hw + 0.045, cy + 0.12), fill=_shade(skin, 0.93))
    d.ellipse(box(cx - hw, cy - hh, cx + hw, cy + hh), fill=skin)
    # cheeks
    if rng.random() < 0.5:
        a = rng.uniform(0.2, 0.35)  # blend by hand: ImageDraw replaces RGBA pixels, it does not composite
        blush = tuple(int(s * (1 - a) + p * a) for s, p in zip(skin, (235, 110, 120)))
        for sx in (-1, 1):
            ex = cx + sx * hw * 0.55
            d.ellipse(box(ex - hw * 0.18, cy + hh * 0.2, ex + hw * 0.18, cy + hh * 0.38), fill=blush)
    # hair cap: upper half of an ellipse whose flat bottom is the hairline
    hairline = cy - hh * rng.uniform(0.35, 0.6) if style != 2 else cy - hh * 0.7
    top = cy - hh * (1.14 if style != 2 else 1.03)
    cap_w = hw * (1.1 if style != 2 else 1.0)
    d.chord(box(cx - cap_w, top, cx + cap_w, 2 * hairline - top), 180, 360, fill=hair)
    if style in (0, 1):  # sideburns / side locks
        for sx in (-1, 1):
            xa, xb = sorted((cx + sx * hw * 0.8, cx + sx * hw * 1.06))
            d.rectangle(box(xa, hairline - 0.02, xb, cy + 0.02), fill=hair)
    if style == 3:  # side-swept fringe
        sx = 1 if rng.random() < 0.5 else -1
        d.polygon(
            [
                (u * (cx - sx * cap_w), u * hairline),
                (u * (cx + sx * cap_w * 1.02), u * (hairline - 0.02)),
                (u * (cx + sx * cap_w * 0.9), u * (hairline + hh * 0.35)),
            ],
            fill=hair,
        )

    # eyes
    ey = cy - hh * rng.uniform(0.0, 0.12)
    dx = hw * rng.uniform(0.38, 0.48)
    ew, eh = hw * rng.uniform(0.2, 0.27), hh * rng.uniform(0.07, 0.1)
    iris = _jitter(rng, _pick(rng, IRIS), 10)
    gaze = rng.normal(0, 0.25) * ew * 0.4
    brow = _shade(hair, 0.7) if sum(hair) > 150 else hair
    brow_y = ey - eh - hh * rng.uniform(0.08, 0.15)
    tilt = rng.normal(0, 0.012)
    lw = max(1, int(0.022 * u * scale))
    for sx in (-1, 1):
        ex = cx + sx * dx
        d.ellipse(box(ex - ew, ey - eh, ex + ew, ey + eh), fill=(245, 245, 240), outline=_shade(skin, 0.45), width=max(1, lw // 2))
        r = eh * 0.95
        ix = ex + gaze
        d.ellipse(box(ix - r, ey - r, ix + r, ey + r), fill=iris)
        d.ellipse(box(ix - r * 0.5, ey - r * 0.5, ix + r * 0.5, ey + r * 0.5), fill=(12, 10, 10))
        d.ellipse(box(ix + r * 0.15, ey - r * 0.55, ix + r * 0.5, ey - r * 0.2), fill=(255, 255, 255))
        d.arc(box(ex - ew * 1.05, ey - eh * 1.15, ex + ew * 1.05, ey + eh * 1.3), 195, 345, fill=(25, 18, 15), width=lw)
        d.line(
            [(u * (ex - ew * 1.1), u * (brow_y + sx * tilt)), (u * (ex + ew * 1.1), u * (brow_y - sx * tilt))],
            fill=brow,
            width=max(1, int(lw * rng.uniform(1.0, 1.8))),
        )

    # nose: a soft shadow and a little tip
    ny = cy + hh * rng.uniform(0.18, 0.28)
    nw = hw * rng.uniform(0.1, 0.16)
    d.arc(box(cx - nw, ny - hh * 0.1, cx + nw, ny + hh * 0.05), 20, 160, fill=_shade(skin, 0.65), width=lw)
    d.line([(u * cx, u * (ey + eh)), (u * (cx - nw * 0.4), u * ny)], fill=_shade(skin, 0.85), width=max(1, lw // 2))

    # mouth
    my = cy + hh * rng.uniform(0.5, 0.6)
    mw = hw * rng.uniform(0.3, 0.5)
    mh = hh * rng.uniform(0.06, 0.16)
    lips = _shade(_jitter(rng, (190, 80, 80), 15), 0.9)
    if rng.random() < 0.55:  # open smile
        d.chord(box(cx - mw, my - mh, cx + mw, my + mh), 0, 180, fill=(90, 20, 30), outline=lips, width=lw)
        d.chord(box(cx - mw * 0.8, my - mh * 0.9, cx + mw * 0.8, my + mh * 0.5), 0, 180, fill=(245, 245, 240))
    else:  # closed lips
        d.arc(box(cx - mw, my - mh, cx + mw, my + mh), 10, 170, fill=lips, width=int(lw * 1.5))

    angle = rng.normal(0, 5.0)
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, center=(cx * u, cy * u))
    img.paste(layer, (0, 0), layer)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def _face_png(seed: int, index: int, size: int) -> bytes:  # module level: Pool.imap pickles it
    return encode_png(draw_face(np.random.default_rng([seed, index]), size))


def _face_pngs(n: int, seed: int, size: int, workers: int) -> Iterator[bytes]:
    """Faces 0..n-1 as PNG bytes, in order; drawn by ``workers`` processes (each face is independent)."""
    if workers <= 1 or n < 64:
        yield from (_face_png(seed, i, size) for i in range(n))
        return
    # fork: the workers need nothing but PIL and numpy, and start in milliseconds.
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(functools.partial(_face_png, seed, size=size), range(n), chunksize=32)


def default_draw_workers() -> int:
    return min(8, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 1


def draw_faces(n: int, out: Path, size: int = 64, seed: int = 0, progress: bool = False,
               workers: Optional[int] = None) -> Path:
    """Write ``n`` faces as ``out/faces/000000.png``..., or into a zip with that layout if ``out`` ends in .zip.

    Returns ``out``. ``workers`` processes draw (default: one per available core, at
    most 8); the output does not depend on how many. A zip is written to a temporary name and renamed, with fixed
    member timestamps so it is byte-identical across runs; a folder has any
    stale ``NNNNNN.png`` beyond ``n`` from an earlier, larger draw removed.
    """
    out = Path(out)
    if n < 1:
        raise UserError(f"n must be at least 1, got {n}")
    if size < 16 or size > 1024:
        raise UserError(f"size must be between 16 and 1024, got {size}")
    workers = default_draw_workers() if workers is None else workers

    with progress_bar(enabled=progress, transient=True) as bar:
        task = bar.add_task("drawing faces", total=n)
        if out.suffix.lower() == ".zip":
            with atomic_open(out, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                for i, png in enumerate(_face_pngs(n, seed, size, workers)):
                    info = zipfile.ZipInfo(f"{FOLDER}/{i:06d}.png", date_time=(1980, 1, 1, 0, 0, 0))
                    info.external_attr = 0o644 << 16
                    zf.writestr(info, png)
                    bar.advance(task)
        else:
            folder = out / FOLDER
            folder.mkdir(parents=True, exist_ok=True)
            for i, png in enumerate(_face_pngs(n, seed, size, workers)):
                (folder / f"{i:06d}.png").write_bytes(png)
                bar.advance(task)
            for p in folder.iterdir():
                if re.fullmatch(r"\d{6}\.png", p.name) and int(p.name[:6]) >= n:
                    p.unlink()
    return out
