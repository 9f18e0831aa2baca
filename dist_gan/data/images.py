"""Detect a source's layout, then decode, validate, crop and re-encode each image.

Everything here is a pure function of the input bytes, so the packer can run it
in worker processes and still produce byte-identical shards on every run.

Rules (each failure is a *reason string* the packer counts, never an exception):

* ``not_image``  PIL cannot even identify a format from the bytes (random bytes
  named ``.jpg``, a text file, ...).
* ``corrupt``    the header is recognised but the full decode fails
  (truncated JPEG, PNG with a broken chunk/CRC). ``img.load()`` forces the full
  decode; we rely on PIL's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``.
* ``too_large``  PIL's decompression-bomb guard refused the image.
* ``mode:<MODE>`` anything that is not plain 8-bit RGB, e.g. ``mode:L``
  (grayscale), ``mode:1``, ``mode:P`` (palette), ``mode:CMYK``, ``mode:RGBA``,
  ``mode:I;16`` (16-bit gray) and ``mode:RGB;16`` (16-bit-per-channel RGB PNG,
  which PIL would silently truncate to 8 bits). Converting these would guess at
  colour handling (alpha background, CMYK profile, gamma), so we skip them.
* ``too_small``  the crop box is shorter than ``min_size`` pixels on a side.
* ``unreadable`` the file could not be read (permissions, zip CRC error).
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

CROPS = ("auto", "celeba", "center", "none")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# CelebA "aligned & cropped" originals are 178x218; the customary face crop
# (DCGAN et al.) is the centred 108x108 box, i.e. left=35, top=55, right=143,
# bottom=163. Half-size copies (89x109) get the same box scaled by width/178.
CELEBA_W, CELEBA_H, CELEBA_CROP = 178, 218, 108

PNG_COMPRESS_LEVEL = 6
# What ``process`` returns for a good image: a PNG (``--format png``), or its raw uint8
# HxWx3 pixels, which the shard writer stacks into blocks (``--format blocks``).
ENCODINGS = ("png", "rgb")

Box = Tuple[float, float, float, float]


def crop_box(width: int, height: int, crop: str) -> Box:
    """The (left, top, right, bottom) source box that becomes the square output.

    * ``celeba``: square of side ``108 * width / 178`` centred in the image, so
      178x218 -> (35, 55, 143, 163) and 89x109 -> (17.5, 27.5, 71.5, 81.5).
      Fractional edges are honoured exactly by ``Image.resize(box=...)``. The
      side is clamped to ``min(width, height)`` for images of other shapes.
    * ``center``: the largest centred square (side ``min(width, height)``).
    * ``none``: the whole image; it is squashed to a square (aspect changes).
    """
    if crop == "none":
        return (0.0, 0.0, float(width), float(height))
    if crop == "celeba":
        side = min(CELEBA_CROP * width / CELEBA_W, width, height)
    elif crop == "center":
        side = float(min(width, height))
    else:
        raise ValueError(f"unknown crop {crop!r}")
    left = (width - side) / 2
    top = (height - side) / 2
    return (left, top, left + side, top + side)


def _rawmode(img: Image.Image) -> str:
    """The decoder's raw mode, which reveals 16-bit data PIL reports as 'RGB'."""
    tile = getattr(img, "tile", None) or []
    if not tile:
        return ""
    args = tile[0].args if hasattr(tile[0], "args") else tile[0][3]
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def mode_of(img: Image.Image) -> str:
    """The image mode, with 16-bit-per-channel RGB(A) spelled ``RGB;16``/``RGBA;16``."""
    raw = _rawmode(img)
    if img.mode in ("RGB", "RGBA") and ";16" in raw:
        return f"{img.mode};16"
    return img.mode


