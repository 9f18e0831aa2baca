"""Metric registry: name -> function(context) -> dict of figures.

Modelled on stylegan2-ada-pytorch's ``metrics/metric_main.py``: adding a metric is
registering one function; ``run.py`` only looks metrics up by name and collects
what their ``needs`` ask for (Inception features, logits, reference images), so a
detect-only evaluation never loads Inception.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional

import numpy as np

from dist_gan.errors import UserError
from dist_gan.eval.detect import build_detector
from dist_gan.eval.fid import feature_stats, fid_to_stats, inception_score, kernel_inception_distance
from dist_gan.eval.leak import leak_report
from dist_gan.eval.precision_recall import K as PR_K
from dist_gan.eval.precision_recall import precision_recall, radii_cache_path
from dist_gan.eval.report import save_sample_grid


@dataclass
class EvalContext:
    """Everything a metric may read. Arrays are in global sample order; images uint8 NHWC."""

    gen_images: np.ndarray
    gen_feats: Optional[np.ndarray] = None
    gen_logits: Optional[np.ndarray] = None
    ref_feats: Optional[np.ndarray] = None
    ref_mu: Optional[np.ndarray] = None
    ref_sigma: Optional[np.ndarray] = None
    ref_images: Optional[np.ndarray] = None
    out_dir: Optional[Path] = None
    options: Dict[str, Any] = field(default_factory=dict)  # seed, detector, cascade, kid_*, k_pairs, ...

    def ref_stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.ref_mu is None or self.ref_sigma is None:
            assert self.ref_feats is not None, "metric needs reference features"
            self.ref_mu, self.ref_sigma = feature_stats(self.ref_feats)
        return self.ref_mu, self.ref_sigma


MetricFn = Callable[[EvalContext], Dict[str, Any]]


@dataclass(frozen=True)
class Metric:
    fn: MetricFn
    needs: FrozenSet[str]  # subset of {"features", "logits", "ref_images"}
    doc: str


METRICS: Dict[str, Metric] = {}


def register_metric(name: str, needs: Iterable[str] = ()) -> Callable[[MetricFn], MetricFn]:
    """Decorator: make ``fn`` available as ``name`` (``dist-gan eval --<name>``)."""

    def wrap(fn: MetricFn) -> MetricFn:
        METRICS[name] = Metric(fn, frozenset(needs), (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return wrap


def is_valid_metric(name: str) -> bool:
    return name in METRICS


def list_valid_metrics() -> List[str]:
    return list(METRICS)


def needs_of(names: Iterable[str]) -> FrozenSet[str]:
    """Union of what the named metrics need."""
    out: set[str] = set()
    for n in names:
        out |= METRICS[n].needs
    return frozenset(out)


def calc_metric(name: str, ctx: EvalContext) -> Dict[str, Any]:
    """Run one metric; its figures plus the seconds it took."""
    if not is_valid_metric(name):
        raise UserError(f"unknown metric {name!r}; valid: {', '.join(list_valid_metrics())}")
    t0 = time.perf_counter()
    result = dict(METRICS[name].fn(ctx))
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


# ------------------------------------------------------------------ metrics
@register_metric("fid", needs=("features",))
def fid(ctx: EvalContext) -> Dict[str, Any]:
    """Fréchet Inception Distance between generated and reference pool3 features."""
    return {"fid": fid_to_stats(ctx.gen_feats, *ctx.ref_stats()), "n_gen": len(ctx.gen_feats),
            "n_ref": len(ctx.ref_feats) if ctx.ref_feats is not None else None}


@register_metric("kid", needs=("features",))
def kid(ctx: EvalContext) -> Dict[str, Any]:
    """Kernel Inception Distance: unbiased cubic-polynomial MMD^2 over random subsets."""
    o = ctx.options
    return kernel_inception_distance(ctx.gen_feats, ctx.ref_feats, subsets=o.get("kid_subsets", 100),
                                     subset_size=o.get("kid_subset_size", 1000), seed=o.get("seed", 0))


@register_metric("is", needs=("features", "logits"))
def inception(ctx: EvalContext) -> Dict[str, Any]:
    """Inception Score of the generated images (needs weights with the fc head)."""
    if ctx.gen_logits is None:
        raise UserError("Inception Score needs logits; the Inception weights have no classifier head (fc)")
    return inception_score(ctx.gen_logits, splits=ctx.options.get("is_splits", 10))


@register_metric("pr", needs=("features",))
def pr(ctx: EvalContext) -> Dict[str, Any]:
    """Improved precision and recall (k-NN manifolds in Inception space): realism and coverage apart."""
    k = int(ctx.options.get("pr_k", PR_K))
    stats = ctx.options.get("ref_stats_path")
    return precision_recall(ctx.gen_feats, ctx.ref_feats, k, radii_cache_path(stats, k) if stats else None)


NO_FACE_GRID = 64  # generated images drawn in no_face.png (the first ones missed)


@register_metric("detect", needs=("ref_images",))
def detect(ctx: EvalContext) -> Dict[str, Any]:
    """Face detectability: generated images with no face found, beside real ones (the detector's ceiling)."""
    det = ctx.options.get("detector_obj") or build_detector(ctx.options.get("detector", "haar"), ctx.options.get("cascade"))
    progress = ctx.options.get("progress")
    gen_found = _detect_batched(det, ctx.gen_images, progress, "detect faces (generated)")
    ref_images = ctx.ref_images[: len(ctx.gen_images)] if ctx.ref_images is not None else np.zeros((0,))
    ref_found = _detect_batched(det, ref_images, progress, "detect faces (reference)") if len(ref_images) else None
    out: Dict[str, Any] = {
        "detector": det.describe(int(ctx.gen_images.shape[1])),
        "gen_n": int(len(gen_found)),
        "gen_no_face": int((~gen_found).sum()),
        "gen_no_face_rate": float((~gen_found).mean()),
        "gen_face_rate": float(gen_found.mean()),
    }
    if ref_found is not None:
        out.update({"ref_n": int(len(ref_found)), "ref_no_face": int((~ref_found).sum()),
                    "ref_no_face_rate": float((~ref_found).mean()), "ref_face_rate": float(ref_found.mean())})
    # Which samples were missed (indices into the --seed latents), and what they look like: a count
    # alone cannot tell faceless samples from faces the detector fails on.
    missed = np.flatnonzero(~gen_found)
    out["gen_no_face_index"] = [int(i) for i in missed]
    out["png"] = None
    if ctx.out_dir is not None and not len(missed):
        (Path(ctx.out_dir) / "no_face.png").unlink(missing_ok=True)  # not a stale one from an earlier run
    elif ctx.out_dir is not None:
        shown = ctx.gen_images[missed[:NO_FACE_GRID]]
        out["png"] = str(save_sample_grid(shown, Path(ctx.out_dir) / "no_face.png", nrow=min(8, len(shown))))
    return out


def _detect_batched(det: Any, images: np.ndarray, progress: Any, desc: str, batch: int = 64) -> np.ndarray:
    task = progress.add_task(desc, total=len(images)) if progress is not None else None
    found = []
    for i in range(0, len(images), batch):
        found.append(np.asarray(det.detect(images[i : i + batch]), dtype=bool))
        if task is not None:
            progress.advance(task, len(images[i : i + batch]))
    return np.concatenate(found) if found else np.zeros(0, bool)


@register_metric("identity", needs=("ref_images",))
def identity(ctx: EvalContext) -> Dict[str, Any]:
    """Identity memorisation: nearest training face (dlib 128-d) of each generated face, against leave-one-out reals."""
    from dist_gan.eval.identity import FaceEmbedder, cached_embeddings, identity_report

    embedder = ctx.options.get("identity_embedder") or FaceEmbedder()
    progress = ctx.options.get("progress")
    t0 = time.perf_counter()
    gen = embedder.embed(ctx.gen_images, progress, "identity embeddings (generated)")
    per_1000 = (time.perf_counter() - t0) / len(ctx.gen_images) * 1000
    ref, cached = cached_embeddings(embedder, ctx.ref_images, ctx.options.get("identity_cache"), progress,
                                    "identity embeddings (reference)")
    out_png = ctx.out_dir / "identity_pairs.png" if ctx.out_dir is not None else None
    report = identity_report(gen, ref, ctx.gen_images, ctx.ref_images, out_png, k_pairs=ctx.options.get("k_pairs", 8))
    return {**report, "embed_s_per_1000": round(per_1000, 2), "ref_embeddings_cached": cached,
            "model": embedder.describe()}


@register_metric("leak", needs=("features", "ref_images"))
def leak(ctx: EvalContext) -> Dict[str, Any]:
    """Memorisation check: nearest reference image of each generated one in Inception space."""
    out_png = ctx.out_dir / "pairs.png" if ctx.out_dir is not None else None
    return leak_report(ctx.gen_feats, ctx.ref_feats, ctx.gen_images, ctx.ref_images, out_png,
                       k_pairs=ctx.options.get("k_pairs", 8))
