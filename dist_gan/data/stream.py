"""Shards -> per-rank uint8 batches, an endless resampled WebDataset stream.

Why this shape:
- Shards are *resampled* (drawn with replacement) after an explicit split by node
  and by worker, so a rank never runs dry: every rank takes exactly the steps the
  training loop asks for, whatever the shard sizes. No DDP hang on uneven shards.
- The stream is cut into chunks of ``chunk_batches`` batches per rank
  (``with_epoch``). Chunk ``c`` is seeded by (seed, c, rank, worker), so the batch
  at any step is a pure function of the step: resume re-creates chunk ``c`` and
  skips the batches already seen, reaching bit-identical data.
- Member names, decoders and ``open_shards`` are ``dist_gan.data.format``'s; this
  module only decides which images each rank draws, in what order. Workers decode
  PNG/JPEG to uint8 (4x less to move than float); the training loop normalises to
  [-1, 1] on the device.
- Shards packed as ``blocks`` (N images per uint8 array) skip the per-image tar,
  decode and shuffle-buffer work: a block is read as one array into a pool of
  ``shuffle`` images, and each batch is ``batch`` distinct random pool slots,
  refilled from the stream (the same buffer shuffle, vectorised).
- This loader is never passed through ``accelerator.prepare``: accelerate's
  dispatcher would silently drop data from an IterableDataset.
"""

from __future__ import annotations

import random
import warnings
from collections import deque
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dist_gan.data.format import ShardSet, block_size_hint, decode_block_sample, decode_sample
from dist_gan.data.remote import FetchStats, RetryPolicy, ShardCache, describe, open_url
from dist_gan.errors import UserError

MAX_BAD_RUN = 1000  # this many unreadable samples or shards in a row: the shards are broken, not a few bad files


def split_shards(urls: Sequence[str], index: int, count: int) -> List[str]:
    """Take every ``count``-th shard from ``index``; if there are too few, share them all.

    With fewer shards than consumers, disjoint splits would leave some empty; as the
    stream is resampled with a consumer-specific seed, sharing is still a fair split.
    """
    if count <= 1 or len(urls) < count:
        return list(urls)
    return list(urls[index::count])


