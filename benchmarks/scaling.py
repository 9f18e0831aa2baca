"""Data-parallel scaling inputs: all-reduce bytes per step, step time on 1/2/4 CPU ranks, FLOPs per image.

What it measures (dcgan64 widths, 64 px, global batch fixed at ``--batch``, default 64):

* **bytes all-reduced per step**, per network: a counting comm hook is registered on the
  DDP-wrapped G and D (``model.register_comm_hook``) and sums the gradient bucket bytes it
  hands to gloo; checked against the parameter bytes of each network. DDP also broadcasts
  BatchNorm buffers from rank 0 before every forward of a wrapped network: counted from a
  forward pre-hook times the buffer bytes.
* **step time** of the trainer's own ``TrainStep`` (built by ``engine.training.build_training``, as the
  loop does) on 1, 2 and 4 gloo ranks under ``accelerate launch`` (the global batch is split,
  so this is strong scaling); intra-op threads per rank = max(1, cores // ranks). On a 2-core
  box 4 ranks are oversubscribed: the figure says so rather than hides it.
* **a bare all-reduce** of the same bytes over gloo on the machine it runs on (its achieved bandwidth).
* **FLOPs per image** of one G+D training iteration (forward + backward), from
  ``torch.utils.flop_counter.FlopCounterMode``.

``--gpu-sweep`` (one CUDA GPU) times the step alone at several *per-GPU* batches, the compute
term of the multi-GPU projection in ``benchmarks/SCALING.md``; ``--project`` prints that
projection from the JSON results.

    python benchmarks/scaling.py                          # CPU: 1, 2, 4 ranks -> results/scaling_cpu.json
    python benchmarks/scaling.py --gpu-sweep              # one GPU -> results/scaling_gpu.json
    python benchmarks/scaling.py --project                # the 8/64-GPU table from both files
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

RECIPE = "dcgan64"


# ------------------------------------------------------------ worker (one rank, under accelerate launch)
class Counter:
    """State for the counting comm hook."""

    def __init__(self) -> None:
        self.bytes = 0
        self.buckets = 0
        self.forwards = 0


def counting_allreduce_hook(state: Counter, bucket):
    """Count the bucket, then do exactly what DDP's default does (allreduce, divide by world)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    buf = bucket.buffer()
    state.bytes += buf.numel() * buf.element_size()
    state.buckets += 1
    return default_hooks.allreduce_hook(None, bucket)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def worker(args: argparse.Namespace) -> None:
    from accelerate import Accelerator

    from benchmarks.step import build_dist_gan_step, count_flops, load_cfg

    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    accelerator = Accelerator(mixed_precision="no", cpu=True)
    rank = accelerator.process_index
    cfg = load_cfg(RECIPE, ["train.precision=fp32", "train.channels_last=false", f"train.batch={args.batch}",
                            f"model.resolution={args.resolution}"])
    local = args.batch // world
    step, next_real, ctx = build_dist_gan_step(cfg, accelerator, local)
    step.global_batch = args.batch
    counters = {"G": Counter(), "D": Counter()}
    buffers = {"G": _nbytes(step.G_raw.buffers()), "D": _nbytes(step.D_raw.buffers())}
    params = {"G": _nbytes(p for p in step.G_raw.parameters() if p.requires_grad),
              "D": _nbytes(p for p in step.D_raw.parameters() if p.requires_grad)}
    wrapped = {"G": step.G, "D": step.D}
    if world > 1:
        for name, model in wrapped.items():
            model.register_comm_hook(counters[name], counting_allreduce_hook)
            model.register_forward_pre_hook(lambda *_, c=counters[name]: setattr(c, "forwards", c.forwards + 1))
    nimg = 0

    def one_step() -> None:
        nonlocal nimg
        nimg += step(next_real, True, True, ctx, nimg)

    for _ in range(args.warmup):
        one_step()
    for c in counters.values():
        c.bytes = c.buckets = c.forwards = 0
    times: List[float] = []
    for _ in range(args.steps):
        accelerator.wait_for_everyone()
        t0 = time.perf_counter()
        one_step()
        accelerator.wait_for_everyone()
        times.append(time.perf_counter() - t0)

    # A bare all-reduce of the same bytes: the machine's gloo bandwidth, apart from compute.
    allreduce_s = None
    if world > 1:
        flat = torch.zeros((params["G"] + params["D"]) // 4)
        torch.distributed.all_reduce(flat)
        runs = []
        for _ in range(3):
            accelerator.wait_for_everyone()
            t0 = time.perf_counter()
            torch.distributed.all_reduce(flat)
            runs.append(time.perf_counter() - t0)
        allreduce_s = statistics.median(runs)

    flops = None
    if world == 1 and not args.no_flops:
        flops = count_flops(one_step)["total"] / args.batch

    if rank == 0:
        per_net = {
            n: {
                "param_bytes": params[n],
                "allreduce_bytes_per_step": counters[n].bytes // args.steps if world > 1 else 0,
                "buckets_per_step": counters[n].buckets / args.steps if world > 1 else 0,
                "ddp_forwards_per_step": counters[n].forwards / args.steps if world > 1 else 0,
                "buffer_bytes": buffers[n],
                "buffer_broadcast_bytes_per_step": int(buffers[n] * counters[n].forwards / args.steps) if world > 1 else 0,
            }
            for n in ("G", "D")
        }
        out = {
            "world_size": world, "global_batch": args.batch, "local_batch": local, "threads_per_rank": torch.get_num_threads(),
            "step_s_median": statistics.median(times), "step_s_runs": [round(t, 4) for t in times],
            "img_per_s": args.batch / statistics.median(times), "networks": per_net,
            "allreduce_bytes_per_step": sum(v["allreduce_bytes_per_step"] for v in per_net.values()),
            "bare_allreduce_s": allreduce_s,
            "bare_allreduce_GBps": (params["G"] + params["D"]) / allreduce_s / 1e9 if allreduce_s else None,
            "flops_per_image": flops,
        }
        Path(args.worker_out).write_text(json.dumps(out))
    accelerator.wait_for_everyone()


# ------------------------------------------------------------ CPU driver
def run_ranks(world: int, args: argparse.Namespace) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        worker_args = ["--worker", "--worker-out", str(out), "--batch", str(args.batch), "--resolution", str(args.resolution),
                       "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--no-flops"] if args.no_flops else [])
        if world == 1:
            cmd = [sys.executable, __file__, *worker_args]
        else:
            cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(world), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(common.free_port()),
                   __file__, *worker_args]
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(common.REPO), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // world))}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0:
            raise SystemExit(f"{world} rank(s) failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def cpu_study(args: argparse.Namespace) -> Dict[str, Any]:
    rows = {}
    for world in args.ranks:
        print(f"{world} rank(s) ...", flush=True)
        rows[str(world)] = run_ranks(world, args)
    base = rows[str(args.ranks[0])]["step_s_median"] * args.ranks[0]
    for world, r in rows.items():
        r["strong_scaling_efficiency"] = base / (int(world) * r["step_s_median"])
    ref = next((r for r in rows.values() if r["world_size"] > 1), None)
    flops = rows.get("1", {}).get("flops_per_image")
    summary = {
        "flops_per_image": flops,
        "allreduce_bytes_per_step": ref["allreduce_bytes_per_step"] if ref else None,
        "allreduce_bytes_per_step_by_net": {n: v["allreduce_bytes_per_step"] for n, v in ref["networks"].items()} if ref else None,
        "param_bytes_by_net": {n: v["param_bytes"] for n, v in (ref or rows["1"])["networks"].items()},
        "buffer_broadcast_bytes_per_step": sum(v["buffer_broadcast_bytes_per_step"] for v in ref["networks"].values()) if ref else None,
        "buckets_per_step": sum(v["buckets_per_step"] for v in ref["networks"].values()) if ref else None,
    }
    print_cpu_table(rows, summary, os.cpu_count() or 1)
    return {"by_world_size": rows, "summary": summary}


def print_cpu_table(rows: Dict[str, Any], summary: Dict[str, Any], cores: int) -> None:
    print(f"\nstrong scaling on {cores} CPU core(s), gloo, global batch {next(iter(rows.values()))['global_batch']}")
    print(f"{'ranks':>5} {'local':>5} {'thr':>3} {'s/step':>8} {'img/s':>7} {'eff':>5} {'allreduce MB':>12} {'bare AR s':>9} {'note'}")
    for w, r in rows.items():
        note = "oversubscribed" if int(w) > cores else ""
        ar = r["allreduce_bytes_per_step"] / 1e6
        bare = f"{r['bare_allreduce_s']:.3f}" if r["bare_allreduce_s"] else "-"
        print(f"{w:>5} {r['local_batch']:>5} {r['threads_per_rank']:>3} {r['step_s_median']:>8.3f} {r['img_per_s']:>7.1f} "
              f"{r['strong_scaling_efficiency']:>5.2f} {ar:>12.2f} {bare:>9} {note}")
    if summary["allreduce_bytes_per_step"]:
        by = summary["allreduce_bytes_per_step_by_net"]
        print(f"all-reduce per step: G {by['G'] / 1e6:.2f} MB + D {by['D'] / 1e6:.2f} MB = {summary['allreduce_bytes_per_step'] / 1e6:.2f} MB "
              f"(param bytes G {summary['param_bytes_by_net']['G'] / 1e6:.2f} MB, D {summary['param_bytes_by_net']['D'] / 1e6:.2f} MB); "
              f"{summary['buckets_per_step']:.0f} buckets; BN buffer broadcasts {summary['buffer_broadcast_bytes_per_step'] / 1e3:.1f} kB")
    if summary["flops_per_image"]:
        print(f"FLOPs per image (G+D, fwd+bwd): {summary['flops_per_image'] / 1e9:.3f} GFLOP")


# ------------------------------------------------------------ one-GPU compute sweep
def _trainer_step(recipe: str, overrides: Sequence[str], b: int):
    """dist_gan's own TrainStep (needs the package's dependencies: omegaconf, accelerate)."""
    from accelerate import Accelerator

    from benchmarks.step import build_dist_gan_step, load_cfg

    cfg = load_cfg(recipe, [f"train.batch={b}", *overrides])
    step, next_real, ctx = build_dist_gan_step(cfg, Accelerator(mixed_precision="no"), b)
    state = {"nimg": 0}

    def run() -> None:
        state["nimg"] += step(next_real, True, True, ctx, state["nimg"])

    return run


def _proxy_step(b: int, device: torch.device, resolution: int = 64, nz: int = 100, width: int = 64):
    """The same step with torch alone, for a GPU box without the package's dependencies.

    The textbook networks have dist_gan's DCGAN widths (benchmarks/textbook.py; D without its
    Sigmoid); the step is TrainStep's: bf16 autocast, channels_last, fused Adam, BCE with logits,
    G's forward once, D on reals and detached fakes, G's loss through a frozen D, EMA of G.
    """
    import copy

    import torch.nn.functional as F

    from benchmarks.textbook import TextbookDiscriminator, TextbookGenerator, weights_init

    torch.manual_seed(0)
    G = TextbookGenerator(resolution, nz, width).to(device).to(memory_format=torch.channels_last)
    D = TextbookDiscriminator(resolution, width).main[:-1].to(device).to(memory_format=torch.channels_last)
    G.apply(weights_init), D.apply(weights_init)
    G_ema = copy.deepcopy(G).requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), 1e-4, betas=(0.5, 0.999), fused=True)
    opt_D = torch.optim.Adam(D.parameters(), 4e-4, betas=(0.5, 0.999), fused=True)
    reals = torch.randint(0, 256, (b, 3, resolution, resolution), dtype=torch.uint8).pin_memory()
    ema_params, g_params = list(G_ema.parameters()), list(G.parameters())

    def run() -> None:
        real = reals.to(device, non_blocking=True).float().div_(127.5).sub_(1).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fake = G(torch.randn(b, nz, 1, 1, device=device))
            lr_, lf = D(real).float(), D(fake.detach()).float()
            loss_d = F.binary_cross_entropy_with_logits(lr_, torch.full_like(lr_, 0.9)) + \
                F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf))
        loss_d.backward()
        opt_D.step(), opt_D.zero_grad(set_to_none=True)
        D.requires_grad_(False)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lg = D(fake).float()
            loss_g = F.binary_cross_entropy_with_logits(lg, torch.ones_like(lg))
        loss_g.backward()
        opt_G.step(), opt_G.zero_grad(set_to_none=True)
        D.requires_grad_(True)
        torch._foreach_lerp_(ema_params, g_params, 1 - 0.999)

    return run


