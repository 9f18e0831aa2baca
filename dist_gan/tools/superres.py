"""A small super-resolution CNN that learns the bicubic upsampling error (x2 or x4).

Why residual on bicubic: the network only has to predict the high-frequency detail
bicubic misses, and its last layer starts at zero, so an untrained model *is*
bicubic and any training can only start from there. The body runs at the low
resolution and a PixelShuffle lifts the residual to the high one (cheap on CPU).

Training pairs: high-resolution faces -> bicubic (antialiased) downscale by ``scale``
-> the model maps them back. Sources: a packed shard folder of any format (read with
``dist_gan.data.format.iter_images``) or an image zip such as the CelebA one (each image
centre-cropped to a square and resized to ``hr_size``). The last ``n_eval`` images are
held out and scored: PSNR and SSIM (11-tap Gaussian, sigma 1.5, RGB, [0, 1] scale)
of the model against plain bicubic.

The saved model is a plain dict (``weights_only=True``-loadable): format, config,
state_dict and the held-out metrics.
"""

from __future__ import annotations

import io
import random
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.progress import TextColumn
from torch import nn

from dist_gan.data.format import MANIFEST, iter_images, open_shards
from dist_gan.errors import UserError
from dist_gan.imaging import save_image
from dist_gan.progress import progress_bar
from dist_gan.tools.imageio_utils import pil_to_tensor

FORMAT = "dist_gan.superres/1"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# ------------------------------------------------------------------ model
class _ResBlock(nn.Module):
    def __init__(self, nf: int) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(nf, nf, 3, padding=1), nn.Conv2d(nf, nf, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.relu(self.c1(x)))


def bicubic_up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline the model improves on."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downscale: how training inputs are made from high-resolution images."""
    h, w = hr.shape[-2:]
    return F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True)


class SuperRes(nn.Module):
    """(N, 3, h, w) in [-1, 1] -> (N, 3, h*scale, w*scale): bicubic + learned residual."""

    def __init__(self, scale: int = 2, nf: int = 32, n_blocks: int = 4) -> None:
        super().__init__()
        if scale not in (2, 4):
            raise UserError(f"--scale must be 2 or 4 (got {scale})")
        self.scale, self.nf, self.n_blocks = scale, nf, n_blocks
        self.head = nn.Conv2d(3, nf, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(nf) for _ in range(n_blocks)])
        self.tail = nn.Conv2d(nf, 3 * scale * scale, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        self.shuffle = nn.PixelShuffle(scale)

    def config(self) -> Dict[str, int]:
        return {"scale": self.scale, "nf": self.nf, "n_blocks": self.n_blocks}

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.head(lr))
        return bicubic_up(lr, self.scale) + self.shuffle(self.tail(self.body(h) + h))


def save_superres(model: SuperRes, path: str | Path, metrics: Optional[Dict[str, float]] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "config": model.config(), "state_dict": model.state_dict(), "metrics": dict(metrics or {})}
    torch.save(state, path)
    return path


def load_superres(path: str | Path, device: str = "cpu") -> SuperRes:
    """A saved model in eval mode; UserError for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"super-resolution model not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read super-resolution model {path}: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a dist_gan super-resolution model (expected format {FORMAT})")
    model = SuperRes(**state["config"])
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------ data
def _to_tensor(ims: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _square(im: Image.Image, size: int) -> np.ndarray:
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im.convert("RGB"))


def load_zip_images(path: Path, start: int, count: int, hr_size: int) -> torch.Tensor:
    """Images ``start`` .. ``start+count`` (sorted names) of an image zip, centre-cropped and resized."""
    try:
        zf = zipfile.ZipFile(path)
    except Exception as exc:
        raise UserError(f"cannot open image zip {path}: {exc}") from None
    with zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(IMAGE_EXTS))
        if start < 0:
            start = len(names) + start
        sel = names[start : start + count]
        if len(sel) < count:
            raise UserError(f"{path} has {len(names)} images; asked for {count} from index {start}")
        return _to_tensor([_square(Image.open(io.BytesIO(zf.read(n))), hr_size) for n in sel])


def load_shard_images(folder: Path, limit: Optional[int] = None, hr_size: Optional[int] = None) -> torch.Tensor:
    """All (or the first ``limit``) images of a packed shard folder, whatever its format (png or blocks)."""
    if not (Path(folder) / MANIFEST).is_file():
        raise UserError(f"{folder} is not a shard folder (no {MANIFEST}); pack images with `dist-gan data pack`")
    shards = open_shards(folder)
    size = hr_size or shards.resolution or None
    ims = [_square(Image.fromarray(arr), size or min(arr.shape[:2])) for arr in iter_images(shards, limit)]
    if not ims:
        raise UserError(f"no images found in the shards of {folder}")
    return _to_tensor(ims)


def load_pairs_source(src: str | Path, n_train: int, n_eval: int, hr_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train HR, held-out HR) from a shard folder or an image zip; the held-out images are the last ones."""
    src = Path(src)
    if src.is_file() and src.suffix == ".zip":
        return load_zip_images(src, 0, n_train, hr_size), load_zip_images(src, -n_eval, n_eval, hr_size)
    if src.is_dir():
        allim = load_shard_images(src, None, hr_size)
        if len(allim) < n_eval + 8:
            raise UserError(f"{src} has only {len(allim)} images; need more than --n-eval {n_eval} + 8")
        return allim[: min(n_train, len(allim) - n_eval)], allim[-n_eval:]
    raise UserError(f"training data not found: {src} (give a shard folder with manifest.json, or an image .zip)")


