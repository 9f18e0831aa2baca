"""The training loop: one function a reader can follow top to bottom.

Per iteration (``schedule.phases`` decides which phases run):

1. D phase: real batch from the stream, fakes from G, ``loss.d_loss``; D steps.
2. G phase: fakes through D (D frozen: its parameters take no gradient and the raw,
   un-wrapped D is called, so DDP never reduces D's gradients twice); G steps.
3. EMA of G, then every ``log.every`` steps the only host sync: metrics, NaN check,
   preemption check (all ranks agree), samples and checkpoints at their kimg marks.

When both phases run and there is no gradient accumulation, G's forward is computed
once and reused, exactly as the PyTorch DCGAN example does: D trains on
``fake.detach()``, then G's loss goes through the just-updated D on the same fakes.
"""

from __future__ import annotations

import json
import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from omegaconf import DictConfig, OmegaConf

from dist_gan import config as config_mod
from dist_gan.data.stream import StreamLoader, open_shards, to_model_range
from dist_gan.engine import checkpoint as ckpt
from dist_gan.engine.ema import make_probes, probe_key
from dist_gan.engine.monitor import Monitor, Throughput, plot_losses
from dist_gan.engine.backends import DDPBackend, DeepSpeedBackend
from dist_gan.engine.schedule import lr_factor, phases, total_images
from dist_gan.engine.signals import PreemptionFlag
from dist_gan.engine.step import TrainStep, build_networks
from dist_gan.errors import UserError
from dist_gan.imaging import save_grid
from dist_gan.losses import LossContext, augment_at, build_augment, build_loss, instance_noise_sigma

GRID_LATENTS = 64  # the 8x8 sample grid


class TrainingDiverged(UserError):
    """A loss became NaN/inf and the NaN policy could not (or may not) recover."""


