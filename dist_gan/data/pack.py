"""Pack a folder or zip of face images into WebDataset tar shards plus a manifest.

Why shards: training streams ``shard-NNNNNN.tar`` files sequentially on every
rank, and the manifest's hashes let a run prove which data it saw. Packing is
therefore strictly deterministic: the same input and settings give
byte-identical shards and manifest (sorted input order, tar headers with
mtime 0 / uid 0 / empty owner names / mode 0644, PNGs at a fixed compression
level with no metadata, no timestamps anywhere).

The layout of a sample, a block and the manifest is ``dist_gan.data.format``'s
(``--format png``: one ``<key>.png`` + ``<key>.json`` per image; ``--format blocks``:
``block_size`` consecutive images per uint8 array member, so the loader pays
its per-sample tar and header overhead once per block instead of once per image).
Bad files are skipped and counted by reason (see ``dist_gan.data.images``);
on top of the decode reasons, ``unsafe_path`` counts zip members named
``../x`` or ``/x`` (never read) and ``duplicate`` counts files whose raw bytes
equal those of an image already written (first occurrence kept; identical
broken files all count under their own failure reason).

Hidden files (``.DS_Store``, anything under a dot-directory), ``__MACOSX/``
and ``Thumbs.db``/``desktop.ini`` are packaging debris: they are *ignored*
(``counts.ignored``) and not part of ``seen``. Every other file is attempted
whatever its extension, so ``seen == written + sum(skipped)`` always holds.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
from rich.console import Console

from dist_gan import __version__
from dist_gan.data.format import (BLOCKS, FORMAT, MANIFEST, PNG, SHARD_RE, check_image_format, sample_key, shard_index,
                                  shard_name, write_block, write_sample)
from dist_gan.data.images import AUTO_CROP, CROPS, detect_layout, work
from dist_gan.errors import UserError
from dist_gan.files import atomic_write_json, fsync_dir
from dist_gan.progress import progress_bar

IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
# Settings that must match for an existing OUT to be rewritten without --overwrite.
SETTING_KEYS = ("format", "source", "layout", "resolution", "crop", "min_size", "shard_size", "limit", "image_format", "block_size",
                "holdout")
SETTING_DEFAULTS = {"holdout": 0}
"""What a manifest written before a setting existed meant by it."""
HOLDOUT_DIR = "holdout"
"""Sub-folder of a pack holding the images set aside with ``holdout``: its own shards and manifest."""
DEFAULT_BLOCK_SIZE = 256
POOL_MIN_FILES = 256  # below this a process pool costs more than it saves


# ------------------------------------------------------------------ sources
@dataclass(frozen=True)
class Entry:
    """One file of the source: relative POSIX path, and whether it is safe to read."""

    path: str
    safe: bool = True


def is_ignored(path: str) -> bool:
    """Hidden files/dirs, macOS ``__MACOSX`` resource forks, Thumbs.db/desktop.ini."""
    parts = path.replace("\\", "/").split("/")
    if any(p.startswith(".") and p not in (".", "..") for p in parts):
        return True
    return "__MACOSX" in parts or parts[-1].lower() in IGNORED_NAMES


def is_unsafe(name: str) -> bool:
    """True for zip member names that are absolute or climb out of the root with ``..``."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return True
    return ".." in PurePosixPath(norm).parts


