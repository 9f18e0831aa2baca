"""The on-disk shard format: what ``dist-gan data pack`` writes and every reader reads, in one place.

Why one module: the packer, the training stream, the evaluator's reference, super-resolution
training and the benchmarks all read shards. When each knew the member names itself, a new
format silently broke the readers nobody updated (superres read only ``.png`` members and
failed on block shards). Now they all take names, decoders and the one sequential reader,
``iter_images``, from here.

A packed folder (schema ``dist_gan.shards/1``):

* ``manifest.json``, written last and atomically, so a folder with a manifest is a finished
  pack: ``{"format": "dist_gan.shards/1", "image_format": "png" | "blocks", "resolution": R,
  "shards": [{"name", "count", "sha256"}, ...], "num_samples", "content_hash", ...}``.
  ``count`` is the number of *images* in a shard, whatever the format.
* ``shard-NNNNNN.tar`` (6-digit index from 0): USTAR tars, members in sample order, each with
  fixed anonymous headers (mtime 0, uid/gid 0, no owner names, mode 0644), so packs are
  byte-identical from run to run.

A sample (``png``): ``<key>.png``, an 8-bit RGB R x R PNG, and ``<key>.json``,
``{"src": "<path inside the source>"}``; ``key`` is the 9-digit running index of written
images (``000000000``, ``000000001``, ...).

A block (``blocks``): ``<first key>.images.npy``, a (N, R, R, 3) uint8 ``.npy`` array of N
consecutive images, and ``<first key>.json``, the list of their N metadata dicts, each with
its own ``key``. A block never spans two shards. Blocks replace the former per-image ``npy``
format: the loader pays the tar and header cost once per block, not once per image
(18.7k img/s against 7.6k at about the same size, ``benchmarks/results/loader_cpu.json``).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from dist_gan.data.remote import HashingReader, RetryPolicy, is_remote, member_url, open_url, read_small
from dist_gan.errors import UserError

SCHEMA = "dist_gan.shards"
VERSION = 1
FORMAT = f"{SCHEMA}/{VERSION}"
MANIFEST = "manifest.json"
SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")

PNG, BLOCKS = "png", "blocks"
IMAGE_FORMATS = (PNG, BLOCKS)
# Formats older packers wrote and this one no longer reads -> the format that replaces them.
REMOVED_FORMATS = {"npy": BLOCKS}

KEY_DIGITS = 9
IMAGE_EXT = "png"  # the member extension ``--format png`` writes
BLOCK_EXT = "images.npy"  # a (N, H, W, 3) uint8 block of images (``--format blocks``)
META_EXT = "json"
# Single-image members a reader decodes: the packer writes png; hand-made WebDataset shards may hold the others.
IMAGE_EXTS = (IMAGE_EXT, "jpg", "jpeg", "webp")


# ------------------------------------------------------------------ names
def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def shard_index(name: str) -> Optional[int]:
    """The index of a ``shard-NNNNNN.tar`` name, or None for any other file name."""
    m = SHARD_RE.match(name)
    return int(m.group(1)) if m else None


def sample_key(index: int) -> str:
    """The key of the ``index``-th written image (a block is keyed by its first image)."""
    return f"{index:0{KEY_DIGITS}d}"


def member_name(key: str, ext: str) -> str:
    return f"{key}.{ext}"


def split_member(name: str) -> Tuple[str, str]:
    """(key, extension) of a tar member, split at the first dot of its base name as WebDataset does."""
    head, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{head}/{key}" if head else key), ext


def check_image_format(image_format: str) -> str:
    """``image_format`` if the packer writes it; else a one-line UserError naming the valid ones."""
    if image_format in REMOVED_FORMATS:
        raise UserError(
            f"--format {image_format} was removed: use --format {REMOVED_FORMATS[image_format]}, which replaces it "
            f"(faster to load at about the same size); valid formats: {', '.join(IMAGE_FORMATS)}"
        )
    if image_format not in IMAGE_FORMATS:
        raise UserError(f"unknown image format {image_format!r}; choose one of {', '.join(IMAGE_FORMATS)}")
    return image_format


# ------------------------------------------------------------------ writing
def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add one regular file with fixed, anonymous metadata so the shard bytes never vary."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    tar.addfile(info, io.BytesIO(data))


def encode_meta(meta: object) -> bytes:
    """A sample's (dict) or block's (list of dicts) metadata, with sorted keys so bytes are stable."""
    return json.dumps(meta, sort_keys=True).encode("utf-8")


def encode_block(images: Sequence[np.ndarray]) -> bytes:
    """N uint8 HxWx3 images -> the ``.images.npy`` bytes of one (N, H, W, 3) array."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(np.stack(images), dtype=np.uint8), allow_pickle=False)
    return buf.getvalue()