def _setup_run_dir(cfg: DictConfig, accelerator: Accelerator) -> Path:
    run_dir = Path(cfg.run_dir)
    existing = ckpt.list_checkpoints(run_dir / "checkpoints")
    if existing and not cfg.resume:
        raise UserError(
            f"{run_dir} already holds checkpoints ({existing[-1].name}); "
            "pass resume=auto to continue it, or choose another run_dir"
        )
    if accelerator.is_main_process:
        for sub in ("checkpoints", "samples"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
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


def train(cfg: DictConfig) -> Path:
    """Train per ``cfg`` and return the run directory. Works on 1 process or under accelerate launch."""
    # ------------------------------------------------------------ processes
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.collective_timeout_s))
    accelerator = Accelerator(mixed_precision="no", kwargs_handlers=[timeout])
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    batch, accum = cfg.train.batch, cfg.train.accum
    if batch % (world * accum):
        raise UserError(f"train.batch={batch} must divide evenly over {world} ranks x {accum} accumulation rounds")
    local_batch = batch // (world * accum)

    shards = open_shards(cfg.data)
    if shards.resolution != cfg.model.resolution:
        raise UserError(
            f"shards in {cfg.data} are {shards.resolution}px but model.resolution={cfg.model.resolution}; "
            f"repack with --resolution {cfg.model.resolution} or set model.resolution={shards.resolution}"
        )
    run_dir = _setup_run_dir(cfg, accelerator)
    preempt = PreemptionFlag()

    # ------------------------------------------------------------ models
    G, D, G_ema, opt_G, opt_D, precision = build_networks(cfg, device)  # identical init on every rank
    ema_probes = make_probes(G_ema, cfg.train.ema_probes)  # eval-only averages at other half-lives
    loss_fn = build_loss(cfg.loss)

    # ------------------------------------------------------------ backend + resume
    nimg, iteration, data_step, rollbacks = 0, 0, 0, 0
    resume_from = _resume_path(cfg, run_dir)
    state: Optional[Dict[str, Any]] = ckpt.load_checkpoint(resume_from) if resume_from is not None else None
    if cfg.backend == "deepspeed":
        backend = DeepSpeedBackend(accelerator, G, D, opt_G, opt_D, precision, micro_batch=local_batch,
                                   accum=accum, zero_stage=cfg.zero_stage, initial_state=state)
    else:
        backend = DDPBackend.prepare(accelerator, G, D, opt_G, opt_D, precision)
        if state is not None:
            backend.import_state(state)
    G_raw = backend.G_raw

    def restore(state: Dict[str, Any], networks: bool = True) -> None:
        """Put networks, optimizers, scalers, EMA, loss state and counters back as the checkpoint has them."""
        nonlocal nimg, iteration, data_step
        if networks:
            backend.import_state(state)
        G_ema.load_state_dict(state["G_ema"])
        saved_probes = state.get("G_ema_probes", {})
        for half_life, probe in ema_probes.items():  # a probe new to this run starts from G_ema
            probe.load_state_dict(saved_probes.get(probe_key(half_life), state["G_ema"]))
        if hasattr(loss_fn, "load_state_dict") and "loss_state" in state:
            loss_fn.load_state_dict(state["loss_state"])
        nimg, iteration, data_step = state["nimg"], state["iteration"], state["data_step"]
        backend.set_lr("G", cfg.optim.g_lr)  # an elastic restart keeps the recipe's learning rates
        backend.set_lr("D", cfg.optim.d_lr)

    if state is not None:
        restore(state, networks=False)  # the backend took the networks and optimizers above
        rollbacks = state.get("rollbacks", 0)

    rng_states = state.get("rng_per_rank") if state else None
    if rng_states is not None and len(rng_states) == world:
        ckpt.restore_rng(rng_states[rank])
    else:  # fresh run, or a different world size: a per-rank stream of latents
        torch.manual_seed(cfg.seed * 7919 + rank + 1 + nimg)

    loader = StreamLoader(
        shards, local_batch, rank, world, seed=cfg.seed, workers=cfg.loader.workers,
        shuffle=cfg.loader.shuffle, xflip=cfg.loader.xflip, chunk_batches=cfg.loader.chunk_batches,
        pin_memory=device.type == "cuda",
    )
    batches = loader.batches(start_step=data_step)
    grid_z = torch.randn(GRID_LATENTS, cfg.model.nz, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    nz, end_nimg = cfg.model.nz, total_images(cfg.train.kimg)

    monitor = None
    if accelerator.is_main_process:
        monitor = Monitor(run_dir, end_nimg, nimg, cfg.log.tensorboard, cfg.log.progress)
        monitor.print(
            f"[bold]dist_gan[/] {cfg.recipe}: {world} rank(s) on {device.type}, global batch {batch} "
            f"({local_batch}/rank x {accum}), {precision.mode}, {backend.name}, "
            + (f"resumed at {nimg / 1000:.2f} kimg from {resume_from.name}" if resume_from else "fresh run")
        )
        if not resume_from:
            reals = next(loader.batches(start_step=0))[:GRID_LATENTS]
            save_grid(reals.permute(0, 2, 3, 1).numpy(), run_dir / "samples" / "reals.png", nrow=8)

    def make_checkpoint_state() -> Dict[str, Any]:
        return {
            "cfg": config_mod.to_dict(cfg),
            **backend.export_state(),  # collective under ZeRO: every rank gathers its Adam partitions
            "G_ema": G_ema.state_dict(),
            **({"G_ema_probes": {probe_key(h): p.state_dict() for h, p in ema_probes.items()}} if ema_probes else {}),
            "nimg": nimg, "iteration": iteration, "data_step": data_step, "rollbacks": rollbacks,
            "world_size": world, "rng_per_rank": accelerator_gather_rng(accelerator),
            **({"loss_state": loss_fn.state_dict()} if hasattr(loss_fn, "state_dict") else {}),
        }

    def save_snapshot() -> None:
        payload = make_checkpoint_state()  # every rank takes part in the RNG gather
        if accelerator.is_main_process:
            path = ckpt.save_checkpoint(payload, run_dir / "checkpoints", nimg, keep=cfg.log.keep)
            monitor.print(f"checkpoint {path.name} ({nimg / 1000:.2f} kimg)")
        accelerator.wait_for_everyone()

    def save_samples() -> None:
        if accelerator.is_main_process:
            with torch.no_grad(), precision.autocast():
                imgs = G_ema(grid_z)
            save_grid(imgs, run_dir / "samples" / f"fakes-{nimg:09d}.png", nrow=8)
            save_grid(imgs, run_dir / "samples" / "latest.png", nrow=8)

    def next_real() -> torch.Tensor:
        nonlocal data_step
        data_step += 1
        return to_model_range(next(batches), device, cfg.train.channels_last)

    step = TrainStep(
        backend=backend, G_ema=G_ema, loss_fn=loss_fn, precision=precision, accelerator=accelerator, nz=nz, local_batch=local_batch,
        accum=accum, global_batch=batch, ema_kimg=cfg.train.ema_kimg, ema_rampup=cfg.train.ema_rampup,
        compile=cfg.train.compile, ema_probes=ema_probes,
    )
    augment = build_augment(cfg.train.diffaug, cfg.train.diffaug_p, cfg.train.diffaug_translation)
    meter = Throughput(nimg)
    tick_start = time.perf_counter()
    sample_every = max(1, total_images(cfg.log.sample_kimg))
    snap_every = max(1, total_images(cfg.log.snapshot_kimg))
    steps_since_log = 0
    decaying = [net for net in ("G", "D") if cfg.optim.lr_decay_nets in ("both", net.lower())] if cfg.optim.lr_decay_kimg else []
    recipe_lr = {"G": cfg.optim.g_lr, "D": cfg.optim.d_lr}
    lr_scale = 1.0

    # ------------------------------------------------------------ the loop
    while nimg < end_nimg:
        do_d, do_g = phases(iteration, cfg.optim.d_steps, cfg.optim.g_steps)
        if decaying:  # set every step (a float per param group): resume and rollback need no extra state
            lr_scale = lr_factor(nimg, cfg.optim.lr_decay_kimg, cfg.optim.lr_decay_to)
            for net in decaying:
                backend.set_lr(net, recipe_lr[net] * lr_scale)
        sigma = instance_noise_sigma(cfg.loss.instance_noise, cfg.loss.noise_anneal_kimg, nimg)
        ctx = LossContext(noise_sigma=sigma, augment=augment_at(augment, cfg.train.diffaug_until_kimg, nimg))
        nimg += step(next_real, do_d, do_g, ctx, nimg)
        iteration += 1
        steps_since_log += 1
        done = nimg >= end_nimg
        if steps_since_log < cfg.log.every and not done and not _crossed(nimg, batch, snap_every) and not _crossed(nimg, batch, sample_every):
            continue

        # ------------------------------------------------ host sync point
        steps_since_log = 0
        record = step.pop_stats()
        finite = all(math.isfinite(v) for v in record.values())
        stop = preempt.agreed(accelerator)
        record.update(step=iteration, kimg=nimg / 1000, img_per_s=meter.tick(nimg), noise_sigma=ctx.noise_sigma,
                      lr_scale=lr_scale, time=time.perf_counter() - tick_start)
        if not finite:
            last = ckpt.list_checkpoints(run_dir / "checkpoints")
            if cfg.train.nan_policy == "rollback" and last and rollbacks < cfg.train.max_rollbacks:
                rollbacks += 1
                restore(ckpt.load_checkpoint(last[-1]))
                batches = loader.batches(start_step=data_step)
                torch.manual_seed(cfg.seed * 7919 + rank + 1 + nimg + 104729 * rollbacks)  # a different path
                meter = Throughput(nimg)
                if monitor:
                    monitor.print(f"[yellow]non-finite loss {record}; rolled back to {last[-1].name} ({rollbacks}/{cfg.train.max_rollbacks})")
                continue
            where = f"at {nimg / 1000:.2f} kimg (iteration {iteration})"
            hint = f"last good checkpoint: {last[-1]}" if last else "no checkpoint was written yet"
            if monitor:
                monitor.close()
            raise TrainingDiverged(
                f"training diverged {where}: non-finite losses {record}. {hint}. "
                "Lower the learning rates, use train.precision=bf16 instead of fp16, or set train.nan_policy=rollback."
            )
        if monitor:
            monitor.log(record)
        if _crossed(nimg, batch, sample_every) or done:
            save_samples()
        if _crossed(nimg, batch, snap_every) or done or stop:
            save_snapshot()
        if stop:
            if monitor:
                monitor.print(f"[yellow]preempted ({preempt.signal_name}): checkpoint written at {nimg / 1000:.2f} kimg; exiting cleanly")
            break

    summary = _rank_summary(accelerator, backend, nimg=nimg, iteration=iteration, data_step=data_step,
                            bad_samples=loader.bad_samples)
    if monitor:
        (run_dir / "final.json").write_text(json.dumps(summary, indent=2))
        if not summary["ranks_in_sync"]:
            monitor.print(f"[red]ranks disagree on the weights: {summary['weight_checksums']}")
        monitor.close()
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
    accelerator.wait_for_everyone()
    backend.close()
    accelerator.end_training()
    preempt.restore()
    return run_dir


def _rank_summary(accelerator: Accelerator, backend, **counters: int) -> Dict[str, Any]:
    """Every rank's counters, fp16 loss scales and a float64 weight checksum, gathered: desync shows here."""
    from accelerate.utils import gather_object

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


def _crossed(nimg: int, batch: int, every: int) -> bool:
    """True on the step at which ``nimg`` passed a multiple of ``every``."""
    return nimg // every > (nimg - batch) // every


def accelerator_gather_rng(accelerator: Accelerator):
    """Every rank's RNG state, in rank order (rank 0 stores them all)."""
    from accelerate.utils import gather_object

    state = ckpt.capture_rng()
    if accelerator.num_processes == 1:
        return [state]
    return gather_object([state])
