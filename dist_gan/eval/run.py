"""``dist-gan eval``: generate, extract, score, report, on one process or several.

The work is split over ranks by global batch (``dist_gan.eval.sampling``), so the
figures are those of a single process; rank 0 scores and writes. Launch several with ``torchrun --nproc_per_node K -m dist_gan.cli eval ...``.
"""

from __future__ import annotations

import datetime as _dt
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from dist_gan.engine.checkpoint import list_checkpoints, load_checkpoint, load_generator, nimg_of, resolve_checkpoint
from dist_gan.data.remote import sub_location
from dist_gan.errors import UserError
from dist_gan.eval import metrics as M
from dist_gan.eval import reference as R
from dist_gan.eval.detect import build_detector
from dist_gan.eval.features import RESIZE_PROTOCOL, InceptionFeatures, cache_dir, resolve_weights
from dist_gan.eval.fid import feature_stats, fid_to_stats
from dist_gan.eval.report import plot_fid_curve, save_sample_grid, versions, write_json, write_markdown
from dist_gan.eval.sampling import BATCH, SEED_RULE, Dist, generate, init_distributed, load_reference_images, reference_features
from dist_gan.progress import progress_bar

TO_UINT8 = "G output in [-1, 1] -> round((x + 1) * 127.5) clamped to uint8 (dist_gan.imaging.to_uint8)"


@dataclass
class EvalOptions:
    """What ``dist-gan eval`` was asked to do (CLI flags one-to-one)."""

    target: str
    ref: str
    out: Path
    which: str = "latest"  # from a run directory: latest | best (engine.checkpoint.WHICH)
    metrics: List[str] = field(default_factory=lambda: ["fid"])
    n: int = 10000
    n_ref: Optional[int] = None  # default: min(n, reference size)
    ema: bool = True
    ema_kimg: Optional[float] = None  # EMA half-life to score: train.ema_kimg (default) or one of train.ema_probes
    bn_recal: bool = False  # re-estimate G's BN statistics for the scored weights (ema.recalibrate_bn)
    detector: Optional[str] = None  # default from the reference layout
    cascade: Optional[str] = None
    batch: int = BATCH
    seed: int = 0
    inception_weights: Optional[str] = None
    all_checkpoints: bool = False
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    k_pairs: int = 8
    pr_k: int = 3  # neighbourhood of the precision/recall manifolds (eval.precision_recall.K)
    holdout_ref: Optional[str] = None  # images never trained on; default: REF/holdout of a pack made with --holdout
    progress: bool = True


def generate_and_extract(ckpt: Path, opts: EvalOptions, dist: Dist, model: Optional[InceptionFeatures],
                         progress: Any, label: str = "") -> Dict[str, Any]:
    """N generated images (uint8 NHWC) and, when a model is given, their features/logits."""
    G, cfg = load_generator(ckpt, ema=opts.ema, ema_kimg=opts.ema_kimg, bn_recal=opts.bn_recal)
    nz = int(cfg["model"]["nz"])

    desc = f"generate{' + features' if model is not None else ''}{label}"
    res = generate(G, nz, opts.n, opts.seed, opts.batch, dist, model, progress, desc)
    return {"cfg": cfg, "resolution": int(cfg["model"]["resolution"]), **res}


# ------------------------------------------------------------------ driver
def _warn_on_mismatch(ref: R.ReferenceSet, n: int, n_ref: int, resolution: int) -> None:
    """Figures that are valid but not what the command line suggests: say so before the work."""
    if n_ref < n:
        warnings.warn(f"the reference {ref.path} holds {ref.count} images, fewer than --n {n}: the statistics "
                      f"compare {n} generated images with {n_ref} real ones (FID is biased upwards at small n)",
                      UserWarning, stacklevel=3)
    if ref.native_resolution is not None and ref.native_resolution != resolution:
        warnings.warn(f"the reference shards are {ref.native_resolution} px and the generator makes {resolution} px: "
                      f"the reference is resized to {resolution} px for every metric", UserWarning, stacklevel=3)


