"""Identity-leak (memorisation) check: are generated images copies of training images?

A GAN that memorises puts its samples unusually close to particular training images
in feature space (e.g. Inception pool3). "Unusually" needs a yardstick, and the one
used here is the data itself: the distance from each reference (real) image to its
nearest *other* reference image. Its median is the typical nearest-neighbour
distance between two different real images; its 1st percentile is how close the
closest ~1% of real pairs come.

Read the numbers with that baseline in mind: a generator that samples *new* images
from the real distribution would put about 50% of its samples under the real-real
median and about 1% under the real-real 1st percentile. So being under the median
is not evidence on its own; a clear excess under the 1st percentile, or features
identical to a reference image, is. The exact rule is returned in the report.

"Leak" here means near-duplicate images in the given feature space. Whether a generated
face is the same *person* as a training face is ``identity.py``'s question (``--identity``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

CANDIDATES = 8
"""Neighbours kept from the float32 screening pass and re-ranked in float64."""

COPY_RTOL = 1e-6
"""A generated feature within COPY_RTOL x (real-real median) of a reference one is a copy."""

P_VALUE_LEVEL = 1e-3
"""Binomial p-value below which an excess under the real-real 1st percentile is flagged."""

PREVIEW_TARGET = 192
"""Pair pictures upscale images (nearest) by an integer factor to about this size."""
PAD = 6
TEXT_H = 30


def nearest_neighbours(
    query: np.ndarray, ref: np.ndarray, exclude_self: bool = False, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """L2 distance (float64) and index of each query row's nearest ref row.

    Chunked float32 matmul screens ``CANDIDATES`` neighbours per query (so 10k x 10k
    x 2048 needs only ~chunk x n_ref floats at a time); their distances are then
    recomputed exactly in float64 from the differences, so near-duplicates come
    out as ~0 rather than float32 cancellation noise. Ties go to the lowest index.
    ``exclude_self``: query and ref are the same set; row i never matches itself
    (only the diagonal is excluded, not duplicates elsewhere).
    """
    q = np.asarray(query)
    r = np.asarray(ref)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) arrays, got {q.shape} and {r.shape}")
    if exclude_self and q.shape != r.shape:
        raise ValueError("exclude_self needs query and ref to be the same set")
    n_avail = len(r) - (1 if exclude_self else 0)
    if n_avail < 1:
        raise ValueError("not enough reference rows")
    k = min(CANDIDATES, n_avail)

    # Centre on the ref mean: distances do not change, float32 norms shrink.
    mean = r.mean(axis=0, dtype=np.float64)
    rt = torch.from_numpy((r - mean).astype(np.float32))
    r_sq = (rt * rt).sum(dim=1)
    dist = np.empty(len(q), dtype=np.float64)
    index = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), chunk):
        stop = min(start + chunk, len(q))
        qt = torch.from_numpy((q[start:stop] - mean).astype(np.float32))
        d2 = r_sq[None, :] - 2.0 * (qt @ rt.T)  # |q|^2 is constant per row
        if exclude_self:
            rows = torch.arange(stop - start)
            d2[rows, rows + start] = float("inf")
        cand = torch.topk(d2, k, dim=1, largest=False).indices.numpy()
        cand.sort(axis=1)  # lowest index first, so argmin breaks ties by index
        for s in range(start, stop, 128):
            e = min(s + 128, stop)
            c = cand[s - start : e - start]
            diff = q[s:e, None, :].astype(np.float64) - r[c].astype(np.float64)
            d = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
            best = d.argmin(axis=1)
            dist[s:e] = d[np.arange(e - s), best]
            index[s:e] = c[np.arange(e - s), best]
    return dist, index


def binomial_sf(count: int, n: int, p: float) -> float:
    """P(X >= count) for X ~ Binomial(n, p), summed in log space."""
    if count <= 0:
        return 1.0
    if count > n:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [
        math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq
        for j in range(count, n + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


RULE = (
    "Baseline: nearest-neighbour L2 distance between two different reference images "
    "(real-real; median = typical, p1 = 1st percentile). 'memorisation: copies of "
    "reference images' if any generated feature is within "
    f"{COPY_RTOL:g} x real-real median of a reference feature; else 'possible "
    "memorisation' if more generated images fall under the real-real p1 than new real "
    f"images would (expected 1%; one-sided binomial p < {P_VALUE_LEVEL:g}); else 'no "
    "memorisation signal'. For new real-like samples about 50% fall under the "
    "real-real median (under_threshold), so that count alone is not evidence; "
    "min_over_real_median >= 1 means every generated image is farther from the "
    "reference set than a typical real image is."
)


def leak_report(
    gen_feats: np.ndarray,
    ref_feats: np.ndarray,
    gen_images: np.ndarray | None,
    ref_images: np.ndarray | None,
    out_png: Path | None,
    k_pairs: int = 8,
) -> dict[str, Any]:
    """Nearest-reference distances of generated images against the real-real baseline.

    Images (uint8 NHWC, rows matching the features) are only needed for ``out_png``:
    the ``k_pairs`` closest generated/reference pairs, generated on top.
    Returns JSON-serialisable types only.
    """
    gen_feats = np.asarray(gen_feats)
    ref_feats = np.asarray(ref_feats)
    if len(ref_feats) < 2 or len(gen_feats) < 1:
        raise ValueError("need at least 2 reference and 1 generated feature rows")
    rr, _ = nearest_neighbours(ref_feats, ref_feats, exclude_self=True)
    gd, gi = nearest_neighbours(gen_feats, ref_feats)
    rr_p1, rr_p5, rr_med = (float(v) for v in np.percentile(rr, [1, 5, 50]))
    n = len(gd)
    under_med = int((gd < rr_med).sum())
    under_p1 = int((gd < rr_p1).sum())
    copies = int((gd <= COPY_RTOL * rr_med).sum())
    p_value = binomial_sf(under_p1, n, 0.01)
    if copies:
        verdict = "memorisation: copies of reference images"
    elif p_value < P_VALUE_LEVEL:
        verdict = "possible memorisation"
    else:
        verdict = "no memorisation signal"

    order = np.lexsort((np.arange(n), gd))[: max(0, min(k_pairs, n))]
    pairs = [
        {"gen_index": int(g), "ref_index": int(gi[g]), "distance": float(gd[g])} for g in order
    ]
    report: dict[str, Any] = {
        "n_generated": n,
        "n_reference": int(len(ref_feats)),
        "feature_dim": int(ref_feats.shape[1]),
        "real_real": {"median": rr_med, "p1": rr_p1, "p5": rr_p5, "min": float(rr.min())},
        "threshold": rr_med,
        "gen_to_ref": {
            "min": float(gd.min()),
            "p1": float(np.percentile(gd, 1)),
            "p5": float(np.percentile(gd, 5)),
            "p50": float(np.percentile(gd, 50)),
            "mean": float(gd.mean()),
        },
        "min_over_real_median": float(gd.min() / rr_med) if rr_med > 0 else None,
        "under_threshold": under_med,
        "under_threshold_fraction": under_med / n,
        "under_real_p1": under_p1,
        "under_real_p1_fraction": under_p1 / n,
        "under_real_p1_expected": 0.01 * n,
        "under_real_p1_p_value": p_value,
        "copies": copies,
        "verdict": verdict,
        "rule": RULE,
        "closest_pairs": pairs,
        "png": None,
    }
    if out_png is not None:
        if gen_images is None or ref_images is None:
            raise ValueError("out_png needs gen_images and ref_images")
        save_pairs_png(pairs, np.asarray(gen_images), np.asarray(ref_images), Path(out_png))
        report["png"] = str(out_png)
    return report


def preview_cell(image_size: int) -> int:
    """Side of one upscaled image in the pair picture (64 px -> x3 -> 192 px)."""
    return image_size * max(1, PREVIEW_TARGET // image_size)


def pair_grid_size(k: int, cell: int) -> tuple[int, int]:
    """(width, height) of the pair picture for k pairs of cell-px images."""
    return k * cell + (k + 1) * PAD, 2 * cell + 3 * PAD + TEXT_H


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def save_pairs_png(
    pairs: list[dict[str, Any]], gen_images: np.ndarray, ref_images: np.ndarray, out_png: Path
) -> None:
    """Top row: generated; below: its nearest reference image; distance underneath."""
    for name, im in (("gen_images", gen_images), ("ref_images", ref_images)):
        if im.ndim != 4 or im.shape[-1] != 3 or im.dtype != np.uint8:
            raise ValueError(f"{name}: expected uint8 NHWC RGB, got {im.dtype} {im.shape}")
    cell = preview_cell(int(gen_images.shape[1]))
    width, height = pair_grid_size(len(pairs), cell)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    for col, pair in enumerate(pairs):
        x = PAD + col * (cell + PAD)
        for row, img in enumerate(
            (gen_images[pair["gen_index"]], ref_images[pair["ref_index"]])
        ):
            tile = Image.fromarray(img).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (x, PAD + row * (cell + PAD)))
        y = 2 * cell + 3 * PAD
        draw.text((x, y), f"d={pair['distance']:.4g}", fill=(0, 0, 0), font=font)
        draw.text(
            (x, y + TEXT_H // 2),
            f"gen {pair['gen_index']} / ref {pair['ref_index']}",
            fill=(80, 80, 80),
            font=font,
        )
    out_png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_png)
