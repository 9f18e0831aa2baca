"""The resampled shard stream: exact step counts, determinism, exact resume, robustness."""

from __future__ import annotations

import io
import itertools
import json
import tarfile

import pytest
import torch

from dist_gan.data.format import BLOCK_EXT, IMAGE_EXT, META_EXT, member_name, open_shards, sample_key
from dist_gan.data.stream import StreamLoader, split_shards, to_model_range
from dist_gan.errors import UserError


def take(loader: StreamLoader, n: int, start: int = 0):
    return list(itertools.islice(loader.batches(start_step=start), n))


def test_batches_are_uint8_rgb(shards32):
    (batch,) = take(StreamLoader(open_shards(shards32), local_batch=8, workers=0, shuffle=10, chunk_batches=4), 1)
    assert batch.dtype == torch.uint8 and batch.shape == (8, 3, 32, 32)
    x = to_model_range(batch, torch.device("cpu"))
    assert x.min() >= -1 and x.max() <= 1 and x.dtype == torch.float32


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_never_runs_dry_and_is_deterministic(shards32, workers):
    """37 images, 25 batches of 8 = 200 samples: resampling keeps going, identically twice."""
    make = lambda: StreamLoader(open_shards(shards32), 8, workers=workers, shuffle=16, chunk_batches=6, seed=3)
    a, b = take(make(), 25), take(make(), 25)
    assert len(a) == 25
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_resume_mid_chunk_gives_the_same_batches(shards32):
    make = lambda: StreamLoader(open_shards(shards32), 4, workers=2, shuffle=16, chunk_batches=6, seed=1)
    full = take(make(), 14)
    resumed = take(make(), 5, start=9)  # chunk 1, 3 batches in
    assert all(torch.equal(x, y) for x, y in zip(full[9:], resumed))


def test_ranks_see_different_data(shards32):
    s = open_shards(shards32)
    r0 = take(StreamLoader(s, 8, rank=0, world_size=2, workers=0, shuffle=16), 3)
    r1 = take(StreamLoader(s, 8, rank=1, world_size=2, workers=0, shuffle=16), 3)
    assert not all(torch.equal(x, y) for x, y in zip(r0, r1))