def write_sample(tar: tarfile.TarFile, key: str, png: bytes, meta: dict) -> None:
    """One ``--format png`` sample: ``<key>.png`` + ``<key>.json``."""
    add_member(tar, member_name(key, IMAGE_EXT), png)
    add_member(tar, member_name(key, META_EXT), encode_meta(meta))


def write_block(tar: tarfile.TarFile, keys: Sequence[str], images: Sequence[np.ndarray], metas: Sequence[dict]) -> None:
    """One block: ``<first key>.images.npy`` + ``<first key>.json`` (each image's metadata plus its key)."""
    add_member(tar, member_name(keys[0], BLOCK_EXT), encode_block(images))
    add_member(tar, member_name(keys[0], META_EXT), encode_meta([dict(m, key=k) for k, m in zip(keys, metas)]))


# ------------------------------------------------------------------ decoding
def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (PNG, or JPEG/WebP in hand-made shards) -> uint8 HxWx3 RGB array."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("RGB"))
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3, got {arr.dtype} {arr.shape}")
    return arr


def decode_block(data: bytes) -> np.ndarray:
    """A ``.images.npy`` member -> uint8 (N, H, W, 3) array."""
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3 or arr.shape[0] == 0:
        raise ValueError(f"expected uint8 NxHxWx3, got {arr.dtype} {arr.shape}")
    return arr


def decode_sample(sample: dict) -> np.ndarray:
    """The image of a WebDataset sample dict (extension -> bytes); ValueError if it holds none."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise ValueError(f"no image in sample {sample.get('__key__')}")
    return decode_image(sample[ext])


def decode_block_sample(sample: dict) -> np.ndarray:
    """The image block of a WebDataset sample dict; ValueError if it holds none."""
    if BLOCK_EXT not in sample:
        raise ValueError(f"no image block in sample {sample.get('__key__')}")
    return decode_block(sample[BLOCK_EXT])


def block_size_hint(sample: dict) -> int:
    """How many images a (possibly corrupt) block sample claimed: its metadata list's length, else 1."""
    try:
        meta = json.loads(sample[META_EXT])
        return len(meta) if isinstance(meta, list) and meta else 1
    except Exception:  # noqa: BLE001 - the metadata may be as broken as the block
        return 1


# ------------------------------------------------------------------ reading
@dataclass(frozen=True)
class ShardSet:
    """A packed data set: its shard files and what the manifest says about them."""

    root: Path | str  # the folder, or the URL / pipe: command the shards are read from
    urls: List[str]
    counts: List[int]
    resolution: int
    manifest: dict
    sha256: Tuple[Optional[str], ...] = ()  # per shard, where the manifest has it
    names: Tuple[str, ...] = ()  # per shard: its file name (shard-NNNNNN.tar)

    @property
    def remote(self) -> bool:
        return is_remote(str(self.root))

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    @property
    def image_format(self) -> str:
        return str(self.manifest.get("image_format", PNG))

    @property
    def blocks(self) -> bool:
        """True when samples are blocks of images (``--format blocks``), not single images."""
        return self.image_format == BLOCKS


def repack_command(root: Path, manifest: dict, image_format: str = BLOCKS) -> str:
    return f"dist-gan data pack {manifest.get('source') or 'SRC'} {root} --format {image_format} --overwrite"


def open_shards(path: str | Path, policy: RetryPolicy = RetryPolicy()) -> ShardSet:
    """Read ``manifest.json`` of a shard folder made by ``dist-gan data pack``, or of one behind a URL
    (``http(s)://``, ``pipe:COMMAND`` with ``{name}``, ``s3://``, ``gs://``); a UserError if it is not one we read."""
    if not str(path):
        raise UserError("no data given: pass data=<shard folder> (make one with `dist-gan data pack SRC OUT`)")
    if is_remote(str(path)):
        location = str(path)
        manifest_url = member_url(location, MANIFEST)
        text = read_small(manifest_url, policy, what="shard manifest")
        return _from_manifest(location, manifest_url, lambda: text.decode("utf-8"), check_files=False)
    root = Path(path)
    if not root.exists():
        raise UserError(f"{root} does not exist; give a shard folder made by `dist-gan data pack SRC OUT`")
    if root.is_file() and zipfile.is_zipfile(root):
        raise UserError(f"{root} is a zip of images, not a shard folder; pack it first: "
                        f"`dist-gan data pack {root} {root.with_suffix('')}-shards`, then data={root.with_suffix('')}-shards")
    manifest_path = root / MANIFEST if root.is_dir() else root
    if not manifest_path.is_file():
        raise UserError(f"{root} has no {MANIFEST}: it is not a shard folder; make one with `dist-gan data pack {root} OUT`")
    what = "is not a readable shard manifest" if manifest_path.name == MANIFEST else "is neither a shard folder nor a manifest"
    return _from_manifest(manifest_path.parent, str(manifest_path), lambda: manifest_path.read_text(encoding="utf-8"),
                          check_files=True, unreadable=what)