class Source:
    """A folder or a zip archive (recognised by content, not name), listed in sorted path order.

    Zip members are read into memory on demand; nothing is ever extracted.
    """

    def __init__(self, src: Path, exclude: Optional[Path] = None) -> None:
        if not src.exists():
            raise UserError(f"source {src} does not exist")
        self.src = src
        self.zip: Optional[zipfile.ZipFile] = None
        self.ignored = 0
        if src.is_dir():
            self.entries = self._list_dir(src, exclude)
        elif zipfile.is_zipfile(src):
            try:
                self.zip = zipfile.ZipFile(src)
                self.entries = self._list_zip(self.zip)
            except (zipfile.BadZipFile, OSError) as exc:
                raise UserError(f"cannot read zip archive {src}: {exc}") from None
        else:
            raise UserError(f"source {src} is neither a folder nor a zip archive")

    def _list_dir(self, root: Path, exclude: Optional[Path]) -> List[Entry]:
        skip_dir = exclude.resolve() if exclude is not None else None
        paths: List[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            if skip_dir is not None:  # packing a folder into a subfolder of itself
                dirnames[:] = [d for d in dirnames if Path(dirpath, d).resolve() != skip_dir]
            for fn in filenames:
                rel = Path(dirpath, fn).relative_to(root).as_posix()
                if is_ignored(rel):
                    self.ignored += 1
                else:
                    paths.append(rel)
        return [Entry(p) for p in sorted(paths)]

    def _list_zip(self, zf: zipfile.ZipFile) -> List[Entry]:
        entries: List[Entry] = []
        for info in zf.infolist():
            if info.is_dir():
                continue
            if is_unsafe(info.filename):
                entries.append(Entry(info.filename, safe=False))
            elif is_ignored(info.filename):
                self.ignored += 1
            else:
                entries.append(Entry(info.filename))
        return sorted(entries, key=lambda e: e.path)

    def read(self, path: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(path)
        return (self.src / path).read_bytes()

    def try_read(self, path: str) -> Optional[bytes]:
        """The file's bytes, or None if it cannot be read (counted as ``unreadable``)."""
        try:
            return self.read(path)
        except (OSError, zipfile.BadZipFile, EOFError, ValueError):
            return None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


# ------------------------------------------------------------------ output
class ShardWriter:
    """Writes samples into ``shard-NNNNNN.tar`` files of at most ``shard_size`` images.

    Each shard is written to ``<name>.tmp``, fsynced, hashed and renamed into place,
    so a crash never leaves a half-written file under a shard name. Member names and
    layout are ``dist_gan.data.format``'s.

    ``--format png``: ``add`` takes PNG bytes. ``--format blocks`` (``block_size`` set):
    ``add`` takes uint8 HxWx3 arrays, gathered into blocks of ``block_size`` images;
    a block never spans two shards, so shard counts stay exact.
    """

    def __init__(self, out: Path, shard_size: int, block_size: Optional[int] = None) -> None:
        self.out = out
        self.shard_size = shard_size
        self.block_size = block_size
        self.shards: List[Dict[str, object]] = []
        self._file: Optional[IO[bytes]] = None
        self._tar: Optional[tarfile.TarFile] = None
        self._count = 0
        self._block: List[Tuple[str, np.ndarray, dict]] = []

    def _tmp(self) -> Path:
        return self.out / (shard_name(len(self.shards)) + ".tmp")

    def _open(self) -> tarfile.TarFile:
        if self._tar is None:
            self._file = open(self._tmp(), "wb")
            self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        return self._tar

    def add(self, key: str, image: Union[bytes, np.ndarray], meta: dict) -> None:
        if self.block_size:
            assert isinstance(image, np.ndarray), "blocks are stacked from uint8 arrays"
            self._block.append((key, image, meta))
            if len(self._block) >= self.block_size:
                self._flush_block()
        else:
            assert isinstance(image, bytes), "png samples are encoded bytes"
            write_sample(self._open(), key, image, meta)
        self._count += 1
        if self._count >= self.shard_size:
            self._finish()

    def _flush_block(self) -> None:
        if not self._block:
            return
        keys, images, metas = zip(*self._block)
        write_block(self._open(), keys, images, metas)
        self._block = []

    def _finish(self) -> None:
        self._flush_block()
        assert self._tar is not None and self._file is not None
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        tmp, name = self._tmp(), shard_name(len(self.shards))
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        os.replace(tmp, self.out / name)
        fsync_dir(self.out)
        self.shards.append({"name": name, "count": self._count, "sha256": digest})
        self._tar, self._file, self._count = None, None, 0

    def close(self) -> List[Dict[str, object]]:
        if self._count:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress (on error or Ctrl-C)."""
        self._block = []
        if self._file is not None:
            self._file.close()
            self._tmp().unlink(missing_ok=True)
        self._tar, self._file = None, None


def _is_our_temp(name: str) -> bool:
    """A temp file an interrupted pack may leave: ``shard-NNNNNN.tar.tmp`` or the manifest's atomic-write temp."""
    if name.endswith(".tmp") and (SHARD_RE.match(name[:-4]) or name == MANIFEST + ".tmp"):
        return True
    return name.startswith(f".{MANIFEST}.tmp-")  # dist_gan.files.temp_path


def _describe_diff(old: dict, new: dict) -> str:
    diffs = [f"{k} {old.get(k, SETTING_DEFAULTS.get(k))!r} -> {new.get(k)!r}" for k in SETTING_KEYS
             if old.get(k, SETTING_DEFAULTS.get(k)) != new.get(k)]
    return ", ".join(diffs)


def _is_our_holdout(path: Path) -> bool:
    """``OUT/holdout`` written by ``pack(holdout=N)`` (its manifest names the pack it was set aside from)."""
    try:
        return path.name == HOLDOUT_DIR and "holdout_of" in json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _prepare_out(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to clobber a different pack or foreign files, then clear our stale manifest/temps.

    The old manifest is removed *before* any shard is replaced, so a reader never
    sees a manifest that describes shards which are half rewritten.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.exists() and not overwrite:
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise UserError(f"{manifest_path} is not a dist_gan shard manifest; pass --overwrite to replace it")
        if any(old.get(k, SETTING_DEFAULTS.get(k)) != settings.get(k) for k in SETTING_KEYS):
            raise UserError(
                f"{out} already holds shards packed with different settings ({_describe_diff(old, settings)}); "
                "pass --overwrite or choose another output folder"
            )
    if not overwrite:
        foreign = sorted(p.name for p in out.iterdir() if p.name != MANIFEST and not SHARD_RE.match(p.name)
                         and not _is_our_temp(p.name) and not _is_our_holdout(p))
        if foreign:
            raise UserError(
                f"output {out} is not empty ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                "pass --overwrite or choose an empty folder"
            )
    manifest_path.unlink(missing_ok=True)
    for p in out.iterdir():
        if _is_our_temp(p.name):
            p.unlink()
    fsync_dir(out)


def _remove_stale_shards(out: Path, keep: int) -> None:
    """Delete shard files from an earlier, longer pack that the new manifest does not list."""
    for p in out.iterdir():
        index = shard_index(p.name)
        if index is not None and index >= keep:
            p.unlink()


# ------------------------------------------------------------------ pack
def _summary(written: int, skipped: Dict[str, int], ignored: int, nshards: int, out: Path) -> str:
    total = sum(skipped.values())
    text = f"written {written}, skipped {total}"
    if total:
        text += ": " + ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()))
    if ignored:
        text += f" (ignored {ignored} hidden/system files)"
    return text + f" -> {out} ({nshards} shard{'s' if nshards != 1 else ''})"


def _results(jobs: Iterator[tuple], workers: int, n: int) -> Tuple[Iterator[tuple], Optional[object]]:
    """Map ``work`` over the jobs in order, on a process pool when that pays off."""
    if workers <= 1 or n < POOL_MIN_FILES:
        return map(work, jobs), None
    # fork: workers only use PIL, and it spares the __main__-guard trap of spawn.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    pool = multiprocessing.get_context(method).Pool(workers)
    return pool.imap(work, jobs, chunksize=8), pool


def pack(
    src: Path,
    out: Path,
    resolution: int = 64,
    crop: str = "auto",
    shard_size: int = 2000,
    progress: bool = True,
    limit: Optional[int] = None,
    min_size: Optional[int] = None,
    overwrite: bool = False,
    workers: Optional[int] = None,
    image_format: str = PNG,
    block_size: int = DEFAULT_BLOCK_SIZE,
    holdout: int = 0,
) -> dict:
    """Pack ``src`` (folder or zip) into ``out/shard-*.tar`` + ``out/manifest.json``; return the manifest.

    ``crop``: ``auto`` (CelebA crop for the celeba layout, centre square otherwise),
    ``celeba`` (centred 108/178-of-width square: 108x108 of a 178x218 original,
    54x54 of an 89x109 half-size copy), ``center`` (largest centred square) or
    ``none`` (whole image squashed to a square). The crop is then resized to
    ``resolution`` with LANCZOS.
    ``min_size``: smallest crop side accepted (else ``too_small``); defaults to
    ``resolution // 2``, i.e. at most 2x upscaling, which admits the 54 px
    CelebA half-size crop at 64 px but not thumbnails that would be mush.
    ``limit``: pack only the first N files in sorted path order.
    ``workers``: decode/encode processes (default ``min(2, cpu_count)``); the
    output does not depend on it.
    ``image_format``: ``png`` or ``blocks`` (``block_size`` images per array); the
    removed ``npy`` is refused with a pointer to ``blocks``, which replaces it.
    ``holdout``: set this many images aside in ``out/holdout`` (its own shards and manifest,
    which training never reads), for FID against images the generator never saw. They are
    the files with the lowest sha256 of their path (spread over the set, the same on every
    machine); an image identical to a held-out one is skipped from training as a duplicate.
    """
    src, out = Path(src), Path(out)
    check_image_format(image_format)
    if image_format == BLOCKS and block_size < 1:
        raise UserError(f"block size must be at least 1, got {block_size}")
    if crop not in CROPS:
        raise UserError(f"unknown crop {crop!r}; choose one of {', '.join(CROPS)}")
    if resolution < 4 or resolution > 4096:
        raise UserError(f"resolution must be between 4 and 4096, got {resolution}")
    if shard_size < 1:
        raise UserError(f"shard size must be at least 1, got {shard_size}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    if holdout < 0:
        raise UserError(f"holdout must be >= 0 (0 = none), got {holdout}")
    min_size = resolution // 2 if min_size is None else min_size
    if min_size < 1:
        raise UserError(f"min size must be at least 1, got {min_size}")
    workers = min(2, os.cpu_count() or 1) if workers is None else workers

    source = Source(src, exclude=out)
    try:
        entries = source.entries[:limit] if limit is not None else source.entries
        if not entries:
            raise UserError(f"source {src} holds no files to pack")
        layout = detect_layout([e.path for e in entries if e.safe], source.read)
        resolved_crop = AUTO_CROP[layout] if crop == "auto" else crop
        settings = {
            "format": FORMAT,
            "source": str(src.resolve()),
            "layout": layout,
            "resolution": resolution,
            "crop": resolved_crop,
            "min_size": min_size,
            "shard_size": shard_size,
            "limit": limit,
            "image_format": image_format,
            "block_size": block_size if image_format == BLOCKS else None,
            "holdout": holdout,
        }
        train, held = split_holdout(entries, holdout)
        _prepare_out(out, settings, overwrite)
        seen: set = set()
        if held:
            side_settings = {**settings, "holdout": 0, "holdout_of": str(out.resolve())}
            _prepare_out(out / HOLDOUT_DIR, side_settings, overwrite=True)  # the pack's own sub-folder: checked above
            side = _pack_entries(source, held, out / HOLDOUT_DIR, side_settings, progress, workers, seen, label="held out")
            settings["holdout_set"] = {"path": HOLDOUT_DIR, "num_samples": side["num_samples"],
                                       "content_hash": side["content_hash"], "rule": HOLDOUT_RULE}
        elif _is_our_holdout(out / HOLDOUT_DIR):
            shutil.rmtree(out / HOLDOUT_DIR)  # a pack without one must not leave an earlier pack's behind
        return _pack_entries(source, train, out, settings, progress, workers, seen)
    finally:
        source.close()


HOLDOUT_RULE = "the files with the lowest sha256 of their relative path; duplicates of them are skipped from training"


def split_holdout(entries: List[Entry], n: int) -> tuple[List[Entry], List[Entry]]:
    """(training entries, held-out entries): the ``n`` safe files with the lowest sha256 of their path, in path order."""
    if n <= 0:
        return entries, []
    safe = [e for e in entries if e.safe]
    if n >= len(safe):
        raise UserError(f"--holdout {n} leaves no training images: the source holds {len(safe)} files")
    picked = set(sorted((hashlib.sha256(e.path.encode()).hexdigest(), e.path) for e in safe)[:n])
    held = {p for _, p in picked}
    return [e for e in entries if e.path not in held], [e for e in entries if e.path in held]


def _pack_entries(source: Source, entries: List[Entry], out: Path, settings: dict, progress: bool, workers: int,
                  seen_hashes: Optional[set] = None, label: str = "packed") -> dict:
    res, crop, min_size = settings["resolution"], settings["crop"], settings["min_size"]
    safe = [e for e in entries if e.safe]
    blocks = settings["image_format"] == BLOCKS
    encoding = "rgb" if blocks else "png"  # blocks are stacked by the writer from raw per-image pixels
    jobs = ((source.try_read(e.path), res, crop, min_size, encoding) for e in safe)
    skipped: Dict[str, int] = {}
    written = 0
    seen_hashes = set() if seen_hashes is None else seen_hashes  # shared with the held-out pack: no image in both
    writer = ShardWriter(out, settings["shard_size"], block_size=settings.get("block_size"))
    console = Console(stderr=True, highlight=False)
    results, pool = _results(jobs, workers, len(safe))  # pool before the progress thread starts
    try:
        with progress_bar(console=console, enabled=progress, transient=True) as bar:
            task = bar.add_task("packing", total=len(entries))
            for entry in entries:
                reason: Optional[str]
                if not entry.safe:
                    reason = "unsafe_path"
                else:
                    digest, reason, encoded = next(results)
                    if reason is None and digest in seen_hashes:
                        reason = "duplicate"
                if reason is None:
                    seen_hashes.add(digest)
                    image = np.frombuffer(encoded, np.uint8).reshape(res, res, 3) if blocks else encoded
                    writer.add(sample_key(written), image, {"src": entry.path})
                    written += 1
                else:
                    skipped[reason] = skipped.get(reason, 0) + 1
                bar.advance(task)
        shards = writer.close()
    except BaseException:
        writer.abort()
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    summary = _summary(written, skipped, source.ignored, len(shards), out)
    if written == 0:
        _remove_stale_shards(out, 0)
        raise UserError(f"no usable images in {settings['source']}: {summary}")
    _remove_stale_shards(out, len(shards))
    content = hashlib.sha256("".join(s["sha256"] + "\n" for s in shards).encode("ascii")).hexdigest()
    manifest = dict(settings)
    manifest.update(
        {
            "counts": {
                "seen": len(entries),
                "written": written,
                "skipped": dict(sorted(skipped.items())),
                "ignored": source.ignored,
            },
            "shards": shards,
            "num_samples": written,
            "content_hash": content,
            "dist_gan_version": __version__,
        }
    )
    atomic_write_json(out / MANIFEST, manifest, indent=2, sort_keys=True)  # last: a manifest means a finished pack
    console.print(f"[green]{label}[/] {settings['layout']}: {summary}", soft_wrap=True)
    return manifest

