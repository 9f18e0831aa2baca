"""The benchmark scripts run end to end with tiny settings and write JSON of the documented shape.

No timing assertions: speed claims live in ``benchmarks/results``, never in unit tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
TINY_NETS = ["model.ngf=8", "model.ndf=8", "model.nz=16"]


def run(args, timeout=300):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def check_envelope(path: Path, kind: str) -> dict:
    data = json.loads(path.read_text())
    assert data["schema"] == "dist_gan.bench/1" and data["benchmark"] == kind
    assert {"time", "commit", "machine", "settings", "results"} <= set(data)
    assert {"cpu", "cpu_count", "torch", "torch_threads"} <= set(data["machine"])
    return data


def check_timing(entry: dict) -> None:
    assert set(entry) >= {"img_per_s", "runs", "min", "max"}
    assert entry["img_per_s"] > 0 and len(entry["runs"]) >= 1


def test_step_benchmark_writes_its_json(tmp_path):
    out = tmp_path / "step.json"
    stdout = run(["benchmarks/step.py", "--device", "cpu", "--batch", "16", "--iters", "1", "--repeats", "1", "--warmup", "1",
                  "--threads", "1", "--ablation", "--conv-ceiling", "--swap-areas", "16,64", "--out", str(out), "--set", *TINY_NETS])
    assert "ratio" in stdout and "img/s" in stdout
    res = check_envelope(out, "step")["results"]
    check_timing(res["textbook"]), check_timing(res["dist_gan"])
    assert res["ratio"] == pytest.approx(res["dist_gan"]["img_per_s"] / res["textbook"]["img_per_s"])
    assert res["params"]["dist_gan"] == res["params"]["textbook"]  # the same networks
    assert {"dg_fp32_plain_adam", "dg_fp32_fused_adam", "dg_fp32_fused_cl"} <= set(res["ablation"])
    for entry in res["ablation"].values():
        check_timing(entry)
        assert {"ratio_vs_textbook", "switches"} <= set(entry)
    flops = res["flops_per_image"]
    assert 0 < flops["dist_gan"] < flops["textbook"]  # D is frozen in dist_gan's G step
    assert set(res["dist_gan_switches"]) >= {"precision", "resolved_precision", "channels_last", "optim_impl", "compile"}
    assert res["ablation"]["dg_swap_area16"]["switches"]["layers_switched"] == 4  # tiny nets, same layout as dcgan64
    assert res["ablation"]["dg_swap_area64"]["switches"]["layers_switched"] == 6
    ceil = res["conv_ceiling"]
    tb_calls = ceil["textbook"]["per_call"]
    assert ceil["textbook"]["calls"] == 40 == sum(c["count"] for c in tb_calls)  # 3 D passes + 1 G pass, 5 convs each, fwd + bwd
    assert all(c["output_mask"][1] for c in tb_calls if c["op"] == "convolution_backward")  # it computes every weight grad
    dg_bwd = [c for c in ceil["dist_gan"]["per_call"] if c["op"] == "convolution_backward"]
    assert any(not c["output_mask"][1] for c in dg_bwd)  # D frozen in G's step: no weight grads there
    for n in ("textbook", "dist_gan"):
        assert ceil[n]["conv_ms_per_step"] > 0 and ceil[n]["ceiling_img_per_s"] == pytest.approx(16e3 / ceil[n]["conv_ms_per_step"])
    assert 0 < ceil["summary"]["dist_gan_conv_share"] and "ceiling" in stdout


def test_step_benchmark_times_other_recipes_beside_the_main_one(tmp_path):
    out = tmp_path / "step.json"
    stdout = run(["benchmarks/step.py", "--device", "cpu", "--batch", "4", "--iters", "1", "--repeats", "1", "--warmup", "1",
                  "--threads", "1", "--no-flops", "--recipe", "smoke", "--also", "stylegan2_64", "stylegan2_64:model.channel_max=32,model.mapping_depth=3",
                  "--precision", "fp32", "--out", str(out)])
    res = check_envelope(out, "step")["results"]
    other, small = res["recipes"]["stylegan2_64"], res["recipes"]["stylegan2_64:model.channel_max=32,model.mapping_depth=3"]
    assert small["params"] < other["params"]  # the overrides reached the model
    check_timing(other)
    assert other["ratio_vs_dist_gan"] == pytest.approx(other["img_per_s"] / res["dist_gan"]["img_per_s"])
    assert other["params"] > 10 * res["params"]["dist_gan"] and "stylegan2_64" not in res["ablation"]
    assert other["switches"]["precision"] == res["dist_gan_switches"]["precision"] == "fp32" and "x of smoke" in stdout


def test_loader_benchmark_writes_its_json(tmp_path):
    src = tmp_path / "faces"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(src / f"{i:03d}.png")
    cache, out = tmp_path / "cache", tmp_path / "loader.json"
    stdout = run(["benchmarks/loader.py", "--src", str(src), "--cache", str(cache), "--device", "cpu", "--batch", "8",
                  "--workers", "0", "--batches", "2", "--warm", "1", "--repeats", "1", "--shuffle", "8",
                  "--step-json", str(tmp_path / "none.json"), "--out", str(out)])
    assert "stream / imagefolder" in stdout
    data = check_envelope(out, "loader")
    res = data["results"]
    check_timing(res["dist_gan_stream"]), check_timing(res["imagefolder"])
    check_timing(res["dist_gan_stream_blocks"])
    assert "dist_gan_stream_npy" not in res  # the per-image npy format is gone: blocks replace it
    assert res["ratio_stream_vs_imagefolder"] > 0 and res["ratio_blocks_vs_imagefolder"] > 0
    assert "stream (blocks) / imagefolder" in stdout
    blocks = json.loads((cache / "shards-faces-64-blocks" / "manifest.json").read_text())
    assert blocks["image_format"] == "blocks" and blocks["num_samples"] == 40  # packed by the real packer
    assert data["settings"]["num_images"] == 40 and data["settings"]["workers"] == 0
    # both candidates read the same 64x64 PNGs: the ImageFolder tree holds the shards' members
    pngs = sorted((cache / "imagefolder-faces-64" / "faces").glob("*.png"))
    assert len(pngs) == 40 and Image.open(pngs[0]).size == (64, 64)
