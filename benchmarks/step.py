"""The full G+D training step: dist_gan's ``TrainStep`` vs the textbook DCGAN step, side by side.

One process, both steps built at the same batch on the same device, timed in
alternation (A B A B ...), median of ``--repeats``; prints images/s for both and
the ratio, and writes JSON (default ``benchmarks/results/step_<cpu|cuda>.json``).

- dist_gan: ``TrainStep`` built by the trainer's own ``engine.training.build_training``
  (recipe ``dcgan64`` by default, its speed switches: precision, channels_last,
  fused Adam, swapped weight-grad convolutions, compile), on uint8 batches
  normalised on the device, with EMA;
- textbook: ``benchmarks/textbook.py`` (fp32, Sigmoid + BCELoss, default Adam, the
  PyTorch example's step), on float batches as its DataLoader would deliver them.

Data loading is excluded on both sides (see ``end_to_end.py`` for that).
``--ablation`` adds the switches one at a time (fp32 + plain Adam, + fused Adam,
+ channels_last, + bf16/auto precision, + swap_wgrad, + each ``--compile-modes`` mode);
``--swap-areas 16,64`` adds the dist_gan step with swapped weight grads on the layers whose
smaller feature map has at most that many pixels; ``--conv-ceiling`` replays every
convolution of both steps alone: the img/s the step would reach if nothing else cost time.

FLOPs: one fp32 step of each is run under ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matmuls, forward and backward, as the step really runs them) and
divided by the batch; on CUDA the MFU against the GPU's dense bf16 peak follows.

    python benchmarks/step.py                      # CPU, batch 128
    python benchmarks/step.py --device cuda --batch 512 --ablation --compile-modes default,max-autotune-no-cudagraphs
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.textbook import TextbookDCGAN  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, matched by substring of the device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
    "GH200": 989.4, "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0,
    "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.2, "RTX 3090": 71.0, "RTX A6000": 154.8, "A6000": 154.8,
}


def peak_tflops(device_name: str) -> Optional[float]:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_TFLOPS[key]
    return None


def load_cfg(recipe: str, overrides: Sequence[str]):
    from dist_gan.config import load_config

    return load_config([f"recipe={recipe}", *overrides])


def build_dist_gan_training(cfg, accelerator, batch: Optional[int] = None):
    """(Training, next_real): the trainer's own wiring (``engine.training.build_training``) and a fixed batch of reals."""
    from dist_gan.data.stream import to_model_range
    from dist_gan.engine.training import build_training

    device = accelerator.device
    batch = batch or cfg.train.batch
    training = build_training(cfg, accelerator, local_batch=batch)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    reals_u8 = torch.randint(0, 256, (batch, 3, cfg.model.resolution, cfg.model.resolution), dtype=torch.uint8, generator=gen)
    if device.type == "cuda":
        reals_u8 = reals_u8.pin_memory()

    def next_real() -> torch.Tensor:
        return to_model_range(reals_u8, device, cfg.train.channels_last)

    return training, next_real


def build_dist_gan_step(cfg, accelerator, batch: Optional[int] = None):
    """(TrainStep, next_real, ctx): the step with its loss context frozen at ``nimg`` 0 (lazy regularisers on)."""
    training, next_real = build_dist_gan_training(cfg, accelerator, batch)
    return training.step, next_real, training.context(0)


def dist_gan_candidate(cfg, accelerator, batch: int) -> Callable[[], Any]:
    """One training step per call, its loss context at the images shown so far, as in training: lazy R1 and path
    length cost their real share (one step in ``r1_every``), not every step's."""
    training, next_real = build_dist_gan_training(cfg, accelerator, batch)
    step = training.step
    state = {"nimg": 0}

    def run() -> None:
        state["nimg"] += step(next_real, True, True, training.context(state["nimg"]), state["nimg"])

    run.train_step = step  # type: ignore[attr-defined]
    return run


