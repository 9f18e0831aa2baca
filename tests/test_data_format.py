"""The shard format module: names, manifest checks, the one sequential reader, and every consumer
reading the same pixels from png and blocks packs of one source."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_gan.data import format as F
from dist_gan.data.pack import pack
from dist_gan.data.stream import StreamLoader
from dist_gan.data.synthetic import draw_faces
from dist_gan.errors import UserError
from dist_gan.eval import reference as R
from dist_gan.tools import superres as S

N, RES = 23, 32
SHARD_COUNTS = [12, 11]


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict:
    """The same 23 synthetic faces packed as png and as blocks of 5 (two shards of 12 and 11 images)."""
    root = tmp_path_factory.mktemp("format")
    src = draw_faces(N, root / "src", size=RES, seed=7)
    out = {"src": src}
    for fmt in F.IMAGE_FORMATS:
        m = pack(src, root / fmt, resolution=RES, shard_size=12, progress=False, workers=1, image_format=fmt, block_size=5)
        assert m["image_format"] == fmt and [s["count"] for s in m["shards"]] == SHARD_COUNTS
        out[fmt] = root / fmt
    return out


def _source_pixels(src: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((src / "faces").iterdir())])


def test_names_round_trip():
    assert F.FORMAT == "dist_gan.shards/1" and F.MANIFEST == "manifest.json"
    assert F.shard_name(3) == "shard-000003.tar" and F.shard_index("shard-000003.tar") == 3
    assert F.shard_index("shard-3.tar") is None and F.shard_index("manifest.json") is None
    key = F.sample_key(42)
    assert key == "000000042"
    assert F.split_member(F.member_name(key, F.BLOCK_EXT)) == (key, F.BLOCK_EXT)
    assert F.split_member(f"sub/{F.member_name(key, F.IMAGE_EXT)}") == (f"sub/{key}", F.IMAGE_EXT)


def test_manifest_is_read(shards32):
    s = F.open_shards(shards32)
    assert s.counts == [16, 16, 5] and s.resolution == 32 and s.num_samples == 37
    assert s.image_format == F.PNG and not s.blocks


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="has no manifest.json.*dist-gan data pack"):
        F.open_shards(tmp_path)


def test_a_path_that_is_not_a_shard_folder_says_what_it_is(tmp_path):
    """data= a missing path, a zip of images, or any other file: one line each, never a traceback."""
    with pytest.raises(UserError, match="does not exist"):
        F.open_shards(tmp_path / "nowhere")
    faces = draw_faces(4, tmp_path / "faces.zip", size=32)
    with pytest.raises(UserError, match=r"is a zip of images, not a shard folder; pack it first: `dist-gan data pack"):
        F.open_shards(faces)
    blob = tmp_path / "photo.jpg"
    blob.write_bytes(bytes(range(256)) * 4)  # not UTF-8: the old reader died with UnicodeDecodeError
    with pytest.raises(UserError, match="is neither a shard folder nor a manifest"):
        F.open_shards(blob)


def test_every_consumer_reads_the_same_pixels_from_png_and_blocks(packs, tmp_path):
    """iter_images, the training stream, the evaluator's reference and superres training all see the
    source's pixels, in the same order, whichever format the shards were packed in."""
    expected = _source_pixels(packs["src"])  # 32 px faces packed at 32 px: stored as drawn
    assert expected.shape == (N, RES, RES, 3)
    metrics = {}
    for fmt in F.IMAGE_FORMATS:
        shards = F.open_shards(packs[fmt])
        assert shards.blocks == (fmt == F.BLOCKS)
        # the one sequential reader, whole and cut short (the cut falls inside a block)
        assert np.array_equal(np.stack(list(F.iter_images(shards))), expected)
        assert np.array_equal(np.stack(list(F.iter_images(shards, limit=7))), expected[:7])
        # the training stream: rank r of 2 reads only shard r; unshuffled, its first batch is that shard in order
        streamed = []
        for rank, count in enumerate(SHARD_COUNTS):
            loader = StreamLoader(shards, count, rank=rank, world_size=2, workers=0, shuffle=1, chunk_batches=2)
            streamed.append(next(iter(loader.batches())).permute(0, 2, 3, 1).numpy())
        assert np.array_equal(np.concatenate(streamed), expected)
        # the evaluator's reference
        ref = R.open_reference(packs[fmt])
        assert ref.kind == "shards" and ref.count == N
        assert np.array_equal(R.load_images(ref, N, RES), expected)
        assert np.array_equal(R.load_images(ref, 5, RES), expected[:5])
        # superres: its training images, then a tiny run whose scores depend on every pixel it read
        assert torch.equal(S.load_shard_images(packs[fmt]), S._to_tensor(list(expected)))
        metrics[fmt] = S.run_train(packs[fmt], tmp_path / f"sr-{fmt}.pt", scale=2, steps=2, n_train=16, n_eval=4,
                                   hr_size=RES, nf=8, n_blocks=1)
    assert metrics[F.PNG] == metrics[F.BLOCKS]


