"""Shard loader (dist_gan ``StreamLoader``) vs torchvision ImageFolder + DataLoader, same workers.

Both decode the SAME 64x64 PNGs: the source (default the CelebA 10k zip) is packed
once with ``dist_gan.data.pack.pack`` into a cache folder OUTSIDE the repo, and the
images of those shards (read with ``dist_gan.data.format.iter_images``) are written out
as PNG files, encoded exactly as the packer encodes them, into an ImageFolder tree
(``<cache>/imagefolder-<name>/faces/<key>.png``). Then, at the same batch and worker count:

- ``dist_gan_stream``: ``StreamLoader`` (resampled WebDataset stream, shuffle buffer,
  uint8 batches made in the workers), then ``to_model_range`` (uint8 -> [-1, 1]
  float, on the device): what the trainer's ``next_real`` does;
- ``imagefolder``: the PyTorch DCGAN example's loader (``ImageFolder`` +
  Resize/CenterCrop/ToTensor/Normalize per image, default collate), then ``.to(device)``.

Each timed run starts a fresh iterator (workers included), drains ``--warm``
batches untimed (start-up, and the prefetch queue, so what is timed is the
workers' steady rate, not a buffer), then times ``--batches`` batches. Runs
alternate between the candidates; the median over ``--repeats`` is reported.
The JSON also relates the loader to the training step (``results/step_<dev>.json``
if present): the loader should deliver >= 10x what the step consumes.

``--formats`` picks the shard formats timed (default both, each packed from the
same source by ``dist_gan.data.pack`` into the cache):

- ``png``: the default pack, decoded per image in the workers (``dist_gan_stream``);
- ``blocks``: 256 images per uint8 array (``dist_gan_stream_blocks``), read into a
  shuffle pool and batched by fancy indexing. (The former per-image ``npy`` format is
  gone: blocks beat it 18.7k to 7.6k img/s at about the same size.)

``--http`` (on by default) adds ``<candidate>_http`` for each format: the same shards streamed
from ``http://127.0.0.1:PORT/`` (``python -m http.server`` in its own process, as a static file
server or bucket would serve them), through the same ``StreamLoader``: ``data=URL`` in training.

    python benchmarks/loader.py                     # celeba-10k at 64 px, batch 128, 2 workers
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch
from PIL import Image

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.textbook import imagefolder_loader  # noqa: E402
from dist_gan.data.format import IMAGE_EXT, iter_images, member_name, open_shards, sample_key  # noqa: E402
from dist_gan.data.images import encode_png  # noqa: E402
from dist_gan.data.pack import pack  # noqa: E402
from dist_gan.data.stream import StreamLoader, to_model_range  # noqa: E402

DEFAULT_SRC = common.REPO.parent / "shared" / "data" / "celeba-10k.zip"


FORMATS = ("png", "blocks")
CANDIDATE = {"png": "dist_gan_stream", "blocks": "dist_gan_stream_blocks"}


def ensure_shards(src: Path, cache: Path, resolution: int, limit: Optional[int], image_format: str = "png") -> Path:
    """Pack ``src`` into ``cache/shards-<stem>-<res>[-<limit>][-<format>]`` once (the packer is deterministic)."""
    suffix = "" if image_format == "png" else f"-{image_format}"
    out = cache / f"shards-{src.stem}-{resolution}{f'-{limit}' if limit else ''}{suffix}"
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("image_format", "png") != image_format:
        raise SystemExit(f"{out} holds a different format (an older what-if copy?); delete it and rerun")
    if not manifest.is_file():
        print(f"packing {src} -> {out} ({image_format}, once)", flush=True)
        pack(src, out, resolution=resolution, progress=False, limit=limit, image_format=image_format, overwrite=True)
    return out


def ensure_imagefolder(shards: Path) -> Path:
    """The shards' images as PNG files in an ImageFolder tree beside them (one class, ``faces``)."""
    root = shards.parent / f"imagefolder-{shards.name.removeprefix('shards-')}"
    done = root / ".complete"
    if done.is_file():
        return root
    cls = root / "faces"
    cls.mkdir(parents=True, exist_ok=True)
    n = 0
    for n, img in enumerate(iter_images(open_shards(shards)), 1):  # keys are the running image index
        (cls / member_name(sample_key(n - 1), IMAGE_EXT)).write_bytes(encode_png(Image.fromarray(img)))
    done.write_text(f"{n}\n")
    return root


