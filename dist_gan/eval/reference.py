"""Reference images for evaluation, and their Inception statistics cached on disk.

A reference is a shard folder (``manifest.json`` + WebDataset tars of any packed
format, read through ``dist_gan.data.format.iter_images``) or a zip/folder of images.
Images are taken in a fixed order (manifest order, or sorted names), the first ``n``
of them, so a reference is reproducible. Loose images get the packer's crop for
their layout (``dist_gan.data.images``: CelebA's customary centred 108/178-width
face box, so 89x109 -> the box (17.5, 27.5, 71.5, 81.5); a centred short-side square
otherwise) and a PIL LANCZOS resize to the generator's resolution, exactly as
``dist-gan data pack`` makes training shards; shard images
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
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
from PIL import Image

from dist_gan.data.format import MANIFEST, ShardSet, open_shards
from dist_gan.data.format import iter_images as iter_shard_images
from dist_gan.data.images import AUTO_CROP, IMAGE_EXTS, crop_box, detect_layout
from dist_gan.data.remote import is_remote
from dist_gan.errors import UserError
from dist_gan.eval.detect import default_human_detector
from dist_gan.files import atomic_write, hash_file

STATS_VERSION = 1


@dataclass
class ReferenceSet:
    """Where reference images come from and what identifies their content."""

    path: Path | str  # a folder or zip, or the URL of a shard set
    kind: str  # "shards" | "zip" | "folder"
    layout: str  # "anime" | "celeba" | "ffhq" | "folder" (the packer's layout names)
    data_key: str  # content identity for the cache
    items: List[str] = field(default_factory=list)  # image names (zip/folder) or shard names
    count: int = 0
    crop: str = "shards"  # the packer's crop name for loose images
    native_resolution: Optional[int] = None  # shards only
    shards: Optional[ShardSet] = None  # shards only

    def preprocessing(self) -> str:
        if self.kind == "shards":
            return "shard images as packed (LANCZOS resize only if their size differs)"
        return f"crop {self.crop!r} (dist_gan.data.images.crop_box), PIL LANCZOS resize"

    def describe(self) -> Dict[str, object]:
        return {"path": str(self.path), "kind": self.kind, "layout": self.layout, "count": self.count,
                "data_key": self.data_key, "preprocessing": self.preprocessing()}


def open_reference(path: str | Path) -> ReferenceSet:
    """Inspect a shard folder (or a shard set's URL), image zip or image folder; a UserError if it is none of these."""
    if is_remote(str(path)):  # content identity: the manifest's hash of the shards, wherever they are served
        try:
            shards = open_shards(str(path))
        except UserError as exc:
            raise UserError(f"--ref {path}: {exc}") from None
        man = shards.manifest
        key = str(man.get("content_hash") or hashlib.sha256(json.dumps(man, sort_keys=True).encode()).hexdigest())
        return ReferenceSet(str(path), "shards", str(man.get("layout", "folder")), f"shards:{key}", list(shards.names),
                            shards.num_samples, native_resolution=shards.resolution, shards=shards)
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--ref {p}: not found (give a shard folder with manifest.json, or a zip/folder of images)")
    if p.is_dir() and (p / MANIFEST).is_file():
        try:
            shards = open_shards(p)
        except UserError as exc:
            raise UserError(f"--ref {p}: {exc}") from None
        man = shards.manifest
        key = str(man.get("content_hash") or hashlib.sha256((p / MANIFEST).read_bytes()).hexdigest())
        return ReferenceSet(p, "shards", str(man.get("layout", "folder")), f"shards:{key}",
                            [s.rsplit("/", 1)[-1] for s in shards.urls], shards.num_samples,
                            native_resolution=shards.resolution, shards=shards)
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


def iter_images(ref: ReferenceSet, resolution: int) -> Iterator[np.ndarray]:
    """Reference images one by one as uint8 HWC RGB at ``resolution``, in the set's fixed order."""
    if ref.kind == "shards":
        assert ref.shards is not None
        for arr in iter_shard_images(ref.shards):
            yield arr if arr.shape[:2] == (resolution, resolution) else square_resize(Image.fromarray(arr), resolution)
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
    """Atomic npz write so a concurrent reader never sees half a file."""
    atomic_write(path, lambda fh: np.savez(fh, mu=stats["mu"], sigma=stats["sigma"], feats=stats["feats"]))


def default_detector(ref: ReferenceSet) -> str:
    """"anime" for the anime layout, else the first human-face detector (MTCNN, MMOD, Haar) whose weights are installed."""
    return "anime" if ref.layout == "anime" else default_human_detector()