class ResampledShardStream(IterableDataset):
    """One chunk of the endless stream for one rank: ``batches_per_worker`` batches per worker."""

    def __init__(
        self,
        urls: Sequence[str],
        batch_size: int,
        batches_per_worker: int,
        seed: int,
        chunk: int,
        rank: int,
        world_size: int,
        shuffle: int = 1000,
        xflip: bool = False,
        blocks: bool = False,
        policy: RetryPolicy = RetryPolicy(),
        cache: Optional[Tuple[str, int]] = None,
        sha256: Sequence[Optional[str]] = (),
        names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.urls = list(urls)
        self.policy, self.cache = policy, cache  # cache: (folder, max bytes); the ShardCache is made per worker
        self.sha256 = dict(zip(self.urls, sha256))
        self.names = dict(zip(self.urls, names))  # url -> shard file name, the cache's key
        self.fetch = FetchStats()  # retried reads and bytes fetched by this worker
        self.batch_size, self.batches_per_worker = batch_size, batches_per_worker
        self.seed, self.chunk, self.rank, self.world_size = seed, chunk, rank, world_size
        self.shuffle, self.xflip, self.blocks = shuffle, xflip, blocks
        self.bad_samples = 0  # per-process count; corrupt samples and shards are skipped, never fatal...
        self._bad_run = 0  # ...unless nothing decodes at all, which would otherwise spin forever
        self.failed_shards: Dict[str, str] = {}  # shard -> why it could not be read (StreamLoader reports each once)

    def _count_bad(self, n: int) -> None:
        self.bad_samples += n
        self._bad_run += n
        if self._bad_run >= MAX_BAD_RUN:
            raise UserError(
                f"{self._bad_run} unreadable samples or shards in a row in the data of rank {self.rank} "
                f"({len(self.urls)} shard(s), e.g. {self.urls[0]}): they are corrupt or not made by "
                "`dist-gan data pack`; repack them"
            )

    def _shard_failed(self, exn: Exception) -> bool:
        """A shard that cannot be read (empty, truncated, not a tar): count it, remember why, go on.

        WebDataset appends the shard's URL (or its open stream) to the exception's args. A shard counts as one
        bad sample (how many it held past the break is unknown), so a set of shards none
        of which reads ends in the MAX_BAD_RUN error instead of resampling forever.
        """
        texts = [a if isinstance(a, str) else repr(a) for a in exn.args]  # the URL, or a stream that names the file
        url = next((u for t in reversed(texts) for u in self.urls if u in t), "a shard")
        what = texts[0].split(" @ ", 1)[0] if texts else ""
        self.failed_shards.setdefault(url, f"{type(exn).__name__}: {what}")
        self._count_bad(1)
        return True

    def _item(self, images: torch.Tensor, worker: int) -> dict:
        """A batch for the loader, with this worker's running counts of what it skipped."""
        return {"images": images, "worker": worker, "bad": self.bad_samples, "failed": dict(self.failed_shards),
                "retries": self.fetch.retries, "fetched": self.fetch.bytes}

    def _rng(self, worker: int) -> random.Random:
        return random.Random(f"{self.seed}/{self.chunk}/{self.rank}/{worker}")

    def _shard_urls(self, rng: random.Random, urls: List[str]) -> Iterator[dict]:
        while True:  # resampled: draw shards with replacement, forever
            yield {"url": rng.choice(urls)}

    def _open(self, sources: Iterator[dict]) -> Iterator[dict]:
        """Shard URLs -> open byte streams (through the cache if there is one); a shard that cannot be
        opened after the retry policy's attempts is counted and skipped. Each stream is closed when
        the next is asked for: WebDataset's tar expander reads a shard to its end before that."""
        cache = ShardCache(*self.cache) if self.cache else None
        previous = None
        for source in sources:
            if previous is not None:
                previous.close()
                previous = None
            url = source["url"]
            try:
                if cache is not None:
                    stream = cache.open(url, self.names[url], self.sha256.get(url), self.policy, self.fetch)
                else:
                    stream = open_url(url, self.policy, self.fetch)
            except Exception as exn:  # noqa: BLE001 - network, command and disk errors all mean: skip this shard
                self._shard_failed(OSError(describe(exn), url))
                continue
            previous = stream
            yield {"url": url, "stream": stream}
        if previous is not None:
            previous.close()

    def _samples(self, sources: Iterator[dict]) -> Iterator[dict]:
        """WebDataset's own tar reading and grouping by key, after our opener."""
        files = wds.tariterators.tar_file_expander(self._open(sources), handler=self._shard_failed)
        return wds.tariterators.group_by_keys(files, handler=self._shard_failed)

    def _decode(self, samples: Iterator[dict], rng: random.Random) -> Iterator[np.ndarray]:
        for sample in samples:
            try:
                arr = decode_sample(sample)
            except Exception:
                self._count_bad(1)
                continue
            self._bad_run = 0
            if self.xflip and rng.random() < 0.5:
                arr = arr[:, ::-1]
            yield arr

    def _batches(self, images: Iterator[np.ndarray], worker: int) -> Iterator[dict]:
        """uint8 (B, 3, H, W) batches, each tagged with this worker's running bad-sample count."""
        batch: List[np.ndarray] = []
        for arr in images:
            batch.append(arr)
            if len(batch) == self.batch_size:
                # NCHW view of NHWC memory: already channels_last, so no copy here or on the device
                images_t = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
                yield self._item(images_t, worker)
                batch = []

    def _decode_blocks(self, samples: Iterator[dict]) -> Iterator[np.ndarray]:
        for sample in samples:
            try:
                block = decode_block_sample(sample)
            except Exception:
                self._count_bad(block_size_hint(sample))
                continue
            self._bad_run = 0
            yield block

    def _pool_batches(self, blocks: Iterator[np.ndarray], rng: random.Random, worker: int) -> Iterator[dict]:
        """Batches from a pool of ``shuffle`` images: draw ``batch`` distinct slots, refill them from the stream."""
        gen = np.random.default_rng(rng.getrandbits(64))
        queue: Deque[np.ndarray] = deque()

        def take(n: int) -> np.ndarray:
            parts, need = [], n
            while need:
                if not queue:
                    queue.append(next(blocks))
                head = queue[0]
                part, rest = head[:need], head[need:]
                parts.append(part)
                need -= len(part)
                if len(rest):
                    queue[0] = rest
                else:
                    queue.popleft()
            return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

        size = max(self.shuffle, self.batch_size) if self.shuffle > 1 else 0
        pool = take(size) if size else None
        while True:
            if pool is not None:
                slots = gen.choice(size, self.batch_size, replace=False)
                batch = pool[slots]
                pool[slots] = take(self.batch_size)
            else:
                batch = take(self.batch_size)
            if self.xflip:
                flip = gen.random(self.batch_size) < 0.5
                batch[flip] = batch[flip, :, ::-1]
            yield self._item(torch.from_numpy(batch).permute(0, 3, 1, 2), worker)

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        mine = split_shards(split_shards(self.urls, self.rank, self.world_size), worker, num_workers)
        rng = self._rng(worker)
        if self.blocks:  # the pool in _pool_batches is the shuffle buffer
            stages = [self._decode_blocks, lambda src: self._pool_batches(src, rng, worker)]
        else:
            stages = [
                wds.shuffle(self.shuffle, initial=min(self.shuffle, 100), rng=rng) if self.shuffle > 1 else None,
                lambda src: self._decode(src, rng),
                lambda src: self._batches(src, worker),
            ]
        pipeline = wds.DataPipeline(
            lambda: self._shard_urls(rng, mine),
            self._samples,
            *stages,
        ).with_epoch(nbatches=self.batches_per_worker)
        yield from pipeline


class StreamLoader:
    """Per-rank batches of uint8 images, addressable by global step for exact resume."""

    def __init__(
        self,
        shards: ShardSet,
        local_batch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        workers: int = 2,
        shuffle: int = 1000,
        xflip: bool = False,
        chunk_batches: int = 500,
        pin_memory: bool = False,
        policy: RetryPolicy = RetryPolicy(),
        cache_dir: str = "",
        cache_bytes: int = 0,
    ) -> None:
        if local_batch <= 0:
            raise UserError(f"per-rank batch must be positive, got {local_batch}")
        self.shards, self.local_batch = shards, local_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.workers, self.shuffle, self.xflip, self.pin_memory = workers, shuffle, xflip, pin_memory
        self.batches_per_worker = max(1, chunk_batches // max(1, workers))
        self.chunk_batches = self.batches_per_worker * max(1, workers)
        self.bad_samples = 0  # corrupt samples skipped so far, summed over chunks and workers
        self.failed_shards: Dict[str, str] = {}  # shards that could not be read, each reported once
        self.retries = 0  # reads retried after a network or command fault, summed over chunks and workers
        self.fetched_bytes = 0  # bytes read from the shards' location (a cache hit reads none)
        self.policy = policy
        self.cache = (cache_dir, cache_bytes) if cache_dir else None

    def _chunk_loader(self, chunk: int) -> DataLoader:
        dataset = ResampledShardStream(
            self.shards.urls, self.local_batch, self.batches_per_worker, self.seed, chunk,
            self.rank, self.world_size, self.shuffle, self.xflip, self.shards.blocks,
            self.policy, self.cache, self.shards.sha256, self.shards.names,
        )
        return DataLoader(
            dataset,
            batch_size=None,  # batches are made in the workers
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if self.workers > 0 else None,
            # A private generator: creating loaders must not draw from the global torch
            # RNG, or a resumed run's latents would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed * 1000003 + chunk),
        )

    def batches(self, start_step: int = 0) -> Iterator[torch.Tensor]:
        """Endless uint8 (B, 3, R, R) batches starting at global step ``start_step``."""
        chunk, skip = divmod(start_step, self.chunk_batches)
        while True:
            per_worker: Dict[int, Tuple[int, int, int]] = {}  # worker -> its running (bad, retries, bytes) this chunk
            before = (self.bad_samples, self.retries, self.fetched_bytes)
            for i, item in enumerate(_worker_errors(self._chunk_loader(chunk))):
                per_worker[item["worker"]] = (item["bad"], item["retries"], item["fetched"])
                self.bad_samples, self.retries, self.fetched_bytes = (
                    b + sum(w[k] for w in per_worker.values()) for k, b in enumerate(before))
                for url, why in item["failed"].items():
                    if url not in self.failed_shards:
                        self.failed_shards[url] = why
                        warnings.warn(f"cannot read {url} ({why}); the rest of it is skipped and counted in "
                                      "bad_samples", RuntimeWarning, stacklevel=2)
                if i >= skip:
                    yield item["images"]
            chunk, skip = chunk + 1, 0


def _worker_errors(items: Iterator[dict]) -> Iterator[dict]:
    """A UserError raised in a loader worker reaches the user as its own one line.

    The DataLoader re-raises it in this process with the worker's whole traceback in
    the message; keep only what the stream said.
    """
    try:
        yield from items
    except UserError as exc:
        text = str(exc)
        if "Original Traceback" in text:
            raise UserError(text.rstrip().splitlines()[-1].split("UserError: ", 1)[-1]) from None
        raise


def to_model_range(batch: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 on the host -> float in [-1, 1] on the device (the copy overlaps compute)."""
    x = batch.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
