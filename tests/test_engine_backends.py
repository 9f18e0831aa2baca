"""DeepSpeed backend: 2 real gloo ranks at ZeRO-1/2 in sync; checkpoints move between backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, SMOKE
from dist_gan.engine.checkpoint import load_checkpoint

TRAIN = str(REPO / "dist_gan" / "train.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(cmd, **env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **env}, timeout=420)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def launch2(*args):
    return run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", TRAIN, *SMOKE, *args], ACCELERATE_USE_CPU="1")


@pytest.mark.parametrize("stage", [1, 2])
def test_two_rank_zero_run_stays_in_sync(shards32, tmp_path, stage):
    run_dir = tmp_path / f"zero{stage}"
    launch2(f"data={shards32}", f"run_dir={run_dir}", "backend=deepspeed", f"zero_stage={stage}")
    final = json.loads((run_dir / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"], final
    assert [r["iteration"] for r in final["ranks"]] == [10, 10]
    state = load_checkpoint(run_dir)
    assert state["cfg"]["backend"] == "deepspeed" and state["nimg"] == 160
    assert len(state["opt_G"]["state"]) == len(state["G"]) - sum("running" in k or "num_batches" in k for k in state["G"])


SG2 = ["model.arch=stylegan2", "model.resolution=32", "model.nz=32", "model.w_dim=32", "model.channel_base=256",
       "model.channel_max=16", "loss.name=bce", "loss.real_label=1.0", "loss.instance_noise=0", "loss.r1_gamma=0.05",
       "loss.r1_every=2", "loss.pl_weight=2", "loss.pl_every=2"]
WGAN_GP = ["recipe=wgan_gp", "model.resolution=32", "model.ngf=16", "model.ndf=16", "train.batch=16", "train.kimg=0.16"]


@pytest.mark.parametrize("case", ["stylegan2_r1_pl", "wgan_gp"])
def test_input_gradient_penalties_run_under_zero2_on_two_ranks(shards32, tmp_path, case):
    """Penalties on D's input gradient under a ZeRO-2 engine on 2 ranks: StyleGAN2's lazy R1 (and its path
    length on G) on their interval, WGAN-GP's on every D step. Taken through the engine, such a gradient
    ran DeepSpeed's post-backward reduction and crashed; the ranks must end in sync."""
    from dist_gan.engine.monitor import read_metrics

    run_dir = tmp_path / case
    launch2(f"data={shards32}", f"run_dir={run_dir}", "backend=deepspeed", "zero_stage=2", "log.every=1",
            *(SG2 if case == "stylegan2_r1_pl" else WGAN_GP))
    final = json.loads((run_dir / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"], final
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "step" in r]
    state = load_checkpoint(run_dir)
    if case == "stylegan2_r1_pl":
        assert sum("r1" in r for r in rows) == len(rows) // 2 > 0, rows
        assert state["cfg"]["model"]["arch"] == "stylegan2" and state["loss_state"]["pl_mean"].item() > 0
    else:
        assert rows and all(r["gp"] > 0 for r in rows if "gp" in r) and sum("gp" in r for r in rows) > 0, rows


@pytest.mark.parametrize("precision, dtype", [("fp32", None), ("bf16", "bfloat16"), ("fp16", "float16")])
def test_deepspeed_config_autocasts_over_fp32_weights_and_reduces_in_fp32(precision, dtype):
    from dist_gan.engine.backends import deepspeed_config

    cfg = deepspeed_config(micro_batch=64, accum=2, zero_stage=2, precision=precision)
    assert cfg["train_micro_batch_size_per_gpu"] == 64 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["zero_optimization"] == {"stage": 2} and cfg["gradient_clipping"] == 0.0
    assert "fp16" not in cfg and "bf16" not in cfg  # DeepSpeed's half-weight modes would change the numerics
    if dtype is None:
        assert "torch_autocast" not in cfg
    else:
        assert cfg["torch_autocast"] == {"enabled": True, "dtype": dtype, "lower_precision_safe_modules": []}


def _train1(*args):
    return run([sys.executable, TRAIN, *SMOKE, *args])


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("first, second, extra", [
    ("ddp", "deepspeed", []), ("deepspeed", "ddp", []),
    # fp16 at ZeRO-2: the loss scales travel too, and DeepSpeed reduces in fp32 as DDP does, so no wider bound.
    ("ddp", "deepspeed", ["zero_stage=2", "train.precision=fp16"]),
])
def test_checkpoint_moves_between_backends_with_its_adam_state(shards32, tmp_path, first, second, extra):
    """Half a run on one backend, the rest on the other, lands where one backend alone lands.

    Adam's moments must travel: with them reset the weights end far apart (checked below).
    """
    common = [f"data={shards32}", "train.kimg=0.16", "log.snapshot_kimg=0.08", "zero_stage=1", *extra]
    _train1(*common, f"backend={second}", f"run_dir={tmp_path / 'straight'}")
    _train1(*common, f"backend={first}", f"run_dir={tmp_path / 'moved'}", "train.kimg=0.08")
    out = _train1(*common, f"backend={second}", f"run_dir={tmp_path / 'moved'}", "resume=auto")
    assert "resumed at 0.08 kimg" in out.stderr
    straight, moved = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "moved")
    assert moved["cfg"]["backend"] == second and moved["nimg"] == straight["nimg"] == 160
    assert moved["scaler_G"] == straight["scaler_G"] and moved["scaler_D"] == straight["scaler_D"]
    close = _max_diff(straight["G"], moved["G"])
    assert close < 1e-4, close

    # The counterfactual: the same move with Adam's moments dropped ends measurably elsewhere.
    ckpt_path = sorted((tmp_path / "moved" / "checkpoints").glob("*.pt"))[0]
    assert "000000080" in ckpt_path.name
    state = torch.load(ckpt_path, weights_only=True)
    for net in ("opt_G", "opt_D"):
        state[net]["state"] = {}
    (tmp_path / "reset" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "reset" / "checkpoints" / ckpt_path.name)
    _train1(*common, f"backend={second}", f"run_dir={tmp_path / 'reset'}", "resume=auto")
    far = _max_diff(straight["G"], load_checkpoint(tmp_path / "reset")["G"])
    assert far > 20 * max(close, 1e-6), (close, far)


