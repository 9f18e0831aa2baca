"""The engine's fast path learns what the textbook DCGAN step learns.

Fixed seed, identical initial weights, real batches and latents; a few steps of:
the textbook step (``benchmarks/textbook.py``: fp32, Sigmoid + BCELoss, default
Adam, D not frozen in G's step), dist_gan's step in fp32 with plain Adam, and the
fast path (bf16 autocast, channels_last, fused Adam). Tolerances on the per-step
loss trajectory (loss_d, loss_g):

- dist_gan fp32 vs textbook: 1e-4 absolute (same math, different kernels);
- fp32 channels_last + fused Adam vs fp32 plain: 2e-3 (layout and optimizer
  implementation change only rounding, which Adam's per-weight normalisation
  amplifies for near-zero gradients; measured up to ~8e-4 over 12 steps);
- fast path (bf16) vs fp32: 0.03 absolute per step over 12 steps (measured
  ~0.001-0.007 on CPU; bf16 has 8 mantissa bits), and the mean difference 0.01.

No timing here: speed claims live in ``benchmarks/``.
"""

from __future__ import annotations

import sys
import warnings
from typing import Dict, List

import pytest
import torch
from accelerate import Accelerator

from dist_gan.data.stream import to_model_range
from dist_gan.engine import precision as precision_mod
from dist_gan.engine.precision import Precision, make_adam, maybe_compile, resolve_precision

REPO_BENCH = __import__("pathlib").Path(__file__).resolve().parents[1]
if str(REPO_BENCH) not in sys.path:
    sys.path.insert(0, str(REPO_BENCH))

from benchmarks.step import build_dist_gan_step, load_cfg  # noqa: E402
from benchmarks.textbook import TextbookDCGAN  # noqa: E402

RES, NZ, WIDTH, BATCH, STEPS = 32, 16, 16, 32, 12
SMALL = [f"model.resolution={RES}", f"model.nz={NZ}", f"model.ngf={WIDTH}", f"model.ndf={WIDTH}", f"train.batch={BATCH}"]


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(mixed_precision="no", cpu=True)


@pytest.fixture(scope="module")
def reals() -> List[torch.Tensor]:
    """Smooth uint8 images (low-frequency noise upsampled), one batch per step."""
    g = torch.Generator().manual_seed(5)
    return [
        (torch.nn.functional.interpolate(torch.rand(BATCH, 3, 4, 4, generator=g), size=RES, mode="bilinear") * 255).to(torch.uint8)
        for _ in range(STEPS)
    ]


def textbook_weights():
    """The textbook nets at seed 0: both sides start from these exact weights."""
    tb = TextbookDCGAN("cpu", RES, NZ, WIDTH, WIDTH, seed=0)
    return tb, [t.detach().clone() for t in tb.netG.state_dict().values()], [t.detach().clone() for t in tb.netD.state_dict().values()]


def load_by_position(module: torch.nn.Module, tensors: List[torch.Tensor]) -> None:
    keys = list(module.state_dict())
    assert len(keys) == len(tensors)
    module.load_state_dict({k: t for k, t in zip(keys, tensors)})


def dist_gan_trajectory(accelerator, reals, overrides) -> List[Dict[str, float]]:
    cfg = load_cfg("dcgan64", [*SMALL, *overrides])
    step, _, ctx = build_dist_gan_step(cfg, accelerator, BATCH)
    _, g_w, d_w = textbook_weights()
    load_by_position(step.G_raw, g_w)
    load_by_position(step.D_raw, d_w)
    out = []
    for i in range(STEPS):
        torch.manual_seed(1000 + i)  # the step's latents
        step(lambda: to_model_range(reals[i], accelerator.device, cfg.train.channels_last), True, True, ctx, i * BATCH)
        out.append(step.pop_stats())  # a host sync per step: fine in a test, never in the loop
    return out


def textbook_trajectory(reals) -> List[Dict[str, float]]:
    tb, _, _ = textbook_weights()
    out = []
    for i in range(STEPS):
        torch.manual_seed(1000 + i)
        out.append(tb.step(reals[i].float().div(127.5).sub(1)))
    return out


def max_diff(a, b, key):
    return max(abs(x[key] - y[key]) for x, y in zip(a, b))


def mean_diff(a, b, key):
    return sum(abs(x[key] - y[key]) for x, y in zip(a, b)) / len(a)


FP32_PLAIN = ["train.precision=fp32", "train.channels_last=false", "optim.impl=plain"]
FP32_FAST = ["train.precision=fp32", "train.channels_last=true", "optim.impl=fused"]
FAST = ["train.precision=bf16", "train.channels_last=true", "optim.impl=fused"]


