"""The training loop: one function a reader can follow top to bottom.

Per iteration (``schedule.phases`` decides which phases run):

1. D phase: real batch from the stream, fakes from G, ``loss.d_loss``; D steps.
2. G phase: fakes through D (D frozen: its parameters take no gradient and the raw,
   un-wrapped D is called, so DDP never reduces D's gradients twice); G steps.
3. EMA of G, then every ``log.every`` steps the only host sync: metrics, NaN check,
   preemption check (all ranks agree), FID, samples and checkpoints at their kimg marks.

FID during training (``log.fid_kimg``) is measured by a tracker the entry point
hands in (``dist_gan.eval.tracking``: the evaluator sits above the engine); a new
best FID writes ``checkpoints/best.pt``.

When both phases run and there is no gradient accumulation, G's forward is computed
once and reused, exactly as the PyTorch DCGAN example does: D trains on
``fake.detach()``, then G's loss goes through the just-updated D on the same fakes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, gather_object
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dist_gan.data.format import open_shards
from dist_gan.data.remote import RetryPolicy
from dist_gan.data.stream import StreamLoader, to_model_range
from dist_gan.engine import checkpoint as ckpt
from dist_gan.engine.ema import stale_ema_message
from dist_gan.engine.monitor import Monitor, Throughput, plot_fid, plot_losses
from dist_gan.engine.schedule import phases, total_images
from dist_gan.engine.signals import PreemptionFlag
from dist_gan.engine.state import RunState
from dist_gan.engine.training import build_training
from dist_gan.errors import UserError
from dist_gan.imaging import save_grid
from dist_gan.losses import inert_options

GRID_LATENTS = 64  # the 8x8 sample grid


class FidProbe(Protocol):
    """What the loop needs of an FID tracker (``dist_gan.eval.tracking.FidTracker``); every rank calls both."""

    def start(self, rank: int, world: int, device: torch.device) -> str: ...

    def measure(self, G: nn.Module, nz: int) -> Optional[float]: ...


class TrainingDiverged(UserError):
    """A loss became NaN/inf and the NaN policy could not (or may not) recover."""


def _setup_run_dir(cfg: DictConfig, accelerator: Accelerator) -> Path:
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run_dir={run_dir} is a file, not a folder; choose another run_dir")
    try:  # every rank: a folder it cannot write fails here, in one line, before any work
        for sub in ("checkpoints", "samples"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"run_dir={run_dir} cannot be written ({exc.strerror or exc}); choose a writable folder") from None
    existing = ckpt.list_checkpoints(run_dir / "checkpoints")
    if existing and not cfg.resume:
        raise UserError(
            f"{run_dir} already holds checkpoints ({existing[-1].name}); "
            "pass resume=auto to continue it, or choose another run_dir"
        )
    if accelerator.is_main_process:
        for stale in ckpt.remove_stale_temps(run_dir / "checkpoints"):
            print(f"removed {stale.name}: a checkpoint write that a killed process never finished", file=sys.stderr)
        OmegaConf.save(cfg, run_dir / "recipe.yaml")
    accelerator.wait_for_everyone()
    return run_dir


def _resume_path(cfg: DictConfig, run_dir: Path) -> Optional[Path]:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        found = ckpt.list_checkpoints(run_dir / "checkpoints")
        return found[-1] if found else None  # auto on a fresh run just starts
    return ckpt.resolve_checkpoint(cfg.resume)


def train(cfg: DictConfig, fid: Optional[FidProbe] = None) -> Path:
    """Train per ``cfg`` and return the run directory. Works on 1 process or under accelerate launch.

    ``fid`` measures G_ema's FID every ``log.fid_kimg`` (``dist_gan.eval.tracking.tracker_for(cfg)``).
    """
    preempt = PreemptionFlag(grace_s=cfg.train.collective_timeout_s)
    try:
        return _train(cfg, preempt, fid)
    finally:
        preempt.restore()  # also when training stops on an error: the caller's handlers come back


def _train(cfg: DictConfig, preempt: PreemptionFlag, fid: Optional[FidProbe]) -> Path:
    # ------------------------------------------------------------ processes
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.collective_timeout_s))
    accelerator = Accelerator(mixed_precision="no", kwargs_handlers=[timeout])
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    batch, accum = cfg.train.batch, cfg.train.accum
    if batch % (world * accum):
        raise UserError(f"train.batch={batch} must divide evenly over {world} ranks x {accum} accumulation rounds")
    local_batch = batch // (world * accum)

    policy = RetryPolicy(retries=int(cfg.loader.retries), timeout_s=float(cfg.loader.timeout_s))
    shards = open_shards(cfg.data, policy)
    if shards.resolution != cfg.model.resolution:
        raise UserError(
            f"shards in {cfg.data} are {shards.resolution}px but model.resolution={cfg.model.resolution}; "
            f"repack with --resolution {cfg.model.resolution} or set model.resolution={shards.resolution}"
        )
    run_dir = _setup_run_dir(cfg, accelerator)

    # ------------------------------------------------------------ models, backend, resume
    resume_from = _resume_path(cfg, run_dir)
    saved: Optional[Dict[str, Any]] = ckpt.load_checkpoint(resume_from) if resume_from is not None else None
    if saved is not None:
        ckpt.check_resumable(saved, OmegaConf.to_container(cfg.model, resolve=True))
    training = build_training(cfg, accelerator, local_batch, accum, resume=saved)
    step, backend, G_ema = training.step, training.backend, training.G_ema
    run = training.restore(saved, networks=False) if saved is not None else RunState()  # the backend took the nets

    rng_states = saved.get("rng_per_rank") if saved else None
    if rng_states is not None and len(rng_states) == world:
        ckpt.restore_rng(rng_states[rank])
    else:  # fresh run, or a different world size: a per-rank stream of latents
        torch.manual_seed(cfg.seed * 7919 + rank + 1 + run.nimg)

    loader = StreamLoader(
        shards, local_batch, rank, world, seed=cfg.seed, workers=cfg.loader.workers,
        shuffle=cfg.loader.shuffle, xflip=cfg.loader.xflip, chunk_batches=cfg.loader.chunk_batches,
        pin_memory=device.type == "cuda",
        policy=policy, cache_dir=str(cfg.loader.cache_dir), cache_bytes=int(float(cfg.loader.cache_gb) * 2**30),
    )
    batches = loader.batches(start_step=run.data_step)
    grid_z = torch.randn(GRID_LATENTS, cfg.model.nz, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    end_nimg = total_images(cfg.train.kimg)

    monitor = None
    if accelerator.is_main_process:
        monitor = Monitor(run_dir, end_nimg, run.nimg, cfg.log.tensorboard, cfg.log.progress)
        monitor.print(
            f"[bold]dist_gan[/] {cfg.recipe}: {world} rank(s) on {device.type}, global batch {batch} "
            f"({local_batch}/rank x {accum}), {training.precision.mode}, {backend.name}, "
            + (f"resumed at {run.nimg / 1000:.2f} kimg from {resume_from.name}" if resume_from else "fresh run")
        )
        for line in inert_options(cfg.loss):
            monitor.print(f"[yellow]{line}")
        if not resume_from:
            reals = next(loader.batches(start_step=0))[:GRID_LATENTS]
            save_grid(reals.permute(0, 2, 3, 1).numpy(), run_dir / "samples" / "reals.png", nrow=8)

    def save_snapshot(regular: bool = True, best: bool = False) -> None:
        """The numbered checkpoint (pruned to ``log.keep``) and/or ``best.pt`` (never pruned), from one payload."""
        rng = accelerator_gather_rng(accelerator)  # every rank takes part in the RNG gather...
        payload = training.payload(run, world, rng, OmegaConf.to_container(cfg, resolve=True))  # ...and ZeRO's
        if accelerator.is_main_process:
            if regular:
                path = ckpt.save_checkpoint(payload, run_dir / "checkpoints", run.nimg, keep=cfg.log.keep)
                monitor.print(f"checkpoint {path.name} ({run.nimg / 1000:.2f} kimg)")
            if best:
                ckpt.save_best(payload, run_dir / "checkpoints")
        accelerator.wait_for_everyone()

    fid_every = total_images(cfg.log.fid_kimg) if cfg.log.fid_kimg > 0 else 0
    if fid_every and fid is None:
        fid_every = 0
        if monitor:
            monitor.print(f"[yellow]log.fid_kimg={cfg.log.fid_kimg:g} but no FID tracker was given to engine.loop.train; "
                          "start runs with dist_gan/train.py or dist-gan train to track FID")
    elif fid_every:
        with _rng_untouched():  # building Inception initialises layers from the global RNG
            line = fid.start(rank, world, device)  # every rank: the reference statistics are computed sharded
        if monitor:
            monitor.print(line)
    fid_seconds, run_start = 0.0, time.perf_counter()

    def measure_fid(record: Dict[str, float]) -> bool:
        """FID of G_ema into ``record`` and the log; True when it is the best so far."""
        nonlocal fid_seconds
        t0 = time.perf_counter()
        with _rng_untouched():
            value = fid.measure(G_ema, cfg.model.nz)
        if value is None:  # tracking is off (no weights): never a made-up number
            return False
        spent = time.perf_counter() - t0
        fid_seconds += spent
        improved = run.best_fid is None or value < run.best_fid
        if improved:
            run.best_fid, run.best_kimg = value, run.nimg / 1000
        record.update(fid=value, fid_s=spent, best_fid=run.best_fid)
        if monitor:
            share = fid_seconds / max(time.perf_counter() - run_start, 1e-9)
            monitor.show_fid(value, run.best_fid)
            monitor.print(f"FID {value:.2f} at {run.nimg / 1000:.2f} kimg (best {run.best_fid:.2f} at {run.best_kimg:.2f} kimg); "
                          f"{cfg.log.fid_n} samples in {spent:.1f} s, FID {share:.0%} of the run's time so far"
                          + (" [yellow](over 10%: raise log.fid_kimg or lower log.fid_n)" if share > 0.10 else ""))
        return improved

    def save_samples() -> None:
        """The grid from G_ema; from the raw G (in eval mode) while G_ema is mostly the untrained network."""
        if accelerator.is_main_process:
            stale = stale_ema_message(run.nimg, cfg.train.ema_kimg, cfg.train.ema_rampup)
            G = step.G_raw if stale else G_ema
            if stale and not told["raw_grid"]:
                monitor.print(f"[yellow]sample grids show the raw G until G_ema has averaged its "
                              f"{cfg.train.ema_kimg:g}-kimg half-life (train.ema_rampup=0)")
                told["raw_grid"] = True
            was_training = G.training
            with torch.no_grad(), training.precision.autocast(), _rng_untouched():  # a G with noise inputs draws
                imgs = G.eval()(grid_z)
            G.train(was_training)
            save_grid(imgs, run_dir / "samples" / f"fakes-{run.nimg:09d}.png", nrow=8)
            save_grid(imgs, run_dir / "samples" / "latest.png", nrow=8)

    def next_real() -> torch.Tensor:
        run.data_step += 1
        return to_model_range(next(batches), device, cfg.train.channels_last)

    told = {"raw_grid": False}
    meter = Throughput(run.nimg)
    tick_start = time.perf_counter()
    sample_every = max(1, total_images(cfg.log.sample_kimg))
    snap_every = max(1, total_images(cfg.log.snapshot_kimg))
    steps_since_log = 0

    # ------------------------------------------------------------ the loop
    while run.nimg < end_nimg:
        do_d, do_g = phases(run.iteration, cfg.optim.d_steps, cfg.optim.g_steps)
        lr_scale = training.set_learning_rates(run.nimg)
        ctx = training.context(run.nimg)
        shown = step(next_real, do_d, do_g, ctx, run.nimg)
        run.nimg += shown
        run.iteration += 1
        if monitor:
            monitor.advance(run.nimg)
        steps_since_log += 1
        done = run.nimg >= end_nimg
        crossed_sample, crossed_snap = _crossed(run.nimg, shown, sample_every), _crossed(run.nimg, shown, snap_every)
        crossed_fid = bool(fid_every) and _crossed(run.nimg, shown, fid_every)
        if steps_since_log < cfg.log.every and not done and not crossed_snap and not crossed_sample and not crossed_fid:
            continue

        # ------------------------------------------------ host sync point
        steps_since_log = 0
        record = step.pop_stats()
        finite = all(math.isfinite(v) for v in record.values())
        stop = preempt.agreed(accelerator)
        record.update(step=run.iteration, kimg=run.nimg / 1000, img_per_s=meter.tick(run.nimg),
                      noise_sigma=ctx.noise_sigma, lr_scale=lr_scale, time=time.perf_counter() - tick_start,
                      **_data_faults(accelerator, loader))
        if not finite:
            last = ckpt.list_checkpoints(run_dir / "checkpoints")
            if cfg.train.nan_policy == "rollback" and last and run.rollbacks < cfg.train.max_rollbacks:
                rollbacks = run.rollbacks + 1
                run = training.restore(ckpt.load_checkpoint(last[-1]))
                run.rollbacks = rollbacks
                batches = loader.batches(start_step=run.data_step)
                torch.manual_seed(cfg.seed * 7919 + rank + 1 + run.nimg + 104729 * rollbacks)  # a different path
                meter = Throughput(run.nimg)
                if monitor:
                    monitor.print(f"[yellow]non-finite loss {record}; rolled back to {last[-1].name} ({rollbacks}/{cfg.train.max_rollbacks})")
                continue
            where = f"at {run.nimg / 1000:.2f} kimg (iteration {run.iteration})"
            hint = f"last good checkpoint: {last[-1]}" if last else "no checkpoint was written yet"
            if monitor:
                monitor.close()
            raise TrainingDiverged(
                f"training diverged {where}: non-finite losses {record}. {hint}. "
                "Lower the learning rates, use train.precision=bf16 instead of fp16, or set train.nan_policy=rollback."
            )
        best = False
        wants_fid = bool(fid_every) and (crossed_fid or done) and not stop
        if cfg.train.ema_bn_recal and (wants_fid or crossed_sample or crossed_snap or done or stop):
            with _rng_untouched():
                training.recalibrate_averages()
        if wants_fid:
            best = measure_fid(record)
            meter = Throughput(run.nimg)  # the FID's time is not training time
        if monitor:
            monitor.log(record)
            if "fid" in record:
                plot_fid(run_dir / "metrics.jsonl", run_dir / "fid_curve.png")
        if crossed_sample or done:
            save_samples()
        if crossed_snap or done or stop or best:
            save_snapshot(regular=crossed_snap or done or stop, best=best)
        if stop:
            if monitor:
                monitor.print(f"[yellow]preempted ({preempt.signal_name}): checkpoint written at {run.nimg / 1000:.2f} kimg; exiting cleanly")
            break

    summary = _rank_summary(accelerator, backend, nimg=run.nimg, iteration=run.iteration, data_step=run.data_step,
                            bad_samples=loader.bad_samples, failed_shards=sorted(loader.failed_shards),
                            shard_retries=loader.retries, fetched_bytes=loader.fetched_bytes)
    if monitor:
        (run_dir / "final.json").write_text(json.dumps(summary, indent=2))
        if not summary["ranks_in_sync"]:
            monitor.print(f"[red]ranks disagree on the weights: {summary['weight_checksums']}")
        monitor.close()
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
    accelerator.wait_for_everyone()
    backend.close()
    accelerator.end_training()
    return run_dir


def _data_faults(accelerator: Accelerator, loader: StreamLoader) -> Dict[str, float]:
    """Skipped samples, unreadable shards and retried reads so far, summed over the ranks (one small all-reduce)."""
    counts = torch.tensor([loader.bad_samples, len(loader.failed_shards), loader.retries], dtype=torch.float64,
                          device=accelerator.device)
    if accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    bad, failed, retries = (int(v) for v in counts.tolist())
    return {"bad_samples": bad, "shards_failed": failed, "shard_retries": retries}


def _rank_summary(accelerator: Accelerator, backend, **counters: int) -> Dict[str, Any]:
    """Every rank's counters, fp16 loss scales and a float64 weight checksum, gathered: desync shows here."""
    with torch.no_grad():
        checksum = sum(float(p.double().sum()) for p in (*backend.G_raw.parameters(), *backend.D_raw.parameters()))
    mine = {"rank": accelerator.process_index, "weight_checksum": checksum, "loss_scales": backend.loss_scales(), **counters}
    ranks = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    sums = [r["weight_checksum"] for r in ranks]
    return {
        "world_size": accelerator.num_processes,
        "ranks": ranks,
        "weight_checksums": sums,
        "ranks_in_sync": all(s == sums[0] for s in sums)
        and all(r["iteration"] == ranks[0]["iteration"] and r["loss_scales"] == ranks[0]["loss_scales"] for r in ranks),
    }


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """Every RNG the run draws from, as it was: what a probe does never changes the training."""
    state = ckpt.capture_rng()
    try:
        yield
    finally:
        ckpt.restore_rng(state)


def _crossed(nimg: int, shown: int, every: int) -> bool:
    """True on the step whose ``shown`` images took ``nimg`` past a multiple of ``every``; never on a G-only
    step (it shows D no reals), which would repeat the mark of the step before it."""
    return nimg // every > (nimg - shown) // every


def accelerator_gather_rng(accelerator: Accelerator):
    """Every rank's RNG state, in rank order (rank 0 stores them all)."""
    state = ckpt.capture_rng()
    if accelerator.num_processes == 1:
        return [state]
    return gather_object([state])