def test_two_rank_zero2_fp16_trains_both_networks_with_equal_loss_scales(shards32, tmp_path):
    """fp16 autocast under ZeRO-2: the first steps overflow; both ranks must back off together and G must train.

    (DeepSpeed's own ZeRO overflow check skips the step before its GradScaler sees it, so without
    the backend's backoff hook G's scale stayed at 65536 and its Adam never stepped.)
    """
    run_dir = tmp_path / "fp16"
    launch2(f"data={shards32}", f"run_dir={run_dir}", "backend=deepspeed", "zero_stage=2", "train.precision=fp16")
    final = json.loads((run_dir / "final.json").read_text())
    assert final["world_size"] == 2 and final["ranks_in_sync"], final
    scales = [r["loss_scales"] for r in final["ranks"]]
    assert scales[0] == scales[1] and all(0 < v < 65536 for v in scales[0].values()), scales
    state = load_checkpoint(run_dir)
    assert state["opt_G"]["state"] and state["opt_D"]["state"]
    assert state["scaler_G"]["scale"] == scales[0]["G"] and state["scaler_D"]["scale"] == scales[0]["D"]


def _overflow_on_rank0(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from dist_gan.engine.backends import SyncedGradScaler

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = SyncedGradScaler("cpu", init_scale=1024.0)
    scaler.scale((p * (float("inf") if rank == 0 else 1.0)).sum()).backward()  # only rank 0 sees the overflow
    scaler.step(opt)
    scaler.update()
    torch.save({"scale": scaler.get_scale(), "p": p.detach().clone()}, f"{out}/{rank}.pt")
    dist.barrier()  # neither rank tears gloo down while the other is mid-collective (SIGABRT ~1 run in 10 without it)
    dist.destroy_process_group()


def test_synced_grad_scaler_skips_on_every_rank_when_one_overflows(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_overflow_on_rank0, args=(port, str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["scale"] for r in results] == [512.0, 512.0]  # both backed off once
    assert all(torch.equal(r["p"], torch.ones(3)) for r in results)  # and both skipped the step


def test_backoff_halves_the_scale_and_resets_growth():
    from dist_gan.engine.backends import SyncedGradScaler

    scaler = SyncedGradScaler("cpu", init_scale=256.0, growth_interval=3)
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    for _ in range(2):  # two good steps: growth tracker at 2
        scaler.scale(p.sum()).backward()
        scaler.step(opt)
        scaler.update()
    scaler.backoff()
    assert scaler.get_scale() == 128.0 and scaler.state_dict()["_growth_tracker"] == 0


def test_deepspeed_missing_prints_the_install_line(shards32, tmp_path, monkeypatch):
    """backend=deepspeed without the extra: one line naming it, exit 2, no traceback."""
    from typer.testing import CliRunner

    from dist_gan.cli import app

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` raises ImportError
    res = CliRunner().invoke(app, ["train", *SMOKE, f"data={shards32}", f"run_dir={tmp_path / 'run'}", "backend=deepspeed"])
    assert res.exit_code == 2, res.output
    assert "pip install 'dist-gan[deepspeed]'" in res.output and "Traceback" not in res.output