def textbook_candidate(cfg, device: torch.device, batch: int) -> Callable[[], Any]:
    if cfg.model.arch != "dcgan":
        raise SystemExit(f"the textbook baseline is a DCGAN; got model.arch={cfg.model.arch}")
    m = cfg.model
    tb = TextbookDCGAN(device, m.resolution, m.nz, m.ngf, m.ndf, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    real = torch.randint(0, 256, (batch, 3, m.resolution, m.resolution), dtype=torch.uint8, generator=gen).float().div(127.5).sub(1)
    if device.type == "cuda":
        real = real.pin_memory()

    def run() -> None:
        tb.step(real)

    run.model = tb  # type: ignore[attr-defined]
    return run


def count_flops(fn: Callable[[], Any]) -> Dict[str, int]:
    """FLOPs of one call of ``fn`` by op, from FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()), "by_op": by_op}


def flops_per_image(cfg, accelerator, device: torch.device, batch: int = 16) -> Dict[str, Any]:
    """FLOPs per image of one training iteration (G+D forward and backward), both steps, counted in fp32."""
    from omegaconf import OmegaConf

    fp32 = copy.deepcopy(cfg)
    OmegaConf.update(fp32, "train.precision", "fp32")
    OmegaConf.update(fp32, "train.compile", "")
    dg = dist_gan_candidate(fp32, accelerator, batch)
    tb = textbook_candidate(cfg, device, batch)
    dg(), tb()  # warm: lazy optimizer state etc. must not be counted
    d, t = count_flops(dg), count_flops(tb)
    return {
        "dist_gan": d["total"] / batch,
        "textbook": t["total"] / batch,
        "dist_gan_by_op": {k: v / batch for k, v in d["by_op"].items()},
        "textbook_by_op": {k: v / batch for k, v in t["by_op"].items()},
        "method": "torch.utils.flop_counter.FlopCounterMode over one fp32 training iteration at batch "
                  f"{batch}, divided by the batch (convolutions/matmuls, forward + backward; D is frozen in "
                  "dist_gan's G step, so it skips D's weight gradients there; the textbook does not)",
    }


def _layout(x: Any) -> Any:
    """A hashable stand-in for a call's argument: tensors become (shape, stride, dtype, device)."""
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), tuple(x.stride()), x.dtype, x.device.type)
    return tuple(_layout(v) for v in x) if isinstance(x, (list, tuple)) else x


