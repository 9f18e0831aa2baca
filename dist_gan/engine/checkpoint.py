"""The checkpoint layout, written and read here only.

A checkpoint is one ``ckpt-<nimg>.pt`` file that loads with
``torch.load(weights_only=True)`` and holds everything needed to resume bit-for-bit
(plain containers and tensors only, so the safe unpickler accepts it):

- ``format``: ``dist_gan.ckpt/2``; ``cfg``: the resolved recipe (``/1`` files load too: see ``_upgrade``);
- per network ``G``/``D``: ``G``, ``opt_G``, ``scaler_G`` (weights, Adam state per
  parameter index, fp16 loss scale), the same for ``D``; ``G_ema`` and
  ``G_ema_probes`` (``{"<half-life>": state_dict}``, only when the run keeps probes);
- the ``RunState`` counters at top level (``nimg``, ``iteration``, ``data_step``,
  ``rollbacks``, ``best_fid``, ``best_kimg``); ``world_size``; ``rng_per_rank``;
  ``loss_state`` for losses that carry state (BEGAN's k_t).

Files are written atomically (``dist_gan.files``), so a reader never sees a
half-written checkpoint; the last ``keep`` are kept. ``best.pt`` (same layout) is the
checkpoint with the lowest FID measured during training: never pruned, never resumed
from by ``resume=auto``, picked by ``which="best"``.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from dist_gan.engine.ema import StaleEMAWarning, probe_key, recalibrate_bn, stale_ema_message
from dist_gan.engine.state import RunState
from dist_gan.errors import UserError
from dist_gan.files import atomic_write, process_alive
from dist_gan.models import build_generator

NETS = ("G", "D")
FORMAT = "dist_gan.ckpt/2"
OLD_FORMATS = ("dist_gan.ckpt/1",)  # read and upgraded in memory by _upgrade
BEST = "best.pt"
WHICH = ("latest", "best")  # resolve_checkpoint(which=...): the newest numbered checkpoint, or best.pt
_NAME = re.compile(r"^ckpt-(\d{9,})\.pt$")


def checkpoint_name(nimg: int) -> str:
    """File name ordered by images seen, so the newest sorts last."""
    return f"ckpt-{nimg:09d}.pt"


def remove_stale_temps(ckpt_dir: Path) -> List[Path]:
    """Delete ``.ckpt-*.pt.tmp-<pid>`` files whose writer is gone (a kill mid-write); each is a whole checkpoint."""
    removed = []
    for p in ckpt_dir.glob(".ckpt-*.pt.tmp-*") if ckpt_dir.is_dir() else []:
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_resumable(payload: Dict[str, Any], model_cfg: Dict[str, Any]) -> None:
    """A checkpoint resumes only into the networks it was trained as: compare the recipes before loading."""
    saved = payload.get("cfg", {}).get("model", {})
    keys = [k for k in sorted(saved) if k in model_cfg and saved[k] != model_cfg[k]]
    if keys:
        differ = "; ".join(f"model.{k}={saved[k]!r} there, {model_cfg.get(k)!r} here" for k in keys)
        same = " ".join(f"model.{k}={str(saved[k]).lower() if isinstance(saved[k], bool) else saved[k]}" for k in keys)
        raise UserError(f"cannot resume from {payload.get('path', 'the checkpoint')}: its networks differ ({differ}); "
                        f"resume with {same}, or start a new run_dir")


def nimg_of(path: Path) -> int:
    """Images seen, from a ``ckpt-<nimg>.pt`` name or else from the file itself."""
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else int(load_checkpoint(path).get("nimg", 0))


# ------------------------------------------------------------------ layout
def make_payload(
    cfg: Dict[str, Any], run: RunState, nets: Dict[str, Dict[str, Any]], G_ema: nn.Module,
    ema_probes: Dict[float, nn.Module], loss_state: Optional[Dict[str, Any]], world_size: int,
    rng_per_rank: List[Dict[str, Any]],
) -> Dict[str, Any]:
    """The checkpoint dict. ``nets[net]`` holds a backend's ``weights``, ``adam`` and ``scaler`` states."""
    payload: Dict[str, Any] = {"cfg": cfg}
    for net in NETS:
        payload.update({net: nets[net]["weights"], f"opt_{net}": nets[net]["adam"], f"scaler_{net}": nets[net]["scaler"]})
    payload["G_ema"] = G_ema.state_dict()
    if ema_probes:
        payload["G_ema_probes"] = {probe_key(h): p.state_dict() for h, p in ema_probes.items()}
    payload.update(run.as_dict())
    payload.update(world_size=world_size, rng_per_rank=rng_per_rank)
    if loss_state is not None:
        payload["loss_state"] = loss_state
    return payload


def network_state(payload: Dict[str, Any], net: str) -> Dict[str, Any]:
    """One network's ``weights``, ``adam`` and ``scaler`` states (the scaler may be empty)."""
    return {"weights": payload[net], "adam": payload[f"opt_{net}"], "scaler": payload.get(f"scaler_{net}") or {}}