# ------------------------------------------------------------------ train / evaluate
@torch.no_grad()
def evaluate(model: SuperRes, hr: torch.Tensor, batch: int = 64) -> Dict[str, float]:
    """Mean PSNR / SSIM of model and bicubic against the true high-resolution images."""
    from dist_gan.tools.perceptual import ms_ssim

    model.eval()
    dev = next(model.parameters()).device
    sums = {"psnr_model": 0.0, "psnr_bicubic": 0.0, "ssim_model": 0.0, "ssim_bicubic": 0.0}
    for i in range(0, len(hr), batch):
        y = hr[i : i + batch].to(dev)
        lr = downscale(y, model.scale)
        for name, pred in (("model", model(lr)), ("bicubic", bicubic_up(lr, model.scale))):
            pred = pred.clamp(-1, 1)
            mse = (((pred - y) / 2) ** 2).flatten(1).mean(1)
            sums[f"psnr_{name}"] += float((10 * torch.log10(1 / mse.clamp_min(1e-12))).sum())
            sums[f"ssim_{name}"] += float(ms_ssim(pred, y, window=11, sigma=1.5, scales=1).sum())
    out = {k: v / len(hr) for k, v in sums.items()}
    out["n_eval"] = float(len(hr))
    return out


def train_superres(
    hr: torch.Tensor,
    scale: int = 2,
    steps: int = 2000,
    seconds: Optional[float] = None,
    batch: int = 16,
    patch: int = 32,
    lr: float = 1e-3,
    nf: int = 32,
    n_blocks: int = 4,
    seed: int = 0,
    show_progress: bool = True,
) -> SuperRes:
    """Fit a SuperRes model on random HR patches (flipped at random); stops at ``steps`` or ``seconds``."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = SuperRes(scale, nf, n_blocks)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps), eta_min=lr * 0.05)
    n, _, H, W = hr.shape
    patch = min(patch - patch % scale, H - H % scale, W - W % scale)
    start = time.monotonic()
    model.train()
    model.steps_done = 0
    with progress_bar(TextColumn("{task.fields[info]}"), enabled=show_progress) as bar:
        task = bar.add_task(f"superres x{scale}", total=steps, info="")
        for step in range(steps):
            idx = torch.randint(0, n, (batch,))
            tops = [rng.randrange(0, H - patch + 1) for _ in range(batch)]
            lefts = [rng.randrange(0, W - patch + 1) for _ in range(batch)]
            y = torch.stack([hr[i, :, t : t + patch, l : l + patch] for i, t, l in zip(idx.tolist(), tops, lefts)])
            flip = torch.rand(batch) < 0.5
            y[flip] = y[flip].flip(-1)
            loss = F.l1_loss(model(downscale(y, scale)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.steps_done = step + 1
            if step % 10 == 0:
                bar.update(task, completed=step + 1, info=f"L1 {float(loss.detach()):.4f}")
            if seconds is not None and time.monotonic() - start > seconds:
                bar.update(task, completed=step + 1, info=f"L1 {float(loss.detach()):.4f} (time budget reached)")
                break
    return model.eval()


def run_train(
    src: str | Path,
    out: str | Path,
    scale: int = 2,
    steps: int = 2000,
    seconds: Optional[float] = None,
    n_train: int = 2000,
    n_eval: int = 200,
    hr_size: int = 64,
    nf: int = 32,
    n_blocks: int = 4,
    seed: int = 0,
) -> Dict[str, float]:
    """The ``dist-gan superres train`` command: train, score on held-out images, save."""
    if scale not in (2, 4):
        raise UserError(f"--scale must be 2 or 4 (got {scale})")
    if hr_size % scale:
        raise UserError(f"--hr-size {hr_size} must be divisible by --scale {scale}")
    train_hr, eval_hr = load_pairs_source(src, n_train, n_eval, hr_size)
    model = train_superres(train_hr, scale, steps=steps, seconds=seconds, nf=nf, n_blocks=n_blocks, seed=seed)
    metrics = evaluate(model, eval_hr)
    metrics["n_train"] = float(len(train_hr))
    save_superres(model, out, metrics)
    return metrics


def _collect_images(inputs: Sequence[str | Path]) -> List[Path]:
    files: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"image or folder not found: {p}")
    if not files:
        raise UserError("no images to upscale (looked for .png/.jpg/.jpeg/.bmp/.webp)")
    return files


@torch.no_grad()
def run_apply(model_path: str | Path, inputs: Sequence[str | Path], out: str | Path, device: str = "cpu") -> List[Path]:
    """The ``dist-gan superres apply`` command: upscale each image (any size) into ``out``."""
    model = load_superres(model_path, device)
    files = _collect_images(inputs)
    out = Path(out)
    written: List[Path] = []
    with progress_bar(TextColumn("{task.fields[info]}")) as bar:
        task = bar.add_task(f"upscaling x{model.scale}", total=len(files), info="")
        for f in files:
            try:
                with Image.open(f) as im:
                    x = pil_to_tensor(im.convert("RGB")).to(device)
            except Exception as exc:
                raise UserError(f"cannot read image {f}: {exc}") from None
            written.append(save_image(model(x).clamp(-1, 1), out / f"{f.stem}_x{model.scale}.png"))
            bar.update(task, advance=1)
    return written