class _ConvRecorder(TorchDispatchMode):
    """Counts every convolution (forward and backward) dispatched inside it, by op and argument layouts."""

    OPS = ("aten.convolution.default", "aten.convolution_backward.default")

    def __init__(self) -> None:
        super().__init__()
        self.calls: Dict[Any, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if str(func) in self.OPS:
            key = (func, _layout(args), tuple(sorted((kwargs or {}).items())))
            self.calls[key] = self.calls.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


def _materialise(m: Any) -> Any:
    if isinstance(m, tuple) and m and m[0] == "T":
        _, shape, stride, dtype, dev = m
        return torch.empty_strided(shape, stride, dtype=dtype, device=dev).normal_() if dtype.is_floating_point \
            else torch.empty_strided(shape, stride, dtype=dtype, device=dev).zero_()
    return type(m)(_materialise(v) for v in m) if isinstance(m, (list, tuple)) else m


def conv_ceiling(fn: Callable[[], Any], device: torch.device, batch: int, repeats: int = 5) -> Dict[str, Any]:
    """The step's convolutions replayed one by one, alone, on random tensors of the same layouts.

    Their summed time is what the step would take if everything but the convolution kernels
    (BN, activations, Adam, EMA, casts, Python) were free: a ceiling on the step's img/s
    set by the conv library (oneDNN / cuDNN) as it runs these shapes on this machine.
    """
    rec = _ConvRecorder()
    with rec:
        fn()
    common.sync(device)
    per_call = []
    total = 0.0
    for (func, margs, mkw), count in rec.calls.items():
        args, kwargs = _materialise(margs), dict(mkw)
        func(*args, **kwargs)  # warm (primitive creation)
        times = []
        for _ in range(repeats):
            common.sync(device)
            t0 = time.perf_counter()
            func(*args, **kwargs)
            common.sync(device)
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        total += sec * count
        t = [a for a in margs if isinstance(a, tuple) and a and a[0] == "T"]
        per_call.append({"op": str(func).split(".")[1], "count": count, "ms": round(sec * 1e3, 3),
                         "shapes": [list(a[1]) for a in t[:3]], "dtype": str(t[0][3]).replace("torch.", "") if t else "",
                         **({"output_mask": list(margs[-1])} if str(func).endswith("convolution_backward.default") else {})})
    per_call.sort(key=lambda c: -c["ms"] * c["count"])
    return {"conv_ms_per_step": total * 1e3, "calls": sum(c["count"] for c in per_call),
            "ceiling_img_per_s": batch / total if total else None, "per_call": per_call}


def ablation_cfgs(base, compile_modes: List[str]):
    """Cumulative switches, from a textbook-like dist_gan step to the full fast path."""
    from omegaconf import OmegaConf

    def variant(**kv):
        c = copy.deepcopy(base)
        for k, v in kv.items():
            OmegaConf.update(c, k, v)
        return c

    fast_prec = base.train.precision if base.train.precision != "fp32" else "auto"
    off = {"train.swap_wgrad": "never"}
    out = {
        "dg_fp32_plain_adam": variant(**{"train.precision": "fp32", "train.channels_last": False, "optim.impl": "plain", "train.compile": "", **off}),
        "dg_fp32_fused_adam": variant(**{"train.precision": "fp32", "train.channels_last": False, "optim.impl": "auto", "train.compile": "", **off}),
        "dg_fp32_fused_cl": variant(**{"train.precision": "fp32", "train.channels_last": True, "optim.impl": "auto", "train.compile": "", **off}),
        f"dg_{fast_prec}_fused_cl": variant(**{"train.precision": fast_prec, "train.channels_last": True, "optim.impl": "auto", "train.compile": "", **off}),
        f"dg_{fast_prec}_fused_cl_swap_wgrad": variant(**{"train.precision": fast_prec, "train.channels_last": True, "optim.impl": "auto",
                                                         "train.compile": "", "train.swap_wgrad": "always"}),
    }
    for mode in compile_modes:
        out[f"dg_fp32_fused_compile_{mode}"] = variant(**{"train.precision": "fp32", "train.channels_last": False,
                                                          "optim.impl": "auto", "train.compile": mode})
        out[f"dg_{fast_prec}_fused_cl_compile_{mode}"] = variant(**{"train.precision": fast_prec, "train.channels_last": True,
                                                                    "optim.impl": "auto", "train.compile": mode})
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--recipe", default="dcgan64", help="dist_gan recipe for the networks and switches (default dcgan64)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=5, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per candidate (alternating); the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per candidate first")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--precision", default=None, help="override train.precision (fp32 | bf16 | fp16 | auto)")
    p.add_argument("--channels-last", default=None, choices=["0", "1"], help="override train.channels_last")
    p.add_argument("--compile", default=None, help="override train.compile ('' = eager)")
    p.add_argument("--ablation", action="store_true", help="also time the switches one at a time")
    p.add_argument("--compile-modes", default="", help="comma list of compile modes added to the ablation")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--swap-areas", default="",
                   help="comma list of swap_wgrad max areas (px of the smaller feature map) to time as extra candidates")
    p.add_argument("--conv-ceiling", action="store_true",
                   help="also replay each step's convolutions alone: the img/s if nothing but them cost time")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: looked up by GPU name)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/step_<cpu|cuda>.json)")
    p.add_argument("--also", nargs="*", default=[], metavar="RECIPE",
                   help="other recipes' dist_gan steps, timed in the same alternation at the same batch and switches "
                        "(e.g. --recipe celeba64 --also stylegan2_64); RECIPE:KEY=VALUE,KEY=VALUE adds overrides "
                        "(e.g. stylegan2_64:model.channel_max=64)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more recipe overrides, e.g. model.ngf=16")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    common.set_threads(args.threads)
    device = common.pick_device(args.device)
    switches = [f"train.batch={args.batch}"]  # what every recipe timed here shares
    if args.precision is not None:
        switches.append(f"train.precision={args.precision}")
    if args.channels_last is not None:
        switches.append(f"train.channels_last={bool(int(args.channels_last))}")
    if args.compile is not None:
        switches.append(f"train.compile={args.compile!r}" if args.compile else "train.compile=''")
    overrides = list(args.set) + switches
    cfg = load_cfg(args.recipe, overrides)

    from accelerate import Accelerator

    from dist_gan.engine.precision import resolve_precision

    accelerator = Accelerator(mixed_precision="no", cpu=device.type == "cpu")
    print(f"step benchmark on {device} ({common.machine_info(device).get('gpu', common.machine_info(device)['cpu'])}), "
          f"batch {args.batch}, {torch.get_num_threads()} threads; dist_gan: recipe {args.recipe}, "
          f"precision {cfg.train.precision} -> {resolve_precision(cfg.train.precision, device)}, "
          f"channels_last {cfg.train.channels_last}, optim.impl {cfg.optim.impl}, compile {cfg.train.compile or 'off'}", flush=True)

    candidates: Dict[str, Callable[[], Any]] = {
        "textbook": textbook_candidate(cfg, device, args.batch),
        "dist_gan": dist_gan_candidate(cfg, accelerator, args.batch),
    }
    configs: Dict[str, Dict[str, Any]] = {"dist_gan": _switches(cfg, device)}
    failed: Dict[str, str] = {}
    others: Dict[str, int] = {}  # --also: recipe -> its G+D parameter count
    for name in args.also:
        recipe, _, extra = name.partition(":")
        c = load_cfg(recipe, [o for o in extra.split(",") if o] + switches)
        candidates[name] = dist_gan_candidate(c, accelerator, args.batch)
        configs[name] = _switches(c, device)
        st = candidates[name].train_step  # type: ignore[attr-defined]
        others[name] = sum(p.numel() for p in st.G_raw.parameters()) + sum(p.numel() for p in st.D_raw.parameters())
    if args.ablation:
        modes = [m for m in args.compile_modes.split(",") if m]
        for name, c in ablation_cfgs(cfg, modes).items():
            try:  # a first call: compiles now, and a mode that cannot run here is reported, not fatal
                candidates[name] = dist_gan_candidate(c, accelerator, args.batch)
                candidates[name]()
            except Exception as exc:  # noqa: BLE001
                candidates.pop(name, None)
                failed[name] = f"{type(exc).__name__}: {exc}"[:500]
                print(f"  {name}: failed ({failed[name][:120]})", flush=True)
                continue
            configs[name] = _switches(c, device)

    for area in [int(a) for a in args.swap_areas.split(",") if a]:  # which layers get the swapped weight grad
        from omegaconf import OmegaConf

        from dist_gan.models.fastconv import use_swap_wgrad

        stock = copy.deepcopy(cfg)  # built with stock kernels everywhere, then switched up to `area`
        OmegaConf.update(stock, "train.swap_wgrad", "never")
        c = dist_gan_candidate(stock, accelerator, args.batch)
        st = c.train_step  # type: ignore[attr-defined]
        n = use_swap_wgrad(st.G_raw, cfg.model.resolution, area) + use_swap_wgrad(st.D_raw, cfg.model.resolution, area)
        candidates[f"dg_swap_area{area}"] = c
        configs[f"dg_swap_area{area}"] = {**_switches(cfg, device), "swap_wgrad_max_area": area, "layers_switched": n}

    tb_params = sum(p.numel() for p in candidates["textbook"].model.netG.parameters()) + \
        sum(p.numel() for p in candidates["textbook"].model.netD.parameters())
    dg_step = candidates["dist_gan"].train_step
    dg_params = sum(p.numel() for p in dg_step.G_raw.parameters()) + sum(p.numel() for p in dg_step.D_raw.parameters())

    results: Dict[str, Any] = common.alternate(candidates, iters=args.iters, repeats=args.repeats, warmup=args.warmup,
                                               device=device, images_per_call=args.batch)
    ratio = results["dist_gan"]["img_per_s"] / results["textbook"]["img_per_s"]
    out: Dict[str, Any] = {
        "textbook": results["textbook"],
        "dist_gan": results["dist_gan"],
        "ratio": ratio,
        "ratio_paired": common.paired_ratio(results["dist_gan"], results["textbook"]),
        "ablation": {k: {**v, "ratio_vs_textbook": v["img_per_s"] / results["textbook"]["img_per_s"], "switches": configs[k]}
                     for k, v in results.items() if k not in ("textbook", "dist_gan", *others)},
        "recipes": {k: {**results[k], "ratio_vs_dist_gan": results[k]["img_per_s"] / results["dist_gan"]["img_per_s"],
                        "params": n, "switches": configs[k]} for k, n in others.items()},
        "ablation_failed": failed,
        "dist_gan_switches": configs["dist_gan"],
        "params": {"dist_gan": dg_params, "textbook": tb_params},
    }
    if not args.no_flops:
        out["flops_per_image"] = flops_per_image(cfg, accelerator, device)
        if device.type == "cuda":
            name = torch.cuda.get_device_name(0)
            peak = args.peak_tflops or peak_tflops(name)
            if peak:
                f = out["flops_per_image"]
                out["mfu"] = {
                    "peak_tflops": peak, "peak_kind": "dense bf16 tensor-core peak of " + name,
                    "dist_gan": f["dist_gan"] * results["dist_gan"]["img_per_s"] / (peak * 1e12),
                    "textbook": f["textbook"] * results["textbook"]["img_per_s"] / (peak * 1e12),
                    "dist_gan_achieved_tflops": f["dist_gan"] * results["dist_gan"]["img_per_s"] / 1e12,
                }
    if args.conv_ceiling:  # after the timed runs: the same warmed steps, their convolutions replayed alone
        out["conv_ceiling"] = {n: conv_ceiling(candidates[n], device, args.batch, args.repeats) for n in ("textbook", "dist_gan")}
        summary: Dict[str, float] = {}
        for n in ("dist_gan", "textbook"):
            step_ms = 1e3 * args.batch / results[n]["img_per_s"]
            summary.update({f"{n}_step_ms": step_ms, f"{n}_conv_share": out["conv_ceiling"][n]["conv_ms_per_step"] / step_ms})
        summary["ceiling_vs_textbook"] = out["conv_ceiling"]["dist_gan"]["ceiling_img_per_s"] / results["textbook"]["img_per_s"]
        out["conv_ceiling"]["summary"] = summary
    settings = {"device": str(device), "batch": args.batch, "iters": args.iters, "repeats": args.repeats,
                "warmup": args.warmup, "threads": torch.get_num_threads(), "recipe": args.recipe, "overrides": overrides}
    path = Path(args.out) if args.out else common.default_out("step", device)
    common.write_json(path, "step", settings, out, device)

    print(f"textbook : {results['textbook']['img_per_s']:8.1f} img/s")
    print(f"dist_gan : {results['dist_gan']['img_per_s']:8.1f} img/s")
    for k, v in out["recipes"].items():
        print(f"{k:9s}: {v['img_per_s']:8.1f} img/s  ({v['ratio_vs_dist_gan']:.2f}x of {args.recipe}, params {v['params']:,})")
    for k, v in out["ablation"].items():
        print(f"  {k:40s} {v['img_per_s']:8.1f} img/s  ({v['ratio_vs_textbook']:.2f}x)")
    print(f"ratio    : {ratio:.2f}x of medians, {out['ratio_paired']['median']:.2f}x median of per-repeat ratios "
          f"(params dist_gan {dg_params:,} / textbook {tb_params:,})")
    if "flops_per_image" in out:
        f = out["flops_per_image"]
        print(f"FLOPs/image per iteration: dist_gan {f['dist_gan'] / 1e9:.3f} GFLOP, textbook {f['textbook'] / 1e9:.3f} GFLOP")
    if "conv_ceiling" in out:
        c, sm = out["conv_ceiling"], out["conv_ceiling"]["summary"]
        for n in ("textbook", "dist_gan"):
            print(f"{n:9s}: {c[n]['calls']} convolution calls, {c[n]['conv_ms_per_step']:.0f} ms alone of a "
                  f"{sm[n + '_step_ms']:.0f} ms step ({100 * sm[n + '_conv_share']:.0f}%); conv-only ceiling "
                  f"{c[n]['ceiling_img_per_s']:.1f} img/s")
        print(f"ceiling  : dist_gan's convolutions alone allow {sm['ceiling_vs_textbook']:.2f}x the textbook step")
    if "mfu" in out:
        print(f"MFU: dist_gan {100 * out['mfu']['dist_gan']:.1f}% of {out['mfu']['peak_tflops']} TFLOP/s bf16")
    print(f"wrote {path}")
    return out


def _switches(cfg, device: torch.device) -> Dict[str, Any]:
    from dist_gan.engine.precision import resolve_precision
    from dist_gan.engine.training import swap_wgrad_wanted

    return {"precision": cfg.train.precision, "resolved_precision": resolve_precision(cfg.train.precision, device),
            "channels_last": bool(cfg.train.channels_last), "optim_impl": cfg.optim.impl, "compile": cfg.train.compile,
            "tf32": bool(cfg.train.tf32), "swap_wgrad": swap_wgrad_wanted(cfg.train, device)}


if __name__ == "__main__":
    main()