def _from_manifest(root: Path | str, manifest_path: str, read: Callable[[], str], check_files: bool,
                   unreadable: str = "is not a readable shard manifest") -> ShardSet:
    """Parse and check a manifest's text: the one place that decides what a valid pack is, local or remote."""
    try:
        manifest = json.loads(read())
    except (OSError, ValueError) as exc:
        raise UserError(f"{manifest_path} {unreadable} ({type(exc).__name__}); "
                        "make shards with `dist-gan data pack SRC OUT` and pass data=OUT") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{manifest_path} is not a shard manifest; repack with `dist-gan data pack`")
    if manifest.get("format", FORMAT) != FORMAT:
        raise UserError(f"{manifest_path} has format {manifest.get('format')!r}, this dist_gan reads {FORMAT!r}")
    image_format = str(manifest.get("image_format", PNG))
    if image_format in REMOVED_FORMATS:
        raise UserError(
            f"{root} was packed with --format {image_format}, which dist_gan no longer reads; "
            f"repack it: `{repack_command(Path(str(root)), manifest, REMOVED_FORMATS[image_format])}`"
        )
    if image_format not in IMAGE_FORMATS:
        raise UserError(f"{manifest_path} has unknown image_format {image_format!r}; expected one of {', '.join(IMAGE_FORMATS)}")
    try:
        shards = [(str(s["name"]), int(s["count"]), s.get("sha256")) for s in manifest.get("shards", []) if s.get("count", 0) > 0]
        resolution = int(manifest["resolution"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{manifest_path} is not a valid shard manifest (bad or missing {exc}); repack it") from None
    if not shards:
        raise UserError(f"{manifest_path} lists no non-empty shards")
    bad_names = [name for name, _, _ in shards if shard_index(name) is None]
    if bad_names:  # names become paths and URLs: never let a manifest point outside its pack
        raise UserError(f"{manifest_path} lists shards not named shard-NNNNNN.tar: {', '.join(bad_names[:3])}")
    if check_files:
        missing = [name for name, _, _ in shards if not (Path(root) / name).is_file()]
        if missing:
            raise UserError(f"shards listed in {manifest_path} are missing: {', '.join(missing[:5])}")
    return ShardSet(
        root=root,
        urls=[member_url(str(root), name) for name, _, _ in shards],
        counts=[count for _, count, _ in shards],
        resolution=resolution,
        manifest=manifest,
        sha256=tuple(str(sha) if sha else None for _, _, sha in shards),
        names=tuple(name for name, _, _ in shards),
    )


def _member_images(url: str, name: str, data: bytes) -> Sequence[np.ndarray]:
    """The images one tar member holds: a block's N, a single image's 1, none for metadata."""
    ext = split_member(name)[1]
    try:
        if ext == BLOCK_EXT:
            return decode_block(data)
        if ext in IMAGE_EXTS:
            return [decode_image(data)]
    except Exception as exc:  # noqa: BLE001 - PIL and numpy raise many kinds
        raise UserError(f"{url}: member {name} cannot be decoded ({exc}); the shard is corrupt, repack it") from None
    return []


def iter_images(shards: ShardSet, limit: Optional[int] = None) -> Iterator[np.ndarray]:
    """Every image of ``shards`` as uint8 HxWx3, in manifest order (shard by shard, member order; each image
    of a block in turn), the first ``limit`` only if given. The one sequential reader: evaluation references,
    super-resolution training and the benchmarks all read shards through it, whatever the format.

    A member that does not decode is a UserError, not a skip: a sequential reader's images must be exact.
    """
    if limit is not None and limit <= 0:
        return
    n = 0
    for url, sha in zip(shards.urls, shards.sha256 or [None] * len(shards.urls)):
        try:
            stream = open_url(url, RetryPolicy())
            if sha:  # checked when the shard is read to its end
                stream = io.BufferedReader(HashingReader(stream, sha, url))
            with stream, tarfile.open(fileobj=stream, mode="r|") as tar:  # streaming: members in order, no index
                for member in tar:
                    if not member.isfile():
                        continue
                    fh = tar.extractfile(member)
                    for img in _member_images(url, member.name, fh.read() if fh is not None else b""):
                        yield img
                        n += 1
                        if limit is not None and n >= limit:
                            return
                stream.read()  # past the tar's end-of-archive blocks, so the hash covers the whole file
        except (tarfile.TarError, OSError) as exc:
            raise UserError(f"cannot read shard {url} ({exc}); it is corrupt, truncated or unreachable; repack or re-publish it") from None
