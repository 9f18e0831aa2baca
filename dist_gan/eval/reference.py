"""Reference images for evaluation, and their Inception statistics cached on disk.

A reference is a shard folder (``manifest.json`` + WebDataset tars of ``<key>.png``)
or a zip/folder of images. Images are taken in a fixed order (manifest order, or
sorted names), the first ``n`` of them, so a reference is reproducible. Loose images
get the packer's crop for their layout (``dist_gan.data.images``: CelebA's customary
centred 108/178-width face box, so 89x109 -> the box (17.5, 27.5, 71.5, 81.5); a
centred short-side square otherwise) and a PIL LANCZOS resize to the generator's
resolution, exactly as ``dist-gan data pack`` makes training shards; shard images
are used as packed and only resized if their size differs.

Statistics (mu, sigma and the features themselves, which KID and the leak check
need) are keyed by a hash of the data (manifest content_hash or the manifest bytes;
a zip's sha256; a folder's names/sizes/mtimes) and of the preprocessing (resolution,
crop, n, weights sha1), so they are computed once per setting.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
from PIL import Image

from dist_gan.data.images import AUTO_CROP, IMAGE_EXTS, crop_box, detect_layout
from dist_gan.errors import UserError
from dist_gan.eval.features import hash_file

STATS_VERSION = 1


@dataclass
class ReferenceSet:
    """Where reference images come from and what identifies their content."""

    path: Path
    kind: str  # "shards" | "zip" | "folder"
    layout: str  # "anime" | "celeba" | "ffhq" | "folder" (the packer's layout names)
    data_key: str  # content identity for the cache
    items: List[str] = field(default_factory=list)  # image names (zip/folder) or shard names
    count: int = 0
    crop: str = "shards"  # the packer's crop name for loose images
    native_resolution: Optional[int] = None  # shards only

    def preprocessing(self) -> str:
        if self.kind == "shards":
            return "shard images as packed (LANCZOS resize only if their size differs)"
        return f"crop {self.crop!r} (dist_gan.data.images.crop_box), PIL LANCZOS resize"

    def describe(self) -> Dict[str, object]:
        return {"path": str(self.path), "kind": self.kind, "layout": self.layout, "count": self.count,
                "data_key": self.data_key, "preprocessing": self.preprocessing()}


def open_reference(path: str | Path) -> ReferenceSet:
    """Inspect a shard folder, image zip or image folder; a UserError if it is none of these."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--ref {p}: not found (give a shard folder with manifest.json, or a zip/folder of images)")
    if p.is_dir() and (p / "manifest.json").is_file():
        raw = (p / "manifest.json").read_bytes()
        try:
            man = json.loads(raw)
            shards = [(s["name"], int(s["count"])) for s in man["shards"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--ref {p}/manifest.json is not a valid shard manifest ({exc})") from None
        key = str(man.get("content_hash") or hashlib.sha256(raw).hexdigest())
        return ReferenceSet(p, "shards", str(man.get("layout", "folder")), f"shards:{key}", [n for n, _ in shards],
                            sum(c for _, c in shards), native_resolution=man.get("resolution"))
    if p.is_file() and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            names = sorted(n for n in zf.namelist() if n.lower().endswith(IMAGE_EXTS) and not n.startswith("__MACOSX"))
            if not names:
                raise UserError(f"--ref {p}: the zip holds no images ({', '.join(IMAGE_EXTS)})")
            layout = detect_layout(names, zf.read)
        return ReferenceSet(p, "zip", layout, f"zip:{hash_file(p, 'sha256')}", names, len(names), AUTO_CROP.get(layout, "center"))
    if p.is_dir():
        files = sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise UserError(f"--ref {p}: no manifest.json and no images inside")
        h = hashlib.sha256()
        for f in files:
            st = (p / f).stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        layout = detect_layout(files, lambda f: (p / f).read_bytes())
        return ReferenceSet(p, "folder", layout, f"folder:{h.hexdigest()}", files, len(files), AUTO_CROP.get(layout, "center"))
    raise UserError(f"--ref {p}: not a shard folder, zip or image folder")


def square_resize(img: Image.Image, resolution: int, crop: str = "center") -> np.ndarray:
    """The packer's crop box, then a LANCZOS resize to ``resolution``; uint8 HWC RGB."""
    img = img.convert("RGB")
    box = crop_box(img.width, img.height, crop)
    if img.size != (resolution, resolution) or box != (0.0, 0.0, float(img.width), float(img.height)):
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
    return np.asarray(img, dtype=np.uint8)


def _iter_shard_images(ref: ReferenceSet) -> Iterator[Image.Image]:
    """Every image of the shards in order, whatever ``dist-gan data pack --format`` wrote:
    ``.png`` or ``.npy`` per image, or ``.images.npy`` blocks (decoded as the training stream does)."""
    from dist_gan.data.stream import BLOCK_EXT, decode_block, decode_image

    for name in ref.items:
        shard = ref.path / name
        if not shard.is_file():
            raise UserError(f"shard {shard} listed in manifest.json is missing")
        with tarfile.open(shard) as tf:
            for member in tf:
                if not member.isfile():
                    continue
                if member.name.endswith(BLOCK_EXT):
                    yield from (Image.fromarray(img) for img in decode_block(tf.extractfile(member).read()))
                elif member.name.endswith(".png"):
                    yield Image.open(io.BytesIO(tf.extractfile(member).read()))
                elif member.name.endswith(".npy"):
                    yield Image.fromarray(decode_image(tf.extractfile(member).read(), "npy"))


def iter_images(ref: ReferenceSet, resolution: int) -> Iterator[np.ndarray]:
    """Reference images one by one as uint8 HWC RGB at ``resolution``, in the set's fixed order."""
    if ref.kind == "shards":
        for img in _iter_shard_images(ref):
            yield square_resize(img, resolution)
    elif ref.kind == "zip":
        with zipfile.ZipFile(ref.path) as zf:
            for name in ref.items:
                yield square_resize(Image.open(io.BytesIO(zf.read(name))), resolution, ref.crop)
    else:
        for name in ref.items:
            with Image.open(ref.path / name) as img:
                yield square_resize(img, resolution, ref.crop)


def load_images(ref: ReferenceSet, n: int, resolution: int, progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """The first ``n`` reference images, (n, R, R, 3) uint8; a UserError if the set is smaller."""
    if n > ref.count:
        raise UserError(f"--n-ref {n} but the reference {ref.path} holds only {ref.count} images")
    out = np.empty((n, resolution, resolution, 3), np.uint8)
    read = 0
    for i, img in zip(range(n), iter_images(ref, resolution)):
        out[i] = img
        read += 1
        if progress is not None:
            progress(1)
    if read < n:  # never hand back the uninitialised rest of ``out`` as images
        raise UserError(f"the reference {ref.path} yielded only {read} of the {n} images its listing promised")
    return out


def stats_key(ref: ReferenceSet, resolution: int, n: int, weights_sha1: str) -> str:
    """Cache key over data identity and preprocessing."""
    spec = {"v": STATS_VERSION, "data": ref.data_key, "resolution": resolution, "n": n,
            "crop": ref.crop, "weights_sha1": weights_sha1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def stats_path(cache_root: Path, key: str) -> Path:
    return cache_root / "refstats" / f"ref-{key}.npz"


def load_stats(path: Path) -> Optional[Dict[str, np.ndarray]]:
    """Cached {mu, sigma, feats} or None when absent/unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in ("mu", "sigma", "feats")}
    except (OSError, KeyError, ValueError):
        return None


def save_stats(path: Path, stats: Dict[str, np.ndarray]) -> None:
    """Atomic npz write (temp + rename) so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, mu=stats["mu"], sigma=stats["sigma"], feats=stats["feats"])
    os.replace(tmp, path)


def default_detector(ref: ReferenceSet) -> str:
    """"anime" for the anime layout, else OpenCV's Haar frontal-face cascade."""
    return "anime" if ref.layout == "anime" else "haar"