def _validate(opts: EvalOptions) -> None:
    if not opts.metrics:
        raise UserError("nothing to evaluate: pass at least one of --fid --kid --is --pr --detect --leak --identity")
    for name in opts.metrics:
        if not M.is_valid_metric(name):
            raise UserError(f"unknown metric {name!r}; valid: {', '.join(M.list_valid_metrics())}")
    if opts.n < 2 or opts.batch < 1:
        raise UserError(f"--n must be >= 2 and --batch >= 1 (got {opts.n}, {opts.batch})")
    if opts.all_checkpoints and "fid" not in opts.metrics:
        raise UserError("--all-checkpoints plots FID against kimg: add --fid")
    if "pr" in opts.metrics and (opts.pr_k < 1 or opts.n <= opts.pr_k):
        raise UserError(f"--pr-k must be >= 1 and below --n (got k={opts.pr_k}, n={opts.n})")
    if "pr" in opts.metrics and opts.n_ref is not None and opts.n_ref <= opts.pr_k:
        raise UserError(f"--pr needs more than --pr-k {opts.pr_k} reference images, got --n-ref {opts.n_ref}")
    if opts.holdout_ref is not None and not any(m in HOLDOUT_METRICS for m in opts.metrics):
        raise UserError("--holdout-ref scores FID, KID or precision/recall against held-out images: add --fid, --kid or --pr")
    if opts.n_ref is not None and opts.n_ref < 2:
        raise UserError(f"--n-ref must be >= 2 (got {opts.n_ref})")


def evaluate(opts: EvalOptions) -> Optional[Dict[str, Any]]:
    """Run the evaluation; rank 0 writes ``opts.out`` and returns the report, other ranks return None."""
    t_start = time.perf_counter()
    _validate(opts)
    dist = init_distributed()
    ckpt = resolve_checkpoint(opts.target, opts.which)
    ref = R.open_reference(opts.ref)
    n_ref = min(opts.n, ref.count) if opts.n_ref is None else opts.n_ref
    if n_ref > ref.count:
        raise UserError(f"--n-ref {n_ref} but the reference {ref.path} holds only {ref.count} images")
    if "pr" in opts.metrics and n_ref <= opts.pr_k:
        raise UserError(f"--pr needs more than --pr-k {opts.pr_k} reference images; this evaluation uses {n_ref}")
    resolution = int(load_checkpoint(ckpt, mmap=True)["cfg"]["model"]["resolution"])  # G itself is loaded once, below
    if dist.main:
        _warn_on_mismatch(ref, opts.n, n_ref, resolution)
    needs = M.needs_of(opts.metrics)
    holdout = _holdout_reference(opts, ref)

    # Fail fast on anything the user must fix, before minutes of work.
    detector_name = opts.detector or R.default_detector(ref)
    detector = None
    if "detect" in opts.metrics:
        detector = build_detector(detector_name, opts.cascade)
    embedder = identity_cache = None
    if "identity" in opts.metrics:
        from dist_gan.eval.identity import FaceEmbedder, cache_key

        embedder = FaceEmbedder()
        identity_cache = cache_dir() / "identity" / f"ref-{cache_key(ref.data_key, resolution, n_ref)}.npz"
    model: Optional[InceptionFeatures] = None
    weights = None
    if "features" in needs:
        weights = resolve_weights(opts.inception_weights)  # every rank: errors surface everywhere, no hang
        model = InceptionFeatures(weights, logits="is" in opts.metrics)
    ckpts = [ckpt]
    if opts.all_checkpoints:
        run_dir = Path(opts.target)
        found = list_checkpoints(run_dir / "checkpoints") or list_checkpoints(run_dir) if run_dir.is_dir() else []
        ckpts = found or list_checkpoints(ckpt.parent) or [ckpt]

    timing: Dict[str, float] = {}
    report: Optional[Dict[str, Any]] = None
    with progress_bar(enabled=opts.progress and dist.main) as progress:
        t0 = time.perf_counter()
        gen = generate_and_extract(ckpt, opts, dist, model, progress)
        timing["generate_and_features"] = time.perf_counter() - t0
        resolution = gen["resolution"]

        t0 = time.perf_counter()
        ref_images = load_reference_images(ref, n_ref, resolution, progress) if "ref_images" in needs else None
        ref_stats = reference_features(ref, ref_images, n_ref, resolution, model, opts.batch, dist, progress) if model else None
        timing["reference"] = time.perf_counter() - t0
        held = None
        if holdout is not None and model is not None:
            t0 = time.perf_counter()
            n_held = min(n_ref, holdout.count)
            held = {"ref": holdout, "n": n_held, "stats": reference_features(holdout, None, n_held, resolution, model,
                                                                             opts.batch, dist, progress)}
            timing["holdout_reference"] = time.perf_counter() - t0

        curve: List[Dict[str, Any]] = []
        if len(ckpts) > 1:
            for c in ckpts:
                if c.resolve() == ckpt.resolve():
                    feats = gen["feats"]
                else:
                    feats = generate_and_extract(c, opts, dist, model, progress, f" ({c.name})")["feats"]
                if dist.main:
                    nimg = nimg_of(c)
                    curve.append({"path": str(c), "nimg": nimg, "kimg": nimg / 1000,
                                  "fid": fid_to_stats(feats, ref_stats["mu"], ref_stats["sigma"])})
            timing["all_checkpoints"] = time.perf_counter() - t0

        if dist.main:
            opts.out.mkdir(parents=True, exist_ok=True)
            ctx = M.EvalContext(
                gen_images=gen["images"], gen_feats=gen.get("feats"), gen_logits=gen.get("logits"),
                ref_feats=ref_stats["feats"] if ref_stats else None, ref_mu=ref_stats["mu"] if ref_stats else None,
                ref_sigma=ref_stats["sigma"] if ref_stats else None, ref_images=ref_images, out_dir=opts.out,
                options={"seed": opts.seed, "detector": detector_name, "cascade": opts.cascade, "detector_obj": detector,
                         "kid_subsets": opts.kid_subsets, "kid_subset_size": opts.kid_subset_size,
                         "k_pairs": opts.k_pairs, "pr_k": opts.pr_k, "progress": progress,
                         "identity_embedder": embedder, "identity_cache": identity_cache,
                         "ref_stats_path": ref_stats["cache_path"] if ref_stats else None},
            )
            results = {name: M.calc_metric(name, ctx) for name in opts.metrics}
            if held is not None:
                results["holdout"] = _against_holdout(ctx, held, results)
            report = _build_report(opts, dist, ckpt, ref, n_ref, weights, ref_stats, results, curve, timing, t_start,
                                   gen["images"])
    dist.barrier()
    return report