def process(
    data: bytes, resolution: int, crop: str, min_size: int, compress_level: int = PNG_COMPRESS_LEVEL,
    encoding: str = "png",
) -> Tuple[Optional[str], bytes]:
    """Turn raw file bytes into a ``resolution``-square RGB PNG (``encoding="rgb"``: its raw pixels).

    Returns ``(None, encoded_bytes)`` on success or ``(reason, b"")`` when skipped.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return "too_large", b""
    except (UnidentifiedImageError, ValueError, TypeError):
        return "not_image", b""
    except Exception:  # noqa: BLE001 - a recognised-but-broken header
        return "corrupt", b""
    try:
        with img:
            mode = mode_of(img)  # before load(): load() drops the 16-bit rawmode
            img.load()
            if mode != "RGB":
                return f"mode:{mode}", b""
            img = ImageOps.exif_transpose(img)
            box = crop_box(img.width, img.height, crop)
            if min(box[2] - box[0], box[3] - box[1]) < min_size:
                return "too_small", b""
            out = img.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
    except Image.DecompressionBombError:
        return "too_large", b""
    except Exception:  # noqa: BLE001 - PIL raises OSError, SyntaxError, zlib.error, ...
        return "corrupt", b""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    return None, encode_rgb(out) if encoding == "rgb" else encode_png(out, compress_level)


def encode_rgb(img: Image.Image) -> bytes:
    """The raw uint8 HxWx3 pixels (row-major): cheap to ship from a worker, stacked into blocks by the writer."""
    return np.asarray(img.convert("RGB"), dtype=np.uint8).tobytes()


def encode_png(img: Image.Image, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """Deterministic 8-bit RGB PNG: fixed compression, no metadata chunks (no ICC, dpi, text)."""
    clean = Image.frombytes("RGB", img.size, img.convert("RGB").tobytes())
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=compress_level, optimize=False)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def work(item: Tuple[Optional[bytes], int, str, int, str]) -> Tuple[str, Optional[str], bytes]:
    """Pool entry point: (bytes, resolution, crop, min_size, encoding) -> (sha256 of input, reason, encoded image).

    ``None`` bytes mean the file could not be read at all (``unreadable``).
    """
    data, resolution, crop, min_size, encoding = item
    if data is None:
        return "", "unreadable", b""
    reason, encoded = process(data, resolution, crop, min_size, encoding=encoding)
    return sha256(data), reason, encoded


# ------------------------------------------------------------------ layouts
LAYOUT_PATTERNS = {
    # FFHQ: thumbnails128x128/00000/00000.png (also the 1024 px originals).
    "ffhq": re.compile(r"(^|/)(thumbnails128x128|images1024x1024)/\d+/\d+\.png$", re.I),
    # CelebA aligned: img_align_celeba/000001.jpg, plus the 178:218 shape check.
    "celeba": re.compile(r"(^|/)img_align_celeba/\d+\.(jpg|jpeg|png)$", re.I),
    # Anime faces: images/<id>_<year>.jpg, any size, directly under images/.
    "anime": re.compile(r"(^|/)images/[^/]+\.(jpg|jpeg|png)$", re.I),
}
AUTO_CROP = {"celeba": "celeba", "ffhq": "center", "anime": "center", "folder": "center"}


def has_celeba_shape(read: Callable[[str], bytes], paths: Sequence[str], probe: int = 3) -> bool:
    """CelebA-aligned files are 178x218 or a scaled copy (89x109): check the first readable few."""
    checked = 0
    for path in paths:
        try:
            with Image.open(io.BytesIO(read(path))) as img:
                w, h = img.size
        except Exception:  # noqa: BLE001 - a broken file says nothing about the layout
            continue
        if abs(w * CELEBA_H - h * CELEBA_W) > CELEBA_H:  # more than ~1 px off 178:218
            return False
        checked += 1
        if checked >= probe:
            break
    return checked > 0


def detect_layout(paths: Sequence[str], read: Callable[[str], bytes]) -> str:
    """Name the dataset layout from its content: member paths and CelebA's shape.

    ``paths`` are the safe relative paths of the source. A layout is chosen only
    if *every* path with an image extension matches it, checked in this order:
    ``ffhq`` (``thumbnails128x128/NNNNN/NNNNN.png``), ``celeba``
    (``img_align_celeba/NNNNNN.jpg`` whose images have the 178:218 shape, full
    or half size), ``anime`` (flat ``images/*.jpg``); otherwise ``folder``.
    The archive's own file name plays no part.
    """
    candidates = [p for p in paths if p.lower().endswith(IMAGE_EXTS)]
    if not candidates:
        return "folder"
    for layout in ("ffhq", "celeba", "anime"):
        if all(LAYOUT_PATTERNS[layout].search(p) for p in candidates):
            if layout == "celeba" and not has_celeba_shape(read, candidates):
                continue
            return layout
    return "folder"