def _npy_pack(root: Path) -> Path:
    """A folder as the removed ``--format npy`` left it: manifest plus a shard of per-image arrays."""
    root.mkdir()
    with tarfile.open(root / F.shard_name(0), "w") as tar:
        buf = io.BytesIO()
        np.save(buf, np.zeros((RES, RES, 3), np.uint8))
        F.add_member(tar, F.member_name(F.sample_key(0), "npy"), buf.getvalue())
    manifest = {"format": F.FORMAT, "image_format": "npy", "resolution": RES, "source": "/data/faces.zip",
                "shards": [{"name": F.shard_name(0), "count": 1}]}
    (root / F.MANIFEST).write_text(json.dumps(manifest))
    return root


def test_opening_an_npy_pack_says_how_to_repack(tmp_path):
    old = _npy_pack(tmp_path / "old")
    with pytest.raises(UserError) as err:
        F.open_shards(old)
    msg = str(err.value)
    assert "\n" not in msg and "--format npy" in msg and "no longer reads" in msg
    assert f"`dist-gan data pack /data/faces.zip {old} --format blocks --overwrite`" in msg
    with pytest.raises(UserError, match="--format blocks"):
        R.open_reference(old)  # every consumer opens through format.open_shards
    with pytest.raises(UserError, match="--format blocks"):
        S.load_shard_images(old)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"format": "dist_gan.shards/9"}, "this dist_gan reads 'dist_gan.shards/1'"),
        ({"image_format": "jpeg"}, "unknown image_format 'jpeg'"),
        ({"resolution": None}, "not a valid shard manifest"),
        ({"shards": []}, "lists no non-empty shards"),
    ],
)
def test_foreign_manifests_are_refused(packs, tmp_path, change, match):
    folder = tmp_path / "copy"
    folder.mkdir()
    manifest = json.loads((packs[F.PNG] / F.MANIFEST).read_text())
    for s in manifest["shards"]:
        (folder / s["name"]).write_bytes((packs[F.PNG] / s["name"]).read_bytes())
    (folder / F.MANIFEST).write_text(json.dumps({**manifest, **change}))
    with pytest.raises(UserError, match=match):
        F.open_shards(folder)


def test_iter_images_fails_loudly_on_a_corrupt_member(packs, tmp_path):
    """A sequential reader must read exact images: a member that does not decode is an error, not a skip."""
    folder = tmp_path / "bad"
    folder.mkdir()
    with tarfile.open(folder / F.shard_name(0), "w") as tar:
        F.add_member(tar, F.member_name(F.sample_key(0), F.BLOCK_EXT), b"\x93NUMPY broken")
    (folder / F.MANIFEST).write_text(json.dumps({"format": F.FORMAT, "image_format": F.BLOCKS, "resolution": RES,
                                                 "shards": [{"name": F.shard_name(0), "count": 5}]}))
    with pytest.raises(UserError, match="cannot be decoded.*repack"):
        list(F.iter_images(F.open_shards(folder)))
