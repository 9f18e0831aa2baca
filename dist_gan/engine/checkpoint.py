"""Checkpoints that survive a SIGKILL and load with ``torch.load(weights_only=True)``.

A checkpoint is one ``.pt`` file holding everything needed to resume bit-for-bit:
G, D, G_ema, both optimizers, both loss scalers, the image counter, every RNG
state, the data position and the resolved recipe (as plain containers, so the
safe unpickler accepts it). Files are written to a temp name in the same folder,
fsynced, then renamed, so a reader never sees a half-written checkpoint; the
last ``keep`` are kept.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from dist_gan.errors import UserError

FORMAT = "dist_gan.ckpt/1"
_NAME = re.compile(r"^ckpt-(\d{9,})\.pt$")


def checkpoint_name(nimg: int) -> str:
    """File name ordered by images seen, so the newest sorts last."""
    return f"ckpt-{nimg:09d}.pt"


def list_checkpoints(ckpt_dir: Path) -> List[Path]:
    """Complete checkpoints in a folder, oldest first (temp files never match)."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` via temp file + fsync + rename (+ directory fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(state: Dict[str, Any], ckpt_dir: Path, nimg: int, keep: int = 3) -> Path:
    """Write ``state`` as the checkpoint for ``nimg`` and prune all but the newest ``keep``."""
    path = ckpt_dir / checkpoint_name(nimg)
    atomic_save({"format": FORMAT, **state}, path)
    if keep > 0:
        for old in list_checkpoints(ckpt_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(path_or_run: str | Path) -> Path:
    """A checkpoint file, or the newest one in a run directory (or its ``checkpoints/``)."""
    p = Path(path_or_run)
    if p.is_file():
        return p
    if p.is_dir():
        for d in (p / "checkpoints", p):
            found = list_checkpoints(d)
            if found:
                return found[-1]
        raise UserError(f"no checkpoint (ckpt-*.pt) found in {p} or {p / 'checkpoints'}")
    raise UserError(f"checkpoint or run directory not found: {p}")


def load_checkpoint(path_or_run: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with the safe unpickler; a clear error for anything that is not one."""
    path = resolve_checkpoint(path_or_run)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, unsafe pickle
        raise UserError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a dist_gan checkpoint (expected format {FORMAT})")
    state["path"] = str(path)
    return state


def load_generator(
    path_or_run: str | Path, ema: bool = True, device: str | torch.device = "cpu", ema_kimg: Optional[float] = None,
    bn_recal: bool = False,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """G (the EMA copy by default) in eval mode, and the run's resolved recipe as a dict.

    ``ema_kimg`` picks the average with that half-life: the run's ``train.ema_kimg`` or one
    of its ``train.ema_probes``. ``bn_recal`` re-estimates the BN statistics for the loaded
    weights (``ema.recalibrate_bn``) instead of using the stored ones.
    """
    from dist_gan.engine.ema import recalibrate_bn
    from dist_gan.models import build_generator

    state = load_checkpoint(path_or_run)
    cfg = state["cfg"]
    G = build_generator(cfg["model"])
    G.load_state_dict(_generator_state(state, ema, ema_kimg))
    G.to(device).eval().requires_grad_(False)
    if bn_recal:
        recalibrate_bn(G, int(cfg["model"]["nz"]))
    return G, cfg


def _generator_state(state: Dict[str, Any], ema: bool, ema_kimg: Optional[float]) -> Dict[str, Any]:
    """The raw G, the main EMA or the probe asked for; a missing half-life names those the run kept."""
    from dist_gan.engine.ema import probe_key

    if ema_kimg is None:
        return state["G_ema" if ema else "G"]
    if not ema:
        raise UserError("--ema-kimg picks an EMA generator; it cannot go with --no-ema")
    main = state["cfg"].get("train", {}).get("ema_kimg")
    if main is not None and probe_key(ema_kimg) == probe_key(main):
        return state["G_ema"]
    probes = state.get("G_ema_probes", {})
    if probe_key(ema_kimg) in probes:
        return probes[probe_key(ema_kimg)]
    have = sorted({float(k) for k in probes} | ({float(main)} if main is not None else set()))
    raise UserError(f"{state.get('path', 'the checkpoint')} has no EMA with a {probe_key(ema_kimg)}-kimg half-life; "
                    f"it has {', '.join(probe_key(h) for h in have) or 'none'} (train.ema_kimg and train.ema_probes)")


# ------------------------------------------------------------------ RNG state
def capture_rng() -> Dict[str, Any]:
    """Every RNG the run draws from, as tensors/lists the safe unpickler accepts."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
