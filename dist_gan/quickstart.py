"""``dist-gan quickstart``: the whole product on a laptop CPU, with no download.

Draws a procedural face set, packs it into WebDataset shards, trains the
``quickstart`` recipe briefly and points at the sample grid. Each stage is skipped
when its output already exists, so a second call just trains again.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console

from dist_gan.config import load_config
from dist_gan.data.pack import pack
from dist_gan.data.synthetic import draw_faces
from dist_gan.engine.loop import train
from dist_gan.eval.tracking import tracker_for


def run_quickstart(out: Path, n_images: int = 2000, kimg: Optional[float] = None, overrides: Sequence[str] = ()) -> Path:
    """Run draw -> pack -> train under ``out``; returns the run directory."""
    console = Console(stderr=True)
    out = Path(out)
    faces, shards, run_dir = out / "faces.zip", out / "shards", out / "run"
    # Validate the recipe before any work: a bad override fails in a second, not after drawing.
    length = [f"train.kimg={kimg}"] if kimg is not None else []
    cfg = load_config(["recipe=quickstart", f"data={shards}", f"run_dir={run_dir}", *length, *overrides])
    if not faces.exists():
        console.rule("[bold]1/3 drawing procedural faces")
        draw_faces(n_images, faces, size=cfg.model.resolution, seed=cfg.seed, progress=True)
    console.rule("[bold]2/3 packing WebDataset shards")
    pack(faces, shards, resolution=cfg.model.resolution, shard_size=500, overwrite=True)
    console.rule("[bold]3/3 training")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train(cfg, fid=tracker_for(cfg))
    grid = run_dir / "samples" / "latest.png"
    console.print(f"[green]done.[/] samples: {grid}  loss curve: {run_dir / 'loss_curve.png'}  run: {run_dir}")
    return run_dir
