"""Helpers shared by the speed benchmarks: alternating runs, medians, machine info, the JSON
envelope, the scratch cache. (The quality benchmarks' train -> eval -> table path is
``benchmarks/harness.py``.)

Rules every benchmark here follows:
- candidates run side by side in ONE process, interleaved (A, B, A, B, ...), and the
  figure reported is the median over repeats, so a noisy neighbour slows both alike;
- every candidate is warmed up first (allocator, oneDNN/cuDNN autotuning, compilation);
- on CUDA the clock is read only after ``torch.cuda.synchronize()``;
- results go to JSON with the machine they came from.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from dist_gan.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SCHEMA = "dist_gan.bench/1"


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], iters: int, device: torch.device) -> float:
    """Seconds for ``iters`` calls of ``fn``, synchronised at both ends."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return time.perf_counter() - t0


def alternate(candidates: Mapping[str, Callable[[], Any]], *, iters: int, repeats: int, warmup: int,
              device: torch.device, images_per_call: int, log: Optional[Callable[[str], None]] = print) -> Dict[str, Dict[str, Any]]:
    """Time every candidate ``repeats`` times, interleaved; images/s per repeat and the median.

    Each repeat runs the candidates in a rotated order (A B C, B C A, ...) so no
    candidate always follows the same neighbour (caches, thermal, the machine's load).
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
        sync(device)
    runs: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            dt = time_call(candidates[name], iters, device)
            runs[name].append(images_per_call * iters / dt)
        if log:
            log(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {runs[n][-1]:.1f}" for n in names) + " img/s")
    return {n: summarize(v) for n, v in runs.items()}


def summarize(values: List[float]) -> Dict[str, Any]:
    return {
        "img_per_s": statistics.median(values),
        "runs": [round(v, 3) for v in values],
        "min": min(values),
        "max": max(values),
    }


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a launcher's rendezvous or a loopback server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def paired_ratio(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """a/b per repeat (runs taken side by side in the same repeat), and their median.

    On a noisy machine the load drifts between repeats; the ratio within a repeat
    compares runs seconds apart, so its median is steadier than a ratio of medians.
    """
    ratios = [x / y for x, y in zip(a["runs"], b["runs"])]
    return {"median": statistics.median(ratios), "runs": [round(r, 3) for r in ratios]}


def machine_info(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Where a figure came from: CPU, threads, load, torch build, GPU if any."""
    info: Dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    try:
        info["loadavg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_mem_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def write_json(path: str | Path, kind: str, settings: Dict[str, Any], results: Dict[str, Any], device: torch.device) -> Path:
    """``{"schema", "benchmark", "time", "commit", "machine", "settings", "results"}``, written atomically
    (``dist_gan.files``: a reader, or the next benchmark's ``--step-json``, never sees half a file)."""
    payload = {
        "schema": SCHEMA,
        "benchmark": kind,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git_commit(),
        "machine": machine_info(device),
        "settings": settings,
        "results": results,
    }
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (torch.device, torch.dtype, Path)):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON-serialisable: {type(obj)}")


def default_out(name: str, device: torch.device) -> Path:
    """``benchmarks/results/<name>_<cpu|cuda>.json``."""
    return RESULTS / f"{name}_{'cuda' if device.type == 'cuda' else 'cpu'}.json"


def set_threads(threads: int) -> None:
    """0 = leave torch's default (all cores); else pin intra-op threads."""
    if threads > 0:
        torch.set_num_threads(threads)


def cache_dir() -> Path:
    """Scratch space OUTSIDE the repo for packed shards / ImageFolder trees."""
    root = os.environ.get("DIST_GAN_BENCH_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dist_gan_bench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path