def gpu_sweep(args: argparse.Namespace) -> Dict[str, Any]:
    device = torch.device("cuda")
    try:
        _trainer_step(args.gpu_recipe, args.override, 2)
        kind = f"dist_gan TrainStep, recipe {args.gpu_recipe} {' '.join(args.override)}".strip()
    except ImportError as exc:
        kind = f"torch-only proxy of TrainStep (bf16, channels_last, fused Adam, eager); package import failed: {exc}"
    print(f"step: {kind}", flush=True)
    rows = {}
    for b in args.batches:
        run = _trainer_step(args.gpu_recipe, args.override, b) if kind.startswith("dist_gan") else _proxy_step(b, device)
        for _ in range(args.warmup):
            run()
        iters = max(5, min(200, args.gpu_images // b))
        runs = [common.time_call(run, iters, device) / iters for _ in range(args.repeats)]
        s = statistics.median(runs)
        rows[str(b)] = {"per_gpu_batch": b, "step_s": s, "img_per_s": b / s, "iters": iters, "runs": runs}
        print(f"per-GPU batch {b:>5}: {s * 1e3:8.2f} ms/step  {b / s:10.0f} img/s", flush=True)
        del run
        torch.cuda.empty_cache()
    flops = None
    try:
        from torch.utils.flop_counter import FlopCounterMode

        run = _proxy_step(16, device)
        run()
        with FlopCounterMode(display=False) as counter:
            run()
        flops = counter.get_total_flops() / 16
    except Exception as exc:  # noqa: BLE001 - a missing counter must not lose the timings
        print(f"flop count failed: {exc}")
    for r in rows.values():
        if flops:
            r["achieved_tflops"] = flops * r["img_per_s"] / 1e12
    return {"step": kind, "flops_per_image_proxy": flops, "by_per_gpu_batch": rows}


# ------------------------------------------------------------ projection
def ring_allreduce_s(nbytes: float, n: int, bw_Bps: float, alpha_s: float, messages: float) -> float:
    """Ring all-reduce: 2(n-1)/n * bytes / bw, plus 2(n-1) latency hops per message (bucket)."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bw_Bps + messages * 2 * (n - 1) * alpha_s


def project(cpu: Dict[str, Any], gpu: Optional[Dict[str, Any]], assumed_tflops: float, global_batches: Sequence[int],
            weak_batches: Sequence[int] = (64, 512), alpha_s: float = 5e-6) -> Dict[str, Any]:
    """Efficiency on 8 GPUs (one NVLink node) and 64 GPUs (8 nodes over InfiniBand).

    Strong scaling: global batch B fixed, efficiency = T1(B) / (n * Tn) with Tn = compute(B/n) + all-reduce.
    Weak scaling: per-GPU batch b fixed, efficiency = compute(b) / (compute(b) + all-reduce).
    compute(b) is the measured one-GPU step time at per-GPU batch b (launch overhead included);
    beyond the largest measured batch it is extrapolated linearly (the step is compute-bound there);
    without GPU measurements it is flops * b / assumed TFLOP/s.
    """
    s = cpu["results"]["summary"]
    nbytes, flops, buckets = s["allreduce_bytes_per_step"], s["flops_per_image"], s["buckets_per_step"]
    measured = {int(k): v["step_s"] for k, v in (gpu or {}).get("results", {}).get("by_per_gpu_batch", {}).items()}

    def compute_s(b: int) -> tuple:
        if b in measured:
            return measured[b], "measured"
        if measured and b > max(measured):
            top = max(measured)
            return measured[top] * b / top, f"extrapolated from b={top}"
        return flops * b / (assumed_tflops * 1e12), f"assumed {assumed_tflops:g} TFLOP/s"

    systems = {8: (450e9, "NVLink 450 GB/s per GPU"), 64: (50e9, "IB NDR 50 GB/s per node (the ring's bottleneck link)")}
    out: Dict[str, Any] = {"assumptions": {
        "allreduce_bytes_per_step": nbytes, "flops_per_image": flops, "buckets_per_step": buckets,
        "latency_per_ring_hop_s": alpha_s, "assumed_tflops_when_not_measured": assumed_tflops,
        "gpu": (gpu or {}).get("machine", {}).get("gpu")}, "strong": [], "weak": []}
    for B in global_batches:
        t1, src1 = compute_s(B)
        for n, (bw, link) in systems.items():
            if B % n:
                continue
            b = B // n
            tc, src = compute_s(b)
            ta = ring_allreduce_s(nbytes, n, bw, alpha_s, buckets)
            out["strong"].append({"global_batch": B, "gpus": n, "per_gpu_batch": b, "link": link, "t1_s": t1, "t1_source": src1,
                                  "compute_s": tc, "compute_source": src, "allreduce_s": ta,
                                  "efficiency_no_overlap": t1 / (n * (tc + ta)),
                                  "efficiency_full_overlap": t1 / (n * max(tc, ta)),
                                  "img_per_s_no_overlap": B / (tc + ta), "img_per_s_one_gpu": B / t1})
    for b in weak_batches:
        tc, src = compute_s(b)
        for n, (bw, link) in systems.items():
            ta = ring_allreduce_s(nbytes, n, bw, alpha_s, buckets)
            out["weak"].append({"per_gpu_batch": b, "gpus": n, "global_batch": b * n, "link": link, "compute_s": tc,
                                "compute_source": src, "allreduce_s": ta, "efficiency_no_overlap": tc / (tc + ta),
                                "efficiency_full_overlap": tc / max(tc, ta), "img_per_s_no_overlap": n * b / (tc + ta)})
    return out


def print_projection(p: Dict[str, Any]) -> None:
    a = p["assumptions"]
    print(f"{a['gpu'] or 'no GPU measurements'}: {a['allreduce_bytes_per_step'] / 1e6:.2f} MB all-reduced/step, "
          f"{a['flops_per_image'] / 1e9:.3f} GFLOP/image, {a['buckets_per_step']:.0f} buckets/step, "
          f"{a['latency_per_ring_hop_s'] * 1e6:.0f} us per ring hop")
    print("strong scaling (global batch fixed)")
    print(f"{'B':>6} {'GPUs':>4} {'b/GPU':>5} {'T1 ms':>8} {'compute ms':>10} {'allreduce ms':>12} {'eff no-ovl':>10} {'eff ovl':>7} {'img/s':>9}  compute")
    for r in p["strong"]:
        print(f"{r['global_batch']:>6} {r['gpus']:>4} {r['per_gpu_batch']:>5} {r['t1_s'] * 1e3:>8.2f} {r['compute_s'] * 1e3:>10.2f} "
              f"{r['allreduce_s'] * 1e3:>12.3f} {r['efficiency_no_overlap']:>10.2f} {r['efficiency_full_overlap']:>7.2f} "
              f"{r['img_per_s_no_overlap']:>9.0f}  {r['compute_source']}")
    print("weak scaling (per-GPU batch fixed)")
    print(f"{'b/GPU':>5} {'GPUs':>4} {'B':>6} {'compute ms':>10} {'allreduce ms':>12} {'eff no-ovl':>10} {'eff ovl':>7} {'img/s':>9}")
    for r in p["weak"]:
        print(f"{r['per_gpu_batch']:>5} {r['gpus']:>4} {r['global_batch']:>6} {r['compute_s'] * 1e3:>10.2f} {r['allreduce_s'] * 1e3:>12.3f} "
              f"{r['efficiency_no_overlap']:>10.2f} {r['efficiency_full_overlap']:>7.2f} {r['img_per_s_no_overlap']:>9.0f}")


# ------------------------------------------------------------ CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64, help="Global batch (CPU study).")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--ranks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=4, help="Timed steps per world size.")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--gpu-sweep", action="store_true", help="Time the step on one CUDA GPU at several per-GPU batches.")
    p.add_argument("--gpu-recipe", default="bigbatch")
    p.add_argument("--override", nargs="*", default=[], help="key=value overrides for the GPU sweep.")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[2, 8, 16, 64, 128, 512])
    p.add_argument("--gpu-images", type=int, default=20000, help="Images per timed repeat (GPU sweep).")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--project", action="store_true", help="Print the 8/64-GPU projection from the JSON results.")
    p.add_argument("--assumed-tflops", type=float, default=100.0)
    p.add_argument("--global-batches", type=lambda s: [int(x) for x in s.split(",")], default=[512, 4096, 32768])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Any:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.project:
        cpu = json.loads((args.out or common.RESULTS / "scaling_cpu.json").read_text())
        gpu_path = common.RESULTS / "scaling_gpu.json"
        gpu = json.loads(gpu_path.read_text()) if gpu_path.exists() else None
        p = project(cpu, gpu, args.assumed_tflops, args.global_batches)
        print_projection(p)
        return p
    if args.gpu_sweep:
        res = gpu_sweep(args)
        path = common.write_json(args.out or common.RESULTS / "scaling_gpu.json", "scaling_gpu", vars(args) | {"out": None}, res, torch.device("cuda"))
    else:
        res = cpu_study(args)
        settings = {"recipe": RECIPE, "precision": "fp32", "global_batch": args.batch, "resolution": args.resolution,
                    "ranks": args.ranks, "steps": args.steps, "warmup": args.warmup, "backend": "gloo (CPU)"}
        path = common.write_json(args.out or common.RESULTS / "scaling_cpu.json", "scaling_cpu", settings, res, torch.device("cpu"))
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