def restore_averages(payload: Dict[str, Any], G_ema: nn.Module, ema_probes: Dict[float, nn.Module]) -> None:
    """G_ema and the probes as saved; a probe new to this run starts from G_ema."""
    G_ema.load_state_dict(payload["G_ema"])
    saved = payload.get("G_ema_probes", {})
    for half_life, probe in ema_probes.items():
        probe.load_state_dict(saved.get(probe_key(half_life), payload["G_ema"]))


def run_state(payload: Dict[str, Any]) -> RunState:
    return RunState.from_dict(payload)


def list_checkpoints(ckpt_dir: Path) -> List[Path]:
    """Complete checkpoints in a folder, oldest first (temp files never match)."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` atomically (temp file, fsync, rename, folder fsync)."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_checkpoint(state: Dict[str, Any], ckpt_dir: Path, nimg: int, keep: int = 3) -> Path:
    """Write ``state`` as the checkpoint for ``nimg`` and prune all but the newest ``keep``."""
    path = ckpt_dir / checkpoint_name(nimg)
    atomic_save({"format": FORMAT, **state}, path)
    if keep > 0:
        for old in list_checkpoints(ckpt_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def save_best(state: Dict[str, Any], ckpt_dir: Path) -> Path:
    """Write ``state`` as ``best.pt``, replacing the previous best atomically."""
    path = ckpt_dir / BEST
    atomic_save({"format": FORMAT, **state}, path)
    return path


def resolve_checkpoint(path_or_run: str | Path, which: str = "latest") -> Path:
    """A checkpoint file, or in a run directory (or its ``checkpoints/``) the newest one or ``best.pt``."""
    p = Path(path_or_run)
    if which not in WHICH:
        raise UserError(f"--ckpt {which!r}: give one of {', '.join(WHICH)}")
    if p.is_file():
        if which == "best":
            raise UserError(f"--ckpt best picks from a run directory; {p} is already a checkpoint file")
        return p
    if p.is_dir() and which == "best":
        for d in (p / "checkpoints", p):
            if (d / BEST).is_file():
                return d / BEST
        raise UserError(f"no {BEST} in {p / 'checkpoints'}: the run did not track FID (log.fid_kimg=0) or measured none yet")
    if p.is_dir():
        for d in (p / "checkpoints", p):
            found = list_checkpoints(d)
            if found:
                return found[-1]
        raise UserError(f"no checkpoint (ckpt-*.pt) found in {p} or {p / 'checkpoints'}")
    raise UserError(f"checkpoint or run directory not found: {p}")


def load_checkpoint(path_or_run: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Dict[str, Any]:
    """Load a checkpoint with the safe unpickler; a clear error for anything that is not one.

    ``mmap=True`` maps the tensors instead of reading them: for a caller that needs only the
    recipe or the counters, the cost no longer grows with the networks and their optimizers.
    """
    path = resolve_checkpoint(path_or_run)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated file, not a torch file, unsafe pickle
        raise UserError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, *OLD_FORMATS):
        raise UserError(f"{path} is not a dist_gan checkpoint (expected format {FORMAT})")
    state["path"] = str(path)
    return _upgrade(state)


def _upgrade(state: Dict[str, Any]) -> Dict[str, Any]:
    """A ``/1`` checkpoint as ``/2`` reads it. In ``/1``, ``model.mbstd_group`` (stored as 4 by default) was
    read by stylegan2 alone; from ``/2`` dcgan reads it too, so an older non-stylegan2 run is recorded as
    the networks it trained: no minibatch stddev (else its resume would be refused as other networks)."""
    if state["format"] == "dist_gan.ckpt/1":
        model = state.get("cfg", {}).get("model", {})
        if model.get("arch") != "stylegan2" and "mbstd_group" in model:
            model["mbstd_group"] = 0
        state["format"] = FORMAT
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
    state = load_checkpoint(path_or_run)
    cfg = state["cfg"]
    if ema and ema_kimg is None:  # the main EMA: say so when it is mostly the untrained network
        train = cfg.get("train", {})
        stale = stale_ema_message(int(state.get("nimg", 0)), float(train.get("ema_kimg", 0)), float(train.get("ema_rampup", 0.05)))
        if stale:
            warnings.warn(f"{state['path']}: {stale}", StaleEMAWarning, stacklevel=2)
    G = build_generator(cfg["model"])
    G.load_state_dict(_generator_state(state, ema, ema_kimg))
    G.to(device).eval().requires_grad_(False)
    if bn_recal:
        recalibrate_bn(G, int(cfg["model"]["nz"]))
    return G, cfg


def _generator_state(state: Dict[str, Any], ema: bool, ema_kimg: Optional[float]) -> Dict[str, Any]:
    """The raw G, the main EMA or the probe asked for; a missing half-life names those the run kept."""
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