def stream_factory(shards_dir: Path | str, batch: int, workers: int, device: torch.device, shuffle: int, chunk_batches: int) -> Callable[[], Iterator[torch.Tensor]]:
    shards = open_shards(shards_dir)
    state = {"seed": 0}

    def make() -> Iterator[torch.Tensor]:
        state["seed"] += 1  # a fresh stream each run, not a replay from the page cache's favourite shard
        loader = StreamLoader(shards, batch, 0, 1, seed=state["seed"], workers=workers, shuffle=shuffle,
                              chunk_batches=chunk_batches, pin_memory=device.type == "cuda")
        batches = loader.batches()
        try:
            for b in batches:
                yield to_model_range(b, device)
        finally:
            batches.close()

    return make


@contextlib.contextmanager
def loopback_server(root: Path, timeout_s: float = 30.0) -> Iterator[str]:
    """``root`` served by ``python -m http.server`` on a free 127.0.0.1 port, in its own process; yields the URL."""
    port = common.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(url + "manifest.json", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the loopback file server on {url} did not start")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def imagefolder_factory(root: Path, batch: int, workers: int, device: torch.device) -> Callable[[], Iterator[torch.Tensor]]:
    def make() -> Iterator[torch.Tensor]:
        loader = imagefolder_loader(str(root), batch, workers, pin_memory=device.type == "cuda")
        while True:
            for images, _ in loader:
                yield images.to(device, non_blocking=True)

    return make


def time_loader(make: Callable[[], Iterator[torch.Tensor]], warm: int, batches: int, batch: int, device: torch.device) -> float:
    """images/s over ``batches`` batches after ``warm`` untimed ones, on a fresh iterator."""
    it = make()
    try:
        for _ in range(warm):
            x = next(it)
        common.sync(device)
        t0 = time.perf_counter()
        for _ in range(batches):
            x = next(it)
            assert x.shape[0] == batch and x.dtype == torch.float32
        common.sync(device)
        return batch * batches / (time.perf_counter() - t0)
    finally:
        it.close()
        del it
        gc.collect()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default=str(DEFAULT_SRC), help="folder or zip of images (default: the CelebA 10k zip)")
    p.add_argument("--cache", default=None, help="scratch folder outside the repo (default ~/.cache/dist_gan_bench)")
    p.add_argument("--limit", type=int, default=None, help="pack only the first N images")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, the same for both")
    p.add_argument("--batches", type=int, default=30, help="timed batches per run")
    p.add_argument("--warm", type=int, default=None,
                   help="untimed batches first (default: enough to drain the prefetch queues and fill the shuffle buffers)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shuffle", type=int, default=1000, help="StreamLoader shuffle buffer (loader.shuffle)")
    p.add_argument("--chunk-batches", type=int, default=500, help="StreamLoader chunk (loader.chunk_batches)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="shard formats to time (png is always timed)")
    p.add_argument("--http", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each format's shards streamed from a loopback HTTP server (<candidate>_http)")
    p.add_argument("--step-json", default=None, help="step benchmark JSON to relate to (default results/step_<dev>.json)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    device = common.pick_device(args.device)
    cache = Path(args.cache) if args.cache else common.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    src = Path(args.src)
    if common.REPO in cache.resolve().parents:
        raise SystemExit(f"--cache {cache} is inside the repo; use a scratch folder outside it")
    shards = ensure_shards(src, cache, args.resolution, args.limit)
    folder = ensure_imagefolder(shards)
    n_images = json.loads((shards / "manifest.json").read_text())["num_samples"]
    # Drain the prefetch queues and let each worker fill its shuffle buffer (two reads per yield
    # until full), so the timed batches are the steady state the trainer sees between chunks.
    fill = -(-args.shuffle * max(1, args.workers) // args.batch) if args.shuffle > 1 else 0
    warm = args.warm if args.warm is not None else max(4 * max(1, args.workers) + 2, fill + 2)
    print(f"loader benchmark: {n_images} images {args.resolution}px, batch {args.batch}, {args.workers} workers, "
          f"{args.batches} timed batches after {warm}, device {device}", flush=True)

    factories = {
        "dist_gan_stream": stream_factory(shards, args.batch, args.workers, device, args.shuffle, args.chunk_batches),
        "imagefolder": imagefolder_factory(folder, args.batch, args.workers, device),
    }
    extra_formats = [f for f in args.formats if f != "png"]  # png is the always-timed dist_gan_stream
    packed = {"png": shards}
    for fmt in extra_formats:
        packed[fmt] = ensure_shards(src, cache, args.resolution, args.limit, fmt)
        factories[CANDIDATE[fmt]] = stream_factory(packed[fmt], args.batch, args.workers, device, args.shuffle, args.chunk_batches)
    with contextlib.ExitStack() as stack:
        if args.http:
            for fmt, folder_ in packed.items():
                url = stack.enter_context(loopback_server(folder_))
                factories[f"{CANDIDATE[fmt]}_http"] = stream_factory(url, args.batch, args.workers, device, args.shuffle, args.chunk_batches)
        runs: Dict[str, list] = {k: [] for k in factories}
        names = list(factories)
        for r in range(args.repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                runs[name].append(time_loader(factories[name], warm, args.batches, args.batch, device))
            print(f"  repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {runs[n][-1]:.0f}" for n in names) + " img/s", flush=True)
    results: Dict[str, Any] = {k: common.summarize(v) for k, v in runs.items()}
    results["ratio_stream_vs_imagefolder"] = results["dist_gan_stream"]["img_per_s"] / results["imagefolder"]["img_per_s"]
    results["ratio_stream_vs_imagefolder_paired"] = common.paired_ratio(results["dist_gan_stream"], results["imagefolder"])
    for fmt in extra_formats:
        name = CANDIDATE[fmt]
        results[f"ratio_{fmt}_vs_imagefolder"] = results[name]["img_per_s"] / results["imagefolder"]["img_per_s"]
        results[f"ratio_{fmt}_vs_imagefolder_paired"] = common.paired_ratio(results[name], results["imagefolder"])
    for fmt in packed if args.http else ():
        local = CANDIDATE[fmt]
        results[f"ratio_{fmt}_http_vs_local"] = results[f"{local}_http"]["img_per_s"] / results[local]["img_per_s"]
        results[f"ratio_{fmt}_http_vs_local_paired"] = common.paired_ratio(results[f"{local}_http"], results[local])
    step_json = Path(args.step_json) if args.step_json else common.default_out("step", device)
    if step_json.is_file():
        step = json.loads(step_json.read_text())["results"]
        consumed = step["dist_gan"]["img_per_s"]
        results["step_img_per_s"] = consumed
        results["step_json"] = str(step_json)
        results["ratio_stream_vs_step"] = results["dist_gan_stream"]["img_per_s"] / consumed
        best = max((CANDIDATE[f] for f in args.formats), key=lambda n: results[n]["img_per_s"])
        results["ratio_best_vs_step"] = {"loader": best, "ratio": results[best]["img_per_s"] / consumed}
    settings = {"src": str(src), "num_images": n_images, "resolution": args.resolution, "batch": args.batch,
                "workers": args.workers, "batches": args.batches, "warm": warm, "repeats": args.repeats,
                "shuffle": args.shuffle, "chunk_batches": args.chunk_batches, "device": str(device), "http": args.http}
    path = Path(args.out) if args.out else common.default_out("loader", device)
    common.write_json(path, "loader", settings, results, device)
    for name in names:
        print(f"{name:22s}: {results[name]['img_per_s']:9.0f} img/s")
    print(f"stream / imagefolder: {results['ratio_stream_vs_imagefolder']:.2f}x")
    for fmt in extra_formats:
        print(f"stream ({fmt}) / imagefolder: {results[f'ratio_{fmt}_vs_imagefolder']:.2f}x")
    for fmt in packed if args.http else ():
        print(f"stream ({fmt}) over loopback HTTP / local folder: {results[f'ratio_{fmt}_http_vs_local']:.2f}x "
              f"(paired median {results[f'ratio_{fmt}_http_vs_local_paired']['median']:.2f}x)")
    if "ratio_stream_vs_step" in results:
        print(f"stream / training step ({results['step_img_per_s']:.0f} img/s): {results['ratio_stream_vs_step']:.1f}x")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
