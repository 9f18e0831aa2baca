"""Evaluation outputs: report.json (every figure + protocol), report.md, grid.png, fid_vs_kimg.png.

pairs.png (closest generated/reference pairs) is drawn by ``leak.leak_report``;
the report says when it was not asked for. no_face.png (generated images the detector
missed) is drawn by the ``detect`` metric.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

import dist_gan
from dist_gan.files import atomic_write_text
from dist_gan.imaging import make_grid, pyplot, save_image


def versions() -> Dict[str, str]:
    """Versions that change the numbers: torch, torch-fidelity, numpy, scipy, dist_gan, python."""
    out = {"python": platform.python_version(), "dist_gan": dist_gan.__version__}
    for pkg in ("torch", "torchvision", "torch-fidelity", "torchmetrics", "numpy", "scipy", "opencv-python-headless"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def save_sample_grid(images: np.ndarray, path: Path, nrow: int = 8, scale: int = 2) -> Path:
    """The first nrow x nrow generated images as one PNG."""
    return save_image(make_grid(images[: nrow * nrow], nrow=nrow), path, scale=scale)


def plot_fid_curve(points: Sequence[Dict[str, Any]], path: Path) -> Path:
    """FID against kimg, best checkpoint marked; ``points`` have keys kimg, fid."""
    plt = pyplot()
    kimg = [p["kimg"] for p in points]
    fid = [p["fid"] for p in points]
    best = int(np.argmin(fid))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(kimg, fid, "o-", label="FID")
    ax.plot([kimg[best]], [fid[best]], "r*", markersize=14, label=f"best: {fid[best]:.2f} @ {kimg[best]:g} kimg")
    ax.set_xlabel("kimg (thousands of images shown to D)")
    ax.set_ylabel("FID (lower is better)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(report: Dict[str, Any], path: Path) -> Path:
    """Atomic write of the report as indented JSON."""
    return atomic_write_text(path, json.dumps(_jsonable(report), indent=2, sort_keys=False) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def render_markdown(report: Dict[str, Any]) -> str:
    """Human-readable summary of report.json."""
    ck, proto, m = report["checkpoint"], report["protocol"], report["metrics"]
    lines: List[str] = [
        "# dist_gan evaluation",
        "",
        f"- checkpoint: `{ck['path']}` (nimg {ck['nimg']}, {ck['kimg']:g} kimg, {_which_generator(ck)} generator"
        f"{', BN statistics re-estimated' if ck.get('bn_recal') else ''})",
        f"- generated samples: {proto['n_gen']} (seed {proto['seed']}; {proto['seed_rule']})",
        f"- reference: `{proto['reference']['path']}` ({proto['reference']['kind']}, layout {proto['reference']['layout']}), "
        f"{proto['n_ref']} images; {proto['reference']['preprocessing']}",
        f"- processes: {proto['world_size']}",
    ]
    if "weights" in proto:
        w = proto["weights"]
        lines.append(f"- Inception weights: `{w['source']}` sha1 `{w['source_sha1']}` ({w['source_kind']}, fc head: {w['has_fc']})")
        lines.append(f"- resize/preprocessing: {proto['resize']}")
    lines += ["", "## Figures", "", "| metric | figure | value |", "|---|---|---|"]
    for name, figs in m.items():
        for k, v in figs.items():
            if k in ("seconds", "detector", "png") or isinstance(v, (list, dict)) or (isinstance(v, str) and len(v) > 60):
                continue  # long texts (e.g. leak's rule) stay in report.json
            lines.append(f"| {name} | {k} | {_fmt(v)} |")
    if "detect" in m:
        d = m["detect"]
        lines += ["", "## Face detectability", "",
                  f"Detector: {_fmt(d['detector'])}", "",
                  "| set | images | no face found | rate |", "|---|---|---|---|",
                  f"| generated | {d['gen_n']} | {d['gen_no_face']} | {d['gen_no_face_rate']:.3f} |"]
        if "ref_n" in d:
            lines.append(f"| real (detector ceiling) | {d['ref_n']} | {d['ref_no_face']} | {d['ref_no_face_rate']:.3f} |")
        if d.get("png"):
            lines += ["", f"The generated images with no face found (the first {min(d['gen_no_face'], 64)} of {d['gen_no_face']}): "
                      f"{Path(d['png']).name}; their sample indices are `gen_no_face_index` in report.json."]
    if report.get("checkpoints"):
        lines += ["", "## FID per checkpoint", "", "| kimg | FID | checkpoint |", "|---|---|---|"]
        for p in report["checkpoints"]:
            lines.append(f"| {p['kimg']:g} | {p['fid']:.4g} | `{Path(p['path']).name}` |")
        b = report["best_checkpoint"]
        lines += ["", f"Best: `{b['path']}` (FID {b['fid']:.4g} at {b['kimg']:g} kimg); curve: fid_vs_kimg.png"]
    lines += ["", "## Files", ""]
    for k, v in report["files"].items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


def write_markdown(report: Dict[str, Any], path: Path) -> Path:
    path.write_text(render_markdown(report))
    return path


def _which_generator(ck: dict) -> str:
    """How the report names the generator: EMA, EMA (5-kimg half-life) or raw."""
    if not ck["ema"]:
        return "raw"
    return f"EMA ({ck['ema_kimg']:g}-kimg half-life)" if ck.get("ema_kimg") is not None else "EMA"