def test_fast_path_learns_the_same_as_fp32_and_the_textbook(accelerator, reals):
    torch.set_num_threads(1)
    textbook = textbook_trajectory(reals)
    plain = dist_gan_trajectory(accelerator, reals, FP32_PLAIN)
    fp32_fast = dist_gan_trajectory(accelerator, reals, FP32_FAST)
    for key in ("loss_d", "loss_g"):
        assert max_diff(plain, textbook, key) < 1e-4, key
        assert max_diff(fp32_fast, plain, key) < 2e-3, key
    # bf16 numerics whether the CPU computes them natively or oneDNN emulates them (slowly)
    fast = dist_gan_trajectory(accelerator, reals, FAST)
    for key in ("loss_d", "loss_g"):
        assert max_diff(fast, plain, key) < 0.03, (key, [round(x[key] - y[key], 4) for x, y in zip(fast, plain)])
        assert mean_diff(fast, plain, key) < 0.01, key
    # and it is learning, not sitting still: D's loss moves over the steps
    assert abs(fast[-1]["loss_d"] - fast[0]["loss_d"]) > 0.01


def test_step_never_syncs_with_the_host(accelerator, reals, monkeypatch):
    """No .item()/.tolist()/float(tensor) inside a step: stats stay on the device until pop_stats."""
    cfg = load_cfg("dcgan64", [*SMALL, *FAST])
    step, _, ctx = build_dist_gan_step(cfg, accelerator, BATCH)
    step(lambda: to_model_range(reals[0], accelerator.device, True), True, True, ctx, 0)  # warm (lazy state)

    def forbidden(*_a, **_k):
        raise AssertionError("host sync inside the training step")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
            m.setattr(torch.Tensor, name, forbidden)
        for i in range(1, 3):
            step(lambda: to_model_range(reals[i], accelerator.device, True), True, True, ctx, i * BATCH)
            step(lambda: to_model_range(reals[i], accelerator.device, True), True, False, ctx, i * BATCH)  # D only
    assert set(step.pop_stats()) >= {"loss_d", "loss_g", "d_real", "d_fake"}


def test_precision_auto_resolves_per_device():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("fp16", cpu) == "fp16"
    assert resolve_precision("auto", cpu) == ("bf16" if precision_mod.bf16_native(cpu) else "fp32")
    p = Precision("auto", cpu)
    assert p.requested == "auto" and p.mode in ("bf16", "fp32") and not p.make_scaler().is_enabled()
    with pytest.raises(ValueError):
        Precision("fp8", cpu)


def test_auto_is_bf16_where_native_and_explicit_bf16_warns_where_emulated(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision_mod, "bf16_native", lambda device: True)
    assert Precision("auto", cpu).mode == "bf16"  # what bigbatch/celeba64 get on an AVX512-BF16/AMX CPU or a GPU
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Precision("bf16", cpu)  # native: no warning
    monkeypatch.setattr(precision_mod, "bf16_native", lambda device: False)
    assert Precision("auto", cpu).mode == "fp32"
    with pytest.warns(RuntimeWarning, match="emulates it"):
        assert Precision("bf16", cpu).mode == "bf16"  # honoured, but the user is told what it costs


def test_make_adam_takes_a_generator_and_falls_back(monkeypatch):
    net = torch.nn.Linear(3, 2)
    opt = make_adam(net.parameters(), 1e-3, (0.5, 0.999), "auto", torch.device("cpu"))
    assert len(opt.param_groups[0]["params"]) == 2
    real_adam = torch.optim.Adam

    def no_fused(params, **kw):
        if kw.get("fused"):
            list(params)  # a failed attempt that spends a generator
            raise RuntimeError("fused Adam unsupported here")
        return real_adam(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    opt = make_adam(net.parameters(), 1e-3, (0.5, 0.999), "auto", torch.device("cpu"))
    assert len(opt.param_groups[0]["params"]) == 2 and opt.param_groups[0]["foreach"]


def test_compile_switch_falls_back_to_eager(monkeypatch):
    net = torch.nn.Linear(3, 2)
    assert maybe_compile(net, "") is net
    with pytest.raises(ValueError):
        maybe_compile(net, "turbo")
    if precision_mod.compile_available() is None:  # lazy: wrapping compiles nothing yet
        assert isinstance(maybe_compile(net, "default"), torch._dynamo.eval_frame.OptimizedModule)
    monkeypatch.setattr(precision_mod, "compile_available", lambda: "no compiler in this test")
    with pytest.warns(RuntimeWarning, match="no compiler"):
        assert maybe_compile(net, "default") is net


def test_compile_is_skipped_with_a_gradient_penalty(accelerator):
    cfg = load_cfg("wgan_gp", [*SMALL, "train.compile=default", "train.precision=fp32"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step, _, _ = build_dist_gan_step(cfg, accelerator, BATCH)
    assert step.compile == "" and step.D_frozen is step.D_raw
    assert any("gradient penalty" in str(w.message) for w in caught)