def test_split_is_explicit_and_never_empty():
    urls = [f"s{i}" for i in range(5)]
    assert split_shards(urls, 1, 2) == ["s1", "s3"]
    assert split_shards(urls[:1], 1, 2) == ["s0"]  # fewer shards than ranks: share them
    parts = [split_shards(urls, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == urls


def test_corrupt_samples_are_skipped_and_counted(tmp_path, shards32):
    bad = tmp_path / "bad"
    bad.mkdir()
    with tarfile.open(bad / "shard-000000.tar", "w") as tf:
        for i, payload in enumerate([b"not a png", (shards32 / "shard-000002.tar").read_bytes()[:0]]):
            info = tarfile.TarInfo(member_name(sample_key(i), IMAGE_EXT))
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        with tarfile.open(shards32 / "shard-000002.tar") as good:
            for m in good.getmembers():
                tf.addfile(m, good.extractfile(m))
    (bad / "manifest.json").write_text(json.dumps({"resolution": 32, "shards": [{"name": "shard-000000.tar", "count": 7}]}))
    loader = StreamLoader(open_shards(bad), 4, workers=0, shuffle=1, chunk_batches=2)
    batches = take(loader, 3)
    assert len(batches) == 3 and loader.bad_samples >= 2


@pytest.fixture(scope="module")
def blocks32(tmp_path_factory):
    """The same 37 faces as shards32, packed as blocks of 5 images in uneven shards of 16, 16 and 5."""
    from dist_gan.data.pack import pack
    from dist_gan.data.synthetic import draw_faces

    root = tmp_path_factory.mktemp("blocks32")
    faces = draw_faces(37, root / "faces.zip", size=32)
    pack(faces, root / "png", resolution=32, shard_size=16, progress=False, workers=1)
    pack(faces, root / "blk", resolution=32, shard_size=16, progress=False, workers=1, image_format="blocks", block_size=5)
    return root


def _pixels(batches):
    return {img.numpy().tobytes() for b in batches for img in b}


def test_blocks_stream_draws_only_packed_images_and_mixes_blocks(blocks32):
    """Every batch image is a packed image; a shuffled batch mixes blocks (not 5 neighbours in a row)."""
    png = take(StreamLoader(open_shards(blocks32 / "png"), 37, workers=0, shuffle=1), 20)
    blk_set = open_shards(blocks32 / "blk")
    assert blk_set.blocks and not open_shards(blocks32 / "png").blocks
    shuffled = take(StreamLoader(blk_set, 8, workers=0, shuffle=20, chunk_batches=4, seed=2), 12)
    assert all(b.dtype == torch.uint8 and b.shape == (8, 3, 32, 32) for b in shuffled)
    assert _pixels(shuffled) <= _pixels(png)
    assert len(_pixels(shuffled)) >= 30  # 96 draws from a pool of 20 over 37 images reach most of them
    plain = take(StreamLoader(blk_set, 8, workers=0, shuffle=1, chunk_batches=4, seed=2), 1)[0]
    first = shuffled[0]
    assert not torch.equal(plain, first)  # the pool reorders


@pytest.mark.parametrize("workers", [0, 2])
def test_blocks_stream_is_deterministic_and_resumes_exactly(blocks32, workers):
    make = lambda: StreamLoader(open_shards(blocks32 / "blk"), 4, workers=workers, shuffle=12, chunk_batches=6, seed=1, xflip=True)
    full, again = take(make(), 14), take(make(), 14)
    assert all(torch.equal(x, y) for x, y in zip(full, again))
    resumed = take(make(), 5, start=9)
    assert all(torch.equal(x, y) for x, y in zip(full[9:], resumed))


def test_blocks_xflip_mirrors_whole_images(blocks32):
    """xflip on blocks flips some images left-right and keeps the rest: each output is a packed image or its mirror."""
    packed = take(StreamLoader(open_shards(blocks32 / "png"), 37, workers=0, shuffle=1), 20)
    originals = _pixels(packed)
    mirrors = {img.flip(-1).numpy().tobytes() for b in packed for img in b}
    out = take(StreamLoader(open_shards(blocks32 / "blk"), 16, workers=0, shuffle=16, xflip=True, seed=5), 6)
    flipped = sum(img.numpy().tobytes() in mirrors - originals for b in out for img in b)
    kept = sum(img.numpy().tobytes() in originals for b in out for img in b)
    assert flipped + kept == 96 and 20 < flipped < 76


def test_corrupt_blocks_are_skipped_and_counted_by_their_images(tmp_path, blocks32):
    bad = tmp_path / "bad"
    bad.mkdir()
    src = blocks32 / "blk" / "shard-000002.tar"  # one good block of 5
    with tarfile.open(bad / "shard-000000.tar", "w") as tf:
        broken = [(member_name(sample_key(0), BLOCK_EXT), b"\x93NUMPY broken"),
                  (member_name(sample_key(0), META_EXT), json.dumps([{}] * 7).encode())]
        for name, payload in broken:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        with tarfile.open(src) as good:
            for m in good.getmembers():
                tf.addfile(m, good.extractfile(m))
    manifest = {"resolution": 32, "image_format": "blocks", "shards": [{"name": "shard-000000.tar", "count": 12}]}
    (bad / "manifest.json").write_text(json.dumps(manifest))
    loader = StreamLoader(open_shards(bad), 4, workers=0, shuffle=1, chunk_batches=2)
    batches = take(loader, 3)
    assert len(batches) == 3 and loader.bad_samples >= 7  # the broken block's 7 images, per its metadata


@pytest.mark.parametrize("blocks", [False, True])
def test_shards_with_nothing_decodable_fail_with_a_clear_error(tmp_path, blocks):
    """All-corrupt shards would resample forever without a batch: the stream stops with a UserError instead."""
    bad = tmp_path / "bad"
    bad.mkdir()
    ext = BLOCK_EXT if blocks else IMAGE_EXT
    with tarfile.open(bad / "shard-000000.tar", "w") as tf:
        for i in range(5):
            info = tarfile.TarInfo(member_name(sample_key(i), ext))
            info.size = 7
            tf.addfile(info, io.BytesIO(b"garbage"))
    manifest = {"resolution": 32, "shards": [{"name": "shard-000000.tar", "count": 5}]}
    if blocks:
        manifest["image_format"] = "blocks"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="unreadable samples or shards in a row.*repack"):
        take(StreamLoader(open_shards(bad), 4, workers=0, shuffle=1), 1)


@pytest.mark.parametrize("workers", [0, 1])
def test_shards_that_cannot_be_read_end_in_one_line_not_a_hang(shards32, tmp_path, workers):
    """Every shard truncated to 0 bytes: WebDataset's tar errors are counted like decode errors,
    and the stream stops with the repack message (one line, also from a worker process)."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shards32, bad)
    for shard in bad.glob("shard-*.tar"):
        shard.write_bytes(b"")
    with pytest.raises(UserError, match="unreadable samples or shards in a row.*repack") as err:
        take(StreamLoader(open_shards(bad), 4, workers=workers, shuffle=1), 1)
    assert "Traceback" not in str(err.value) and "\n" not in str(err.value)


def test_a_truncated_shard_is_named_once_and_counted(shards32, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shards32, bad)
    first = bad / "shard-000000.tar"
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2 + 100])  # cut mid-member
    loader = StreamLoader(open_shards(bad), 4, workers=0, shuffle=1, chunk_batches=40)
    with pytest.warns(RuntimeWarning) as caught:
        batches = take(loader, 30)
    named = [w for w in caught if w.category is RuntimeWarning and "cannot read" in str(w.message)]
    assert all("shard-000000.tar" in str(w.message) for w in named)
    assert len(batches) == 30 and len(named) == 1  # trains on, says it once
    assert loader.bad_samples >= 1
