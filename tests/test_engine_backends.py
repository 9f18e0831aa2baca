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


def _train1(*args):
    return run([sys.executable, TRAIN, *SMOKE, *args])


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("first, second", [("ddp", "deepspeed"), ("deepspeed", "ddp")])
def test_checkpoint_moves_between_backends_with_its_adam_state(shards32, tmp_path, first, second):
    """Half a run on one backend, the rest on the other, lands where one backend alone lands.

    Adam's moments must travel: with them reset the weights end far apart (checked below).
    """
    common = [f"data={shards32}", "train.kimg=0.16", "log.snapshot_kimg=0.08", "zero_stage=1"]
    _train1(*common, f"backend={second}", f"run_dir={tmp_path / 'straight'}")
    _train1(*common, f"backend={first}", f"run_dir={tmp_path / 'moved'}", "train.kimg=0.08")
    out = _train1(*common, f"backend={second}", f"run_dir={tmp_path / 'moved'}", "resume=auto")
    assert "resumed at 0.08 kimg" in out.stderr
    straight, moved = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "moved")
    assert moved["cfg"]["backend"] == second and moved["nimg"] == straight["nimg"] == 160
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


def test_fp16_on_deepspeed_is_refused_clearly(shards32, tmp_path):
    proc = subprocess.run([sys.executable, TRAIN, *SMOKE, f"data={shards32}", f"run_dir={tmp_path / 'r'}",
                           "backend=deepspeed", "train.precision=fp16"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 2 and "backend=ddp for fp16" in proc.stderr