HOLDOUT_METRICS = ("fid", "kid", "pr")
"""The metrics that are also scored against the held-out images (the others do not depend on them)."""


def _holdout_reference(opts: EvalOptions, ref: R.ReferenceSet) -> Optional[R.ReferenceSet]:
    """``--holdout-ref``, else the ``holdout`` folder of a pack made with ``--holdout``; None when neither."""
    if not any(m in HOLDOUT_METRICS for m in opts.metrics):
        return None
    if opts.holdout_ref is not None:
        try:
            return R.open_reference(opts.holdout_ref)
        except UserError as exc:
            raise UserError(str(exc).replace("--ref", "--holdout-ref", 1)) from None
    side = (ref.shards.manifest.get("holdout_set") or {}).get("path") if ref.shards is not None else None
    return R.open_reference(sub_location(str(ref.path), side)) if side else None


def _against_holdout(ctx: M.EvalContext, held: Dict[str, Any], results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """FID/KID/P&R of the same samples against images never trained on, and the FID gap to the training set."""
    stats = held["stats"]
    hctx = M.EvalContext(gen_images=ctx.gen_images, gen_feats=ctx.gen_feats, ref_feats=stats["feats"], ref_mu=stats["mu"],
                         ref_sigma=stats["sigma"], options={**ctx.options, "ref_stats_path": stats["cache_path"]})
    out: Dict[str, Any] = {"ref": str(held["ref"].path), "n_ref": held["n"]}
    for name in (m for m in HOLDOUT_METRICS if m in results):
        if name == "pr" and held["n"] <= ctx.options.get("pr_k", 3):
            out["pr_note"] = f"precision/recall needs more than k held-out images, the set holds {held['n']}"
            continue
        figs = M.calc_metric(name, hctx)
        out.update({k: v for k, v in figs.items() if k in ("fid", "kid_mean", "kid_std", "precision", "recall")})
    if "fid" in out:
        # FID is biased upwards at small n, so the gap compares equal counts: the training reference cut to n_ref.
        n, train = held["n"], ctx.ref_feats
        same_n = train is not None and len(train) > n
        out["fid_train_same_n"] = fid_to_stats(ctx.gen_feats, *feature_stats(train[:n])) if same_n else results["fid"]["fid"]
        out["fid_gap"] = out["fid"] - out["fid_train_same_n"]  # > 0: closer to what it trained on than to new faces
    return out


def _build_report(opts: EvalOptions, dist: Dist, ckpt: Path, ref: R.ReferenceSet, n_ref: int, weights: Any,
                  ref_stats: Optional[Dict[str, Any]], results: Dict[str, Dict[str, Any]],
                  curve: List[Dict[str, Any]], timing: Dict[str, float], t_start: float,
                  gen_images: np.ndarray) -> Dict[str, Any]:
    """Assemble report.json, write it with report.md, grid.png and fid_vs_kimg.png."""
    out = opts.out
    files: Dict[str, Any] = {"report_json": "report.json", "report_md": "report.md", "grid": "grid.png"}
    nimg = nimg_of(ckpt)
    protocol: Dict[str, Any] = {
        "n_gen": opts.n, "n_ref": n_ref, "seed": opts.seed, "seed_rule": SEED_RULE, "batch": opts.batch,
        "ema": opts.ema, "ema_kimg": opts.ema_kimg, "bn_recal": opts.bn_recal, "generated_to_uint8": TO_UINT8, "reference": ref.describe(), "world_size": dist.world,
        "work_split": "global batch b -> rank b % world_size; results all_gathered; rank 0 scores",
        "metrics": list(opts.metrics),
    }
    if weights is not None:
        protocol.update({"resize": RESIZE_PROTOCOL, "feature_extractor": "torch_fidelity FeatureExtractorInceptionV3 (2048)",
                         "weights": weights.describe(),
                         "reference_stats": {"cached": ref_stats["cached"], "cache_path": ref_stats["cache_path"]}})
    if "holdout" in results:
        protocol["holdout"] = (f"FID/KID/P&R also against {results['holdout']['ref']} ({results['holdout']['n_ref']} images "
                               "never trained on); fid_gap = FID(held out) - FID(the first n_ref training reference images), at equal "
                               "counts because FID is biased upwards at small n")
    if "pr" in results:
        protocol["pr"] = (f"improved precision/recall (Kynkaanniemi et al. 2019), k={opts.pr_k} nearest-neighbour balls "
                          "in the same Inception pool3 features as FID (VGG-16 weights are not offline)")
    if "kid" in results:
        protocol["kid"] = ("unbiased MMD^2, k(x,y) = (x.y/2048 + 1)^3, mean/std over subsets (torch-fidelity/StyleGAN); "
                           "one whole-set MMD and no std where both sets fit in one subset")
    report: Dict[str, Any] = {
        "format": "dist_gan.eval/1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(ckpt), "nimg": nimg, "kimg": nimg / 1000, "ema": opts.ema, "ema_kimg": opts.ema_kimg, "bn_recal": opts.bn_recal},
        "protocol": protocol,
        "metrics": {k: {kk: vv for kk, vv in v.items() if kk != "pairs"} if isinstance(v, dict) else v
                    for k, v in results.items()},
        "figures": _flat_figures(results),
    }
    save_sample_grid(gen_images, out / "grid.png")
    if "identity" in results:
        files["identity_pairs"] = "identity_pairs.png" if results["identity"].get("png") else None
    if (out / "pairs.png").is_file() and "leak" in results:
        files["pairs"] = "pairs.png"
    else:
        files["pairs"] = None
        files["pairs_note"] = "pairs.png not written: --leak was not asked (it draws the closest generated/reference pairs)"
    if "detect" in results:
        files["no_face"] = "no_face.png" if results["detect"].get("png") else None
    if curve:
        best = min(curve, key=lambda p: p["fid"])
        report["checkpoints"] = curve
        report["best_checkpoint"] = best
        plot_fid_curve(curve, out / "fid_vs_kimg.png")
        files["fid_vs_kimg"] = "fid_vs_kimg.png"
    timing["total"] = time.perf_counter() - t_start
    report["files"] = files
    report["timing_seconds"] = {k: round(v, 3) for k, v in timing.items()}
    report["versions"] = versions()
    report["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    write_json(report, out / "report.json")
    write_markdown(report, out / "report.md")
    return report


def _flat_figures(results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The headline numbers in one flat dict (``fid``, ``kid_mean``, ``detect_gen_no_face`` ...)."""
    flat: Dict[str, Any] = {}
    for name, figs in results.items():
        for k, v in figs.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seconds":
                flat[k if k.startswith(name) else f"{name}_{k}"] = v
    return flat
