"""Latent walks: a looping video through ``n_keys`` random key latents.

Each of the ``n_keys`` segments (key i -> key i+1, the last one back to key 0)
contributes ``frames`` frames, the segment's end excluded, so the video has exactly
``n_keys * frames`` frames and loops seamlessly. ``slerp`` interpolates along the
great circle, which keeps Gaussian latents at a typical norm (a straight line
through the middle passes near the origin, where DCGAN faces wash out); the
per-segment time is eased (smoothstep) so motion slows at the keys.

Writes GIF (Pillow via imageio, loops forever) or MP4 (H.264 via imageio-ffmpeg's
bundled ffmpeg, yuv420p so ordinary players accept it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import imageio.v2 as imageio
import numpy as np
import torch

from dist_gan.errors import UserError
from dist_gan.imaging import to_uint8
from dist_gan.progress import progress_bar
from dist_gan.tools.sample import has_mapping, load_sampler, truncated_normal

VIDEO_EXTS = (".gif", ".mp4")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two latent batches (falls back to lerp when nearly parallel)."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    if float(so.abs().min()) < 1e-6:
        return (1 - t) * a + t * b
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


def path_latents(keys: torch.Tensor, frames: int, use_slerp: bool = True) -> torch.Tensor:
    """(n_keys, nz) keys -> (n_keys * frames, nz) latents looping back to the first key."""
    if frames < 1 or len(keys) < 2:
        raise UserError("need --n-keys >= 2 and --frames >= 1")
    out = []
    for i in range(len(keys)):
        a, b = keys[i : i + 1], keys[(i + 1) % len(keys)][None]
        for f in range(frames):
            t = f / frames
            t = t * t * (3 - 2 * t)  # smoothstep: ease in and out of each key
            out.append(slerp(a, b, t) if use_slerp else (1 - t) * a + t * b)
    return torch.cat(out)


def check_writer(out: Path) -> None:
    """MP4 goes through ffmpeg, which the ``tools`` extra brings (imageio-ffmpeg); GIF needs nothing more."""
    if out.suffix.lower() == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise UserError(f"--out {out.name}: MP4 needs imageio-ffmpeg: pip install 'dist-gan[tools]' (or write a .gif)")


def write_video(frames_u8: np.ndarray, out: Path, fps: int) -> Path:
    """(T, H, W, 3) uint8 -> .gif or .mp4."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".gif":
        imageio.mimsave(out, list(frames_u8), format="GIF", duration=1000.0 / fps, loop=0)
    else:
        h, w = frames_u8.shape[1:3]
        if h % 2 or w % 2:
            raise UserError(f"MP4 needs even frame sizes (got {w}x{h})")
        with imageio.get_writer(
            out, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
            pixelformat="yuv420p", macro_block_size=1,
        ) as writer:
            for fr in frames_u8:
                writer.append_data(fr)
    return out


def run_interpolate(
    ckpt: str | Path,
    out: str | Path,
    n_keys: int = 8,
    frames: int = 30,
    use_slerp: bool = True,
    seed: int = 0,
    fps: int = 30,
    superres: Optional[str | Path] = None,
    device: str = "cpu",
    bn_recal: bool = False,
    ema: bool = True,
) -> Path:
    """The ``dist-gan interpolate`` command."""
    out = Path(out)
    if out.suffix.lower() not in VIDEO_EXTS:
        raise UserError(f"--out must end in .gif or .mp4 (got {out.name})")
    if n_keys < 2:
        raise UserError(f"--n-keys must be at least 2 (got {n_keys})")
    check_writer(out)
    G, cfg, sr = load_sampler(ckpt, superres, device, bn_recal, ema)
    keys = truncated_normal(n_keys, cfg["model"]["nz"], seed)
    draw = G
    if has_mapping(G):  # StyleGAN2: a straight line in w (the space its styles are linear in), fixed noise
        with torch.no_grad():
            keys = G.mapping(keys.to(device)).cpu()
        use_slerp = False
        draw = lambda w: G.synthesize(w.unsqueeze(1).expand(-1, G.num_ws, -1), noise_mode="const")  # noqa: E731
    z = path_latents(keys, frames, use_slerp)
    chunks = []
    with progress_bar() as bar, torch.no_grad():
        task = bar.add_task("rendering frames", total=len(z))
        for i in range(0, len(z), 32):
            x = draw(z[i : i + 32].to(device))
            if sr is not None:
                x = sr(x).clamp(-1, 1)
            chunks.append(to_uint8(x.cpu()))
            bar.update(task, advance=len(x))
    return write_video(np.concatenate(chunks), out, fps)
