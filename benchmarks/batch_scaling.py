"""Does batch 512 pay? Global batch 64, 128 and 512 on 2 gloo ranks, FID tracked during each run.

Large batches pay on GPUs because images per second grow with the batch, so the fair
comparison is equal GPU time, not equal images. Every row trains on 2 real gloo ranks
(``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``, one thread each;
``final.json`` must say world size 2) for ``--budget-kimg`` times the row's GPU
throughput relative to batch 128, from one H100's measured img/s (``gpu_img_per_s``):
batch 128 gets the budget, batch 512 4.57x it, batch 64 about half. The estimated GPU seconds of a run are its images over that
img/s.

Each run tracks the FID of G_ema against its training shards (``log.fid_kimg``, ``log.fid_n``)
and keeps ``checkpoints/best.pt``. The best checkpoint is then scored for face detectability
(``dist-gan eval --ckpt best --detect``, MTCNN for CelebA (Haar in the rows scored before it was the
evaluator's), the anime LBP cascade for anime),
against the same detector's misses on as many real images.

Rows (``--rows``; overrides on ``recipe=bigbatch`` at ``--resolution``; each row spells out what it
changes, so it keeps its meaning when the recipe moves on):

- ``b512``, ``b128_sn``, ``b64_sn``: bigbatch's settings (spectral norm on D, G and D at 8e-4, a 5-kimg
  warm-up: the winner of the rows below) with the 10-kimg EMA the study ran with, at global batch 512, 128 and 64;
- ``b512_probes``: ``b512`` also keeping 3- and 30-kimg EMAs for ``dist-gan eval --ema-kimg`` (30 won:
  bigbatch now ships it); ``b512_ema30``: ``b512`` with the 30-kimg EMA tracked;
- ``b512_b0``: ``b512_ema30`` with Adam (0, 0.99) on both nets; ``b512_g16``, ``b512_g16_b0``,
  ``b512_b0_d16``: G at twice D's rate, the same with (0, 0.99), D at twice G's with (0, 0.99);
- ``b128_b0`` / ``b128_plain``: ``b512_b0`` / ``b512_b0_plain`` at batch 128;
- ``b512_b0_near`` / ``b512_b0_hinge`` / ``b512_b0_plain`` / ``b512_b0_ramp``: ``b512_b0`` with G's transposed
  convs started as nearest upsampling + 3x3 conv, with the hinge loss, with no smoothing or instance noise
  (bigbatch as it ships), and with the EMA ramp-up at 20% (the 30-kimg half-life uncapped from 150 kimg) plus 15- and 60-kimg probes;
- ``b512_plain_nobn`` / ``b512_plain_mbstd`` / ``b512_plain_xflip``: bigbatch as it ships with D's batch norms
  removed (SNGAN's D), with a minibatch-stddev channel at 4x4 (groups of 4), and
  with the reals mirrored at random (``loader.xflip``); ``b512_plain_lr4`` / ``b512_plain_trans``: with both rates
  at 4e-4, with DiffAugment translation (as ``anime64``); ``b512_plain_recal`` / ``b128_plain_recal``: bigbatch as it
  ships, G_ema's BatchNorm statistics re-estimated for its own weights (``train.ema_bn_recal``), at 512 and 128;
  ``b512_recal_ramp``: ``b512_plain_recal`` with the EMA ramp-up at 20% and 10- and 60-kimg probes;
  ``b512_recal_hinge`` / ``b512_recal_g16`` / ``b512_recal_ngf128`` / ``b512_recal_ndf128``: ``b512_plain_recal``
  with the hinge loss, with G at 1.6e-3, with G twice as wide (``model.ngf=128``), with D twice as wide (``model.ndf=128``);
- ``b512_ttur``, ``b128``, ``b64``: bigbatch's earlier settings (TTUR G 1e-4 / D 4e-4, no spectral norm);
- ``b512_sqrt`` / ``b512_linear``: those rates scaled from batch 128 by sqrt(4) / 4, with a warm-up;
- ``b512_sn_sqrt`` / ``b512_sn_16e4`` / ``b512_sn_hinge``: spectral norm on D with the TTUR rates
  sqrt-scaled, with both rates at 1.6e-3, and with hinge loss at G 1.6e-3 / D 8e-4 (as ``quickstart``);
- ``b512_img`` / ``b512_ttur_img``: equal images instead: batch 512 for batch 128's kimg;
- ``b512_recal_g2`` / ``b512_recal_d2``: ``b512_plain_recal`` with two G steps per D step, and two D steps per G step;
- ``textbook512``: the textbook DCGAN (recipe ``dcgan64``: Adam 2e-4 (0.5, 0.999), no smoothing,
  no noise) at batch 512 for bigbatch's kimg, its G_ema set to follow G (``train.ema_kimg=0.001``:
  the textbook has no average).

Writes under ``--out`` (default ``benchmarks/results/batch_scaling``): ``results.json``,
``results.md`` (one table: each row's recipe and the keys it changes), ``command.txt`` (the exact commands,
in table order), ``fid_curves.png`` (FID against
kimg and against estimated GPU time, every run), ``samples_<data>.png`` (reals, then each
row's best checkpoint). ``--merge`` keeps the rows already there, so the
study grows run by run; a finished run (same command) is reused, not retrained.

    python benchmarks/batch_scaling.py --data celeba --resolution 32 --budget-kimg 40 --rows b128 b512 --merge
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness as H  # noqa: E402
from dist_gan.engine.monitor import read_metrics  # noqa: E402

DEFAULT_OUT = H.REPO / "benchmarks" / "results" / "batch_scaling"
STEP_JSON = H.REPO / "benchmarks" / "results" / "nvidia-h100-80gb-hbm3.json"
SWEEP_JSON = H.REPO / "benchmarks" / "results" / "scaling_gpu.json"
REF_BATCH = 128  # the batch that gets --budget-kimg; the others get the same GPU time
PINNED = ["train.ema_kimg=10", "optim.g_betas=[0.5,0.999]", "optim.d_betas=[0.5,0.999]", "loss.real_label=0.9",
          "loss.instance_noise=0.02", "train.ema_bn_recal=false"]
"""bigbatch keys every ``recipe=bigbatch`` row spells out because the study ran with them (the recipe has since
moved on to a 30-kimg EMA, Adam beta1 0, no smoothing or noise and G_ema's own BN statistics), so a recorded
row reruns as it ran."""

TTUR = {"model.spectral_norm": "false", "optim.g_lr": "1e-4", "optim.d_lr": "4e-4", "optim.warmup_kimg": "0"}
"""``bigbatch``'s settings before this study: TTUR G 1e-4 / D 4e-4, no spectral norm, no warm-up."""


B0 = {"model.spectral_norm": "true", "optim.g_lr": "8e-4", "optim.d_lr": "8e-4", "optim.warmup_kimg": "5",
      "train.ema_kimg": "30", "optim.g_betas": "[0.0,0.99]", "optim.d_betas": "[0.0,0.99]"}
"""``bigbatch`` as the steps80 study shipped it: beta1 0, a 30-kimg EMA (smoothing 0.9 and noise 0.02 from ``PINNED``)."""


def _spelled(base: Dict[str, str], *over: str) -> List[str]:
    """``base`` spelled out, then ``over`` (a key already there keeps its place), so a row means one thing forever."""
    keys = dict(base)
    keys.update(o.split("=", 1) for o in over)
    return [f"{k}={v}" for k, v in keys.items()]


def _ttur(*over: str) -> List[str]:
    return _spelled(TTUR, *over)


def _b0(*over: str) -> List[str]:
    return _spelled(B0, *over)


def _plain(*over: str) -> List[str]:
    """``bigbatch`` as it ships (``b512_b0_plain``: no smoothing, no noise), then ``over``."""
    return _b0("loss.real_label=1.0", "loss.instance_noise=0", *over)


def _recal(*over: str) -> List[str]:
    """``bigbatch`` as it ships now (``b512_plain_recal``: G_ema samples with its own BN statistics), then ``over``."""
    return _plain("train.ema_bn_recal=true", *over)


ROWS: Dict[str, Dict[str, Any]] = {
    # bigbatch's settings (spectral norm on D, G and D at 8e-4, 5-kimg warm-up, the pinned 10-kimg EMA), at three batch sizes
    "b64_sn": {"batch": 64, "overrides": ["train.batch=64"]},
    "b128_sn": {"batch": 128, "overrides": ["train.batch=128"]},
    "b512": {"batch": 512, "overrides": ["model.spectral_norm=true", "optim.g_lr=8e-4", "optim.d_lr=8e-4",
                                         "optim.warmup_kimg=5"]},
    # the earlier settings (TTUR), and the rules tried on them
    "b64": {"batch": 64, "overrides": _ttur("train.batch=64")},
    "b128": {"batch": 128, "overrides": _ttur("train.batch=128")},
    "b512_ttur": {"batch": 512, "overrides": _ttur()},
    "b512_sqrt": {"batch": 512, "overrides": _ttur("optim.lr_scaling=sqrt", "optim.ref_batch=128", "optim.warmup_kimg=5")},
    "b512_linear": {"batch": 512, "overrides": _ttur("optim.lr_scaling=linear", "optim.ref_batch=128", "optim.warmup_kimg=10")},
    # spectral norm on D, which lets celeba64 run both nets at 4e-4 (docs/findings.md), at four rate settings
    "b512_sn_sqrt": {"batch": 512, "overrides": _ttur("model.spectral_norm=true", "optim.lr_scaling=sqrt", "optim.ref_batch=128",
                                                      "optim.warmup_kimg=5")},
    "b512_sn_16e4": {"batch": 512, "overrides": ["model.spectral_norm=true", "optim.g_lr=1.6e-3", "optim.d_lr=1.6e-3",
                                                 "optim.warmup_kimg=5"]},
    "b512_sn_hinge": {"batch": 512, "overrides": ["model.spectral_norm=true", "loss.name=hinge", "optim.g_lr=1.6e-3",
                                                  "optim.d_lr=8e-4", "optim.warmup_kimg=5"]},
    # DiffAugment on D's inputs: on a 10k-image set D can memorise over many passes; augmenting reals and fakes alike slows that
    "b512_da": {"batch": 512, "overrides": ["model.spectral_norm=true", "optim.g_lr=8e-4", "optim.d_lr=8e-4",
                                            "optim.warmup_kimg=5", "train.diffaug=color,translation"]},
    # the textbook at 2e-4 halves its FID over the second half of a run, bigbatch at 8e-4 only cuts it by a third:
    # both rates falling linearly to 10% over the second half of the row's kimg (placed by row_overrides)
    "b512_decay": {"batch": 512, "overrides": ["model.spectral_norm=true", "optim.g_lr=8e-4", "optim.d_lr=8e-4",
                                               "optim.warmup_kimg=5"], "decay": (0.5, 1.0, 0.1)},
    # bigbatch with two eval-only EMA probes (half-lives 3 and 30 kimg; training unchanged): score them with
    # dist-gan eval RUN --ema-kimg 3 (or 30) beside the row's own 10-kimg G_ema
    "b512_probes": {"batch": 512, "overrides": ["model.spectral_norm=true", "optim.g_lr=8e-4", "optim.d_lr=8e-4",
                                                "optim.warmup_kimg=5", "train.ema_probes=[3,30]"]},
    # bigbatch as it shipped after the probes: the 30-kimg EMA (its tracked FID and best.pt follow that G_ema)
    "b512_ema30": {"batch": 512, "overrides": ["model.spectral_norm=true", "optim.g_lr=8e-4", "optim.d_lr=8e-4",
                                               "optim.warmup_kimg=5", "train.ema_kimg=30"]},
    # R1 on D's reals, lazily every 16 D steps (StyleGAN2's regulariser), on top of spectral norm
    "b512_r1": {"batch": 512, "overrides": ["model.spectral_norm=true", "optim.g_lr=8e-4", "optim.d_lr=8e-4",
                                            "optim.warmup_kimg=5", "loss.r1_gamma=0.1"]},
    # 714 steps at batch 512 in 365 kimg: a step-limited run, so G's step size and D's momentum were tried on the
    # shipped recipe: G at twice D's rate, Adam beta1 0 on both nets (SNGAN, BigGAN), both together, and beta1 0 with D at twice G's rate
    "b512_g16": {"batch": 512, "overrides": ["model.spectral_norm=true", "optim.g_lr=1.6e-3", "optim.d_lr=8e-4",
                                             "optim.warmup_kimg=5", "train.ema_kimg=30"]},
    "b512_b0": {"batch": 512, "overrides": _b0()},
    "b512_g16_b0": {"batch": 512, "overrides": _b0("optim.g_lr=1.6e-3")},
    "b512_b0_d16": {"batch": 512, "overrides": _b0("optim.d_lr=1.6e-3")},
    # b512_b0 at batch 128 (the small-batch rival at equal GPU time), then with no smoothing or noise
    "b128_b0": {"batch": 128, "overrides": _b0("train.batch=128")},
    "b128_plain": {"batch": 128, "overrides": _b0("train.batch=128", "loss.real_label=1.0", "loss.instance_noise=0")},
    # b512_b0 plus one change each: G's transposed convs started as nearest upsampling + 3x3 conv (won the
    # quickstart), the hinge loss (won the quickstart over BCE with smoothing), no smoothing or instance noise
    "b512_b0_near": {"batch": 512, "overrides": _b0("model.g_init=nearest")},
    "b512_b0_hinge": {"batch": 512, "overrides": _b0("loss.name=hinge")},
    "b512_b0_plain": {"batch": 512, "overrides": _b0("loss.real_label=1.0", "loss.instance_noise=0")},
    # the 5% ramp-up caps the 30-kimg half-life at 18 kimg by 365 kimg; at 20% it is 30 from 150 kimg on, and two
    # eval-only probes (15 and 60 kimg) score the half-lives around it from the same run
    "b512_b0_ramp": {"batch": 512, "overrides": _b0("train.ema_rampup=0.2", "train.ema_probes=[15,60]")},
    # D's side of bigbatch as it ships: SNGAN's D (spectral norm, no batch norm)
    "b512_plain_nobn": {"batch": 512, "overrides": _plain("model.d_norm=none")},
    # recall stays at 0.02-0.04 on every CelebA row: a minibatch-stddev channel lets D see a batch of look-alikes
    "b512_plain_mbstd": {"batch": 512, "overrides": _plain("model.mbstd_group=4")},
    # 365 kimg is 37 passes over celeba-10k: mirrored reals (StyleGAN2's --mirror) give D twice the distinct faces
    "b512_plain_xflip": {"batch": 512, "overrides": _plain("loader.xflip=true")},
    # both rates halved (beta1 0 may leave 8e-4 above the best rate), and the anime64 recipe's DiffAugment translation
    "b512_plain_lr4": {"batch": 512, "overrides": _plain("optim.g_lr=4e-4", "optim.d_lr=4e-4")},
    "b512_plain_trans": {"batch": 512, "overrides": _plain("train.diffaug=translation")},
    # G_ema samples with G's BN statistics, copied each step; at 8e-4 G moves far within the EMA's 18-kimg window,
    # so the averaged weights get statistics fitted to themselves (train.ema_bn_recal); the training is unchanged
    "b512_plain_recal": {"batch": 512, "overrides": _recal()},
    # with G_ema's own statistics a longer average may pay where it lost with G's: the 20% ramp-up lets the
    # 30-kimg half-life hold from 150 kimg on, and eval-only probes score 10 and 60 kimg from the same run
    "b512_recal_ramp": {"batch": 512, "overrides": _recal("train.ema_rampup=0.2", "train.ema_probes=[10,60]")},
    # one change each on bigbatch as it ships: the hinge loss (65.9 against 69.5 on b512_b0), G at twice D's rate
    # (lost with G's statistics, which fit G_ema worse the faster G moves), and G twice as wide (1.07M -> 3.45M
    # parameters at 32 px; D's 0.66M unchanged)
    "b512_recal_hinge": {"batch": 512, "overrides": _recal("loss.name=hinge")},
    "b512_recal_g16": {"batch": 512, "overrides": _recal("optim.g_lr=1.6e-3")},
    "b512_recal_ngf128": {"batch": 512, "overrides": _recal("model.ngf=128")},
    # D sits near chance all run (mean D(real) / D(fake) 0.52 / 0.48 at the end): D twice as wide (0.66M -> 2.64M)
    "b512_recal_ndf128": {"batch": 512, "overrides": _recal("model.ndf=128")},
    # the D:G schedule: two G steps per D step (G-only iterations show D no reals, so G gets 1428 steps in the
    # same kimg), and two D steps per G step (G gets 357)
    "b512_recal_g2": {"batch": 512, "overrides": _recal("optim.g_steps=2")},
    "b512_recal_d2": {"batch": 512, "overrides": _recal("optim.d_steps=2")},
    "textbook512": {"batch": 512, "recipe": "dcgan64", "overrides": ["train.batch=512", "train.ema_kimg=0.001", "train.ema_rampup=0"]},
    # equal images: batch 512 given only batch 128's kimg (a prefix of the long run: no rate depends on the length)
    "b512_img": {"batch": 512, "overrides": [], "equal_images": True},
    "b512_ttur_img": {"batch": 512, "overrides": _ttur(), "equal_images": True},
}
# b512_plain_recal's batch-128 rival: b128_plain with G_ema's own statistics
ROWS["b128_plain_recal"] = {"batch": 128, "overrides": [*ROWS["b128_plain"]["overrides"], "train.ema_bn_recal=true"]}


def gpu_img_per_s(batch: int) -> float:
    """One H100's training img/s at this batch: dist_gan's full step where it was measured (128, 512:
    ``nvidia-h100-80gb-hbm3.json``), else batch 128's scaled by the scaling sweep's ratio for the batch
    (``scaling_gpu.json``, a torch-only proxy of the same step measured at every batch)."""
    step = json.loads(STEP_JSON.read_text())["summary"]
    measured = {128: step["step128_dist_gan_img_s"], 512: step["step512_dist_gan_img_s"]}
    if batch in measured:
        return float(measured[batch])
    sweep = json.loads(SWEEP_JSON.read_text())["results"]["by_per_gpu_batch"]
    if str(batch) not in sweep:
        raise SystemExit(f"{SWEEP_JSON} has no GPU throughput for batch {batch}; it has {', '.join(sweep)}")
    return float(measured[128]) * sweep[str(batch)]["img_per_s"] / sweep["128"]["img_per_s"]


def row_kimg(batch: int, budget_kimg: float) -> float:
    """The kimg that gives ``batch`` the GPU time batch 128 spends on ``budget_kimg``."""
    return round(budget_kimg * gpu_img_per_s(batch) / gpu_img_per_s(REF_BATCH), 1)


# keys that change the work per image: the H100 img/s were measured with bigbatch's nets and its 1:1 schedule, so
# a row that changes one runs bigbatch's kimg (equal images) and gets no GPU-time estimate
COST_KEYS = ("model.ngf", "model.ndf", "optim.d_steps", "optim.g_steps")


def gpu_s_est(row: Dict[str, Any], kimg: float) -> Optional[float]:
    """Estimated H100 seconds of ``kimg`` images at the row's batch; None where its nets were never timed there."""
    if any(o.split("=", 1)[0] in COST_KEYS for o in row["overrides"]):
        return None
    return kimg * 1000 / gpu_img_per_s(row["batch"])


def row_overrides(row: Dict[str, Any], kimg: float) -> List[str]:
    """The study's pinned bigbatch keys (``PINNED``), the row's overrides, then its learning-rate decay placed
    at fractions of its own length (``decay``: start, end, final factor), so a row means one schedule at any budget."""
    over = (PINNED if row.get("recipe", "bigbatch") == "bigbatch" else []) + list(row["overrides"])
    if "decay" in row:
        start, end, final = row["decay"]
        over += [f"optim.lr_decay_kimg=[{start * kimg:g},{end * kimg:g}]", f"optim.lr_decay_to={final:g}"]
    return over


def run_row(name: str, data: str, shards: Path, work: Path, resolution: int, budget_kimg: float, seed: int,
            fid_n: int, fid_points: int, det_n: int, rescore_n: int = 0) -> Dict[str, Any]:
    """Train one row on 2 ranks (reused when the same command finished before), then detect faces on best.pt."""
    row = ROWS[name]
    kimg = budget_kimg if row.get("equal_images") else row_kimg(row["batch"], budget_kimg)
    run = work / data / f"{name}-s{seed}"
    recipe = row.get("recipe", "bigbatch")
    overrides = row_overrides(row, kimg)
    args = [f"recipe={recipe}", f"data={shards}", f"run_dir={run}", f"seed={seed}", f"train.kimg={kimg}",
            f"model.resolution={resolution}", *overrides, "loader.workers=1", "log.tensorboard=false",
            "log.progress=false", f"log.fid_kimg={kimg / fid_points:g}", f"log.fid_n={fid_n}",
            f"log.sample_kimg={kimg}", f"log.snapshot_kimg={kimg}", "log.keep=1"]
    print(f"{data} {name} s{seed}: {kimg} kimg at batch {row['batch']}", flush=True)
    wall, final = H.train_two_ranks(args, run, work / data / f"{name}-s{seed}.log", f"{data} {name} s{seed}")
    curve = [{"kimg": r["kimg"], "fid": r["fid"], "fid_s": r["fid_s"]} for r in read_metrics(run / "metrics.jsonl") if "fid" in r]
    best = min(curve, key=lambda p: p["fid"])
    detect = detect_best(run, shards, data, det_n)
    rescored = rescore_best(run, shards, rescore_n) if rescore_n else None
    return {"data": data, "row": name, "seed": seed, "batch": row["batch"], "recipe": recipe, "overrides": overrides,
            "kimg": kimg, "fid_points": fid_points, "resolution": resolution, "fid_n": fid_n, "best_fid": best["fid"], "best_kimg": best["kimg"],
            "final_fid": curve[-1]["fid"], "curve": curve, "fid_s_each": sum(p["fid_s"] for p in curve) / len(curve),
            "gpu_s_est": gpu_s_est(row, kimg), "cpu_wall_s": wall, "world_size": final["world_size"],
            "train_img_per_s": H.last_metrics(run).get("img_per_s"), "detect": detect, "run": H.shown_path(run),
            **({"rescored": rescored} if rescored else {}),
            "command": "ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 " + H.shown_command(H.two_rank_cmd(args))}


def detect_best(run: Path, shards: Path, data: str, n: int) -> Dict[str, Any]:
    """Face-detector misses on ``n`` samples of best.pt and on ``n`` reals (the floor), with improved precision
    and recall (k = 3) of the same samples; reused while the command is unchanged."""
    report, cmd = H.eval_once(run, run / "eval_detect", ["--ckpt", "best", "--detect", "--pr", "--ref", str(shards),
                                                         "-n", str(n), *H.detector_args(data)], "detect")
    s, pr = H.scores(report), report["metrics"].get("pr", {})
    return {"gen_no_face": s["gen_no_face"], "ref_no_face": s["ref_no_face"], "n": s["gen_n"], "detector": s["detector"],
            "precision": pr.get("precision"), "recall": pr.get("recall"), "command": H.shown_command(cmd)}


def changes(recipe: str, overrides: Sequence[str]) -> List[str]:
    """The overrides that change ``recipe`` as it ships now, each key once with its last value: the table's
    reading of a row (the exact command, with every key the row spells out, is in ``command.txt``)."""
    from omegaconf import OmegaConf

    from dist_gan.config import load_config

    base, full = load_config([f"recipe={recipe}"]), load_config([f"recipe={recipe}", *overrides])
    last = dict(o.split("=", 1) for o in overrides)
    return [f"{k}={v}" for k, v in last.items() if OmegaConf.select(full, k) != OmegaConf.select(base, k)]


def rescore_best(run: Path, shards: Path, n: int) -> Dict[str, Any]:
    """best.pt's FID at ``n`` samples against ``n`` training images. FID's bias shrinks as n grows and lifts
    both scores of a ratio, so a ratio taken at the in-training n reads closer to 1 than at a larger n."""
    report, cmd = H.eval_once(run, run / f"eval_fid{n}", ["--ckpt", "best", "--fid", "--ref", str(shards), "-n", str(n)],
                              f"FID at n = {n}")
    return {"n": n, "fid": H.scores(report)["fid"], "command": H.shown_command(cmd)}


def shards_dir(work: Path, data: str, resolution: int, limit: Optional[int]) -> Path:
    """Where a study packs (and --render finds) one data set's shards."""
    return work / (f"shards-{data}-{resolution}" + (f"-{limit}" if limit else ""))


def key(r: Dict[str, Any]) -> str:
    return f"{r['data']}/{r['row']}/s{r['seed']}"


def ordered(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The runs in table order (data, batch, row, seed): the table and ``command.txt`` list them alike."""
    return sorted(results["runs"].values(), key=lambda r: (r["data"], r["batch"], r["row"], r["seed"]))


def render(results: Dict[str, Any]) -> str:
    rows = []
    for r in ordered(results):
        d = r["detect"]
        rows.append((r["data"], r["row"], r["seed"], r["batch"], H.fmt(r["kimg"], ".1f"), H.fmt(r["gpu_s_est"], ".1f"),
                     H.fmt(r["best_fid"], ".1f") + (f" ({r['rescored']['fid']:.1f} at n = {r['rescored']['n']})" if "rescored" in r else ""),
                     H.fmt(r["best_kimg"], ".1f"), H.fmt(r["final_fid"], ".1f"), len(r["curve"]),
                     f"{100 * d['gen_no_face'] / d['n']:.1f} / {100 * d['ref_no_face'] / d['n']:.1f} {d['detector']['name']}",
                     H.pr_cell(d),
                     H.fmt(r["cpu_wall_s"] / 60, ".0f"),
                     f"`{r['recipe']}` " + (" ".join(changes(r["recipe"], r["overrides"])) or "as it ships")))
    lines = ["# Batch 512 against 64 and 128 at equal GPU time, 2 gloo ranks", "",
             f"Budget: {results['budget_kimg']:g} kimg at batch 128. Every run: its recipe (`bigbatch`; the textbook row: `dcgan64`) with the keys of the last column changed from the recipe as it ships, at {results['resolution']} px, "
             f"2 gloo ranks. kimg = budget x (H100 img/s at the batch / at batch 128), so each row gets the GPU time batch 128 "
             f"spends on the budget; the `_img` rows instead get batch 128's kimg (equal images); GPU s -: a row that changes the nets' widths or the D:G schedule, whose H100 speed was never measured, runs bigbatch's kimg. FID of G_ema against the training shards, n = {results['fid_n']}, measured "
             f"at the end and, where FID pts is 2, half way too; best = checkpoints/best.pt (in brackets: re-scored by `dist-gan eval --fid` at a larger n, against as many training images). No face: detector misses on best.pt's "
             f"samples / on as many reals (%); P / R: improved precision and recall (k = 3) of the same samples against as many reals (-: not scored). Wall min: the whole CPU run, FID measurements included. Machine: {results['machine']}.", ""]
    lines += H.md_table(("data", "row", "seed", "batch", "kimg", "GPU s (est.)", "best FID", "at kimg", "final FID", "FID pts",
                         "no face % (gen / real, detector)", "P / R", "wall min", "recipe and changes"), rows)
    lines += ["", "Commands: `command.txt` (one per run, in table order: every key each row spells out; run from the repository root)."]
    if results.get("notes"):
        lines += ["", *results["notes"]]
    return "\n".join(lines) + "\n"


def plot(results: Dict[str, Any], out: Path) -> None:
    """FID against kimg (left) and against estimated GPU seconds (right), one line per run."""
    H.plot_fid_curves(results, out, order=lambda r: (r["batch"], r["row"]), label=lambda r: f"{r['row']} s{r['seed']}",
                      right_x=lambda r, p: None if r["gpu_s_est"] is None else p["kimg"] * r["gpu_s_est"] / r["kimg"],
                      right_label="estimated H100 seconds (untimed rows left out)",
                      group=lambda r: r["row"])


def figure(results: Dict[str, Any], out: Path, shards: Dict[str, Path]) -> None:
    """Per data set: reals, then the best checkpoint of each row (seed 0 where there is one): of the rows in
    ``results["figure_rows"]`` in that order where the study names them (``--figure-rows``), else of every row."""
    import numpy as np
    import torch

    from dist_gan.engine.checkpoint import load_generator
    from dist_gan.imaging import to_uint8

    chosen = list(results.get("figure_rows") or [])
    place = {row: i for i, row in enumerate(chosen)}
    for data, path in shards.items():
        runs = [r for r in results["runs"].values() if r["data"] == data and (not chosen or r["row"] in place)]
        seen: Dict[str, Dict[str, Any]] = {}
        for r in sorted(runs, key=lambda r: (place.get(r["row"], 0), r["batch"], r["row"], r["seed"])):
            seen.setdefault(r["row"], r)
        best = {name: H.recorded_path(r["run"]) / "checkpoints" / "best.pt" for name, r in seen.items()}
        gone = sorted(key(seen[name]) for name, path in best.items() if not path.is_file())
        if gone:
            print(f"samples_{data}.png kept as it was: {len(gone)} run(s) have no best.pt here ({', '.join(gone[:3])}...)")
            continue
        if not seen:
            continue
        panels = [("reals", data, H.real_grid(path))]
        for name, r in seen.items():
            G, cfg = load_generator(best[name])
            z = torch.randn(H.GRID_N, int(cfg["model"]["nz"]), generator=torch.Generator().manual_seed(H.GRID_SEED))
            with torch.no_grad():
                grid = H.tile(np.asarray(to_uint8(G(z))))
            panels.append((name, f"FID {r['best_fid']:.0f} at {r['best_kimg']:g} kimg", grid))
        H.compose_figure(panels, out / f"samples_{data}.png", f"{data}: best checkpoint of each batch size")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=["celeba"], choices=sorted(H.ZIPS))
    p.add_argument("--rows", nargs="+", default=["b128", "b512"], choices=sorted(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--resolution", type=int, default=32, choices=(32, 64))
    p.add_argument("--budget-kimg", type=float, default=40.0, help="kimg of batch 128; the others get its GPU time")
    p.add_argument("--fid-n", type=int, default=2000, help="samples per FID (log.fid_n)")
    p.add_argument("--fid-points", type=int, default=4, help="FID measurements per run (log.fid_kimg = kimg / this)")
    p.add_argument("--detect-n", type=int, default=1000, help="samples (and reals) for the face detector")
    p.add_argument("--rescore-n", type=int, default=0, help="also score each row's best.pt at this n (0: no)")
    p.add_argument("--limit", type=int, default=None, help="pack only the first N images (smoke runs)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("DIST_GAN_BENCH_CACHE", Path.home() / ".cache" / "dist_gan_bench")) / "batch_scaling")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--merge", action="store_true", help="keep the runs already in OUT/results.json")
    p.add_argument("--render", action="store_true", help="rewrite OUT's table and curves from its results.json; train nothing")
    p.add_argument("--figure-rows", nargs="+", default=None, choices=sorted(ROWS),
                   help="the rows samples_<data>.png shows, in this order (kept in results.json; default: every row); "
                        "with --render, redraws the figure from the runs' best.pt")
    a = p.parse_args(argv)
    if a.render:
        results = json.loads((a.out / "results.json").read_text())
        if a.figure_rows:
            results["figure_rows"] = a.figure_rows
        H.write_tables(a.out, "results", results, render(results), [x["command"] for x in ordered(results)])
        plot(results, a.out)
        if a.figure_rows:
            data = sorted({r["data"] for r in results["runs"].values()})
            figure(results, a.out, {d: shards_dir(a.work, d, results["resolution"], results.get("limit")) for d in data})
        print(f"wrote {a.out / 'results.md'}")
        return results
    results: Dict[str, Any] = {"resolution": a.resolution, "fid_n": a.fid_n,
                               "budget_kimg": a.budget_kimg, "limit": a.limit, "machine": H.machine(), "gpu_img_per_s": {b: round(gpu_img_per_s(b)) for b in sorted({r["batch"] for r in ROWS.values()})},
                               "runs": {}}
    previous = a.out / "results.json"
    if a.merge and previous.is_file():
        kept = json.loads(previous.read_text())
        same = ("resolution", "fid_n", "budget_kimg", "limit")
        if any(kept[k] != results[k] for k in same):
            raise SystemExit(f"--merge: {previous} was measured with other {', '.join(same)}")
        results["runs"], results["notes"] = kept["runs"], kept.get("notes", [])
        if kept.get("figure_rows"):
            results["figure_rows"] = kept["figure_rows"]
    if a.figure_rows:
        results["figure_rows"] = a.figure_rows
    shards = {d: H.pack_once(H.shared_zip(d), shards_dir(a.work, d, a.resolution, a.limit),
                             crop="auto", limit=a.limit,
                             resolution=a.resolution) for d in a.data}
    a.out.mkdir(parents=True, exist_ok=True)
    for data in a.data:
        for seed in a.seeds:
            for name in a.rows:
                r = run_row(name, data, shards[data], a.work, a.resolution, a.budget_kimg, seed, a.fid_n, a.fid_points, a.detect_n,
                            a.rescore_n)
                results["runs"][key(r)] = r
                print(f"{key(r)}: best FID {r['best_fid']:.1f} at {r['best_kimg']} kimg, final {r['final_fid']:.1f}, "
                      f"{r['cpu_wall_s'] / 60:.0f} CPU min", flush=True)
                H.write_tables(a.out, "results", results, render(results), [x["command"] for x in ordered(results)])
                plot(results, a.out)
    figure(results, a.out, shards)
    print(f"wrote {a.out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
