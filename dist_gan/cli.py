"""The ``dist-gan`` command line: a thin typer layer over the package.

Every command imports its implementation lazily so that ``dist-gan --help``
stays instant, and turns the package's own ``UserError`` into a one-line
message with exit code 2 instead of a traceback.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console

from dist_gan.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="dist_gan: distributed face-GAN training.")
data_app = typer.Typer(no_args_is_help=True, help="Dataset tools: pack images into WebDataset shards.")
app.add_typer(data_app, name="data")

console = Console(stderr=True)


def friendly(fn: Callable) -> Callable:
    """Report a UserError as a clear message and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(code=2) from None

    return wrapper


# ---------------------------------------------------------------- data
@data_app.command("pack")
@friendly
def data_pack(
    src: Path = typer.Argument(..., help="Folder or .zip of images (FFHQ, CelebA, anime or any folder layout)."),
    out: Path = typer.Argument(..., help="Output folder for shard-*.tar and manifest.json."),
    resolution: int = typer.Option(64, help="Output side length in pixels."),
    crop: str = typer.Option("auto", help="auto | celeba | center | none."),
    shard_size: int = typer.Option(2000, help="Samples per shard."),
    limit: Optional[int] = typer.Option(None, help="Pack only the first N files in sorted path order."),
    min_size: Optional[int] = typer.Option(None, help="Smallest crop side accepted [default: resolution // 2]."),
    overwrite: bool = typer.Option(False, help="Replace an existing pack made with different settings."),
    workers: Optional[int] = typer.Option(None, help="Decode processes [default: min(2, cores)]."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Pack images into deterministic WebDataset shards; bad files are skipped and counted."""
    from dist_gan.data.pack import pack

    pack(
        src, out, resolution=resolution, crop=crop, shard_size=shard_size, progress=progress,
        limit=limit, min_size=min_size, overwrite=overwrite, workers=workers,
    )


@data_app.command("synth")
@friendly
def data_synth(
    out: Path = typer.Argument(..., help="Folder (gets faces/NNNNNN.png) or a path ending in .zip."),
    n: int = typer.Option(2000, help="How many faces to draw."),
    size: int = typer.Option(64, help="Side length in pixels."),
    seed: int = typer.Option(0, help="Random seed; the same seed draws the same faces."),
) -> None:
    """Draw procedural cartoon faces (no download) for quickstart and tests."""
    from dist_gan.data.synthetic import draw_faces

    path = draw_faces(n, out, size=size, seed=seed, progress=True)
    console.print(f"[green]drew[/] {n} faces -> {path}")


# ---------------------------------------------------------------- evaluation
@app.command("eval")
@friendly
def eval_cmd(
    target: str = typer.Argument(..., metavar="RUN_OR_CHECKPOINT", help="A ckpt-*.pt file or a run directory (newest checkpoint)."),
    ref: str = typer.Option(..., "--ref", help="Reference set: a shard folder (manifest.json) or a zip/folder of images."),
    out: Path = typer.Option(..., "--out", help="Folder for report.json, report.md, grid.png, pairs.png."),
    fid: bool = typer.Option(False, "--fid", help="Frechet Inception Distance."),
    kid: bool = typer.Option(False, "--kid", help="Kernel Inception Distance."),
    inception_score: bool = typer.Option(False, "--is", help="Inception Score (needs weights with the fc head)."),
    detect: bool = typer.Option(False, "--detect", help="Count generated images with no face found (and real ones)."),
    leak: bool = typer.Option(False, "--leak", help="Nearest reference image of each sample (memorisation check)."),
    n: int = typer.Option(10000, "--n", "-n", help="Generated samples (spell it -n under torchrun)."),
    n_ref: Optional[int] = typer.Option(None, "--n-ref", help="Reference images (default: min(n, reference size))."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA generator (default) or the raw one."),
    detector: Optional[str] = typer.Option(None, "--detector", help="haar | anime | hog | mtcnn (default from the reference layout)."),
    cascade: Optional[str] = typer.Option(None, "--cascade", help="Cascade XML for the anime detector."),
    batch: int = typer.Option(250, "--batch", help="Images per generator/Inception batch."),
    seed: int = typer.Option(0, "--seed", help="Sample i uses latent seed seed*2**32+i."),
    inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="NVIDIA's Inception TorchScript or a torch-fidelity state dict."),
    all_checkpoints: bool = typer.Option(False, "--all-checkpoints", help="FID of every checkpoint of the run, fid_vs_kimg.png."),
) -> None:
    """Score a checkpoint: FID/KID/IS offline, face detectability, nearest-neighbour leak check.

    Several processes: ``torchrun --nproc_per_node K -m dist_gan.eval.run eval ... -n N`` (same flags;
    torchrun's parser rejects ``--n`` as ambiguous, so use ``-n``).
    """
    from dist_gan.eval.run import EvalOptions, evaluate

    picked = [m for m, on in (("fid", fid), ("kid", kid), ("is", inception_score), ("detect", detect), ("leak", leak)) if on]
    report = evaluate(EvalOptions(
        target=target, ref=ref, out=out, metrics=picked, n=n, n_ref=n_ref, ema=ema, detector=detector, cascade=cascade,
        batch=batch, seed=seed, inception_weights=inception_weights, all_checkpoints=all_checkpoints,
    ))
    if report is not None:
        Console().print(report["figures"])
        console.print(f"wrote {out / 'report.json'} and {out / 'report.md'}")


# ---------------------------------------------------------------- training
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def train(ctx: typer.Context) -> None:
    """Train on one process: ``dist-gan train recipe=smoke data=SHARDS run_dir=DIR key=value ...``.

    For several processes use ``accelerate launch dist_gan/train.py ...`` with the same arguments.
    """
    from dist_gan.train import main

    main(list(ctx.args))


@app.command()
@friendly
def quickstart(
    out: Path = typer.Option(Path("quickstart"), help="Folder for the drawn faces, the shards and the run."),
    n_images: int = typer.Option(2000, help="How many procedural faces to draw."),
    kimg: float = typer.Option(20.0, help="Training length in thousands of images shown to D."),
) -> None:
    """Draw a procedural face set (no download), pack it, train briefly on CPU, write the sample grid."""
    from dist_gan.quickstart import run_quickstart

    run_quickstart(out, n_images=n_images, kimg=kimg)
