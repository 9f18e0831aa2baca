"""Packing folders/zips into deterministic WebDataset shards, with exact skip accounting."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Dict

import cv2
import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from dist_gan.cli import app
from dist_gan.data.format import BLOCK_EXT, IMAGE_EXT, META_EXT, decode_block, decode_image, member_name, split_member
from dist_gan.data.images import crop_box
from dist_gan.data.pack import pack
from dist_gan.errors import UserError

MANIFEST_KEYS = {
    "format", "source", "layout", "resolution", "crop", "min_size", "shard_size", "limit", "image_format", "block_size",
    "holdout", "counts", "shards", "num_samples", "content_hash", "dist_gan_version",
}


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def noise(seed: int, w: int, h: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "CMYK": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


def planted_files() -> Dict[str, bytes]:
    """8 good images plus one bad file per skip reason; the expected counts are below."""
    files: Dict[str, bytes] = {}
    for i in range(6):
        files[f"good/jpg_{i}.jpg"] = encode(noise(i, 80, 96), "JPEG")
    files["good/png_0.png"] = encode(noise(10, 64, 64), "PNG")
    files["nested/deep/png_1.png"] = encode(noise(11, 70, 70), "PNG")
    # duplicates of good/jpg_0.jpg: the first occurrence (sorted order) is kept
    files["zz_dup/copy_a.jpg"] = files["good/jpg_0.jpg"]
    files["zz_dup/copy_b.jpg"] = files["good/jpg_0.jpg"]
    jpg = encode(noise(20, 80, 80), "JPEG")
    files["bad/truncated.jpg"] = jpg[: len(jpg) // 2]
    png = bytearray(encode(noise(21, 64, 64), "PNG"))
    idat = png.index(b"IDAT")
    png[idat + 40 : idat + 60] = bytes(20)  # garbage in the compressed stream, CRC now wrong
    files["bad/broken.png"] = bytes(png)
    files["bad/random.jpg"] = np.random.default_rng(22).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    files["bad/notes.txt"] = b"not an image at all\n"
    files["bad/gray.png"] = encode(noise(23, 64, 64, "L"), "PNG")
    files["bad/cmyk.jpg"] = encode(noise(24, 64, 64, "CMYK"), "JPEG")
    files["bad/rgba.png"] = encode(noise(25, 64, 64, "RGBA"), "PNG")
    files["bad/gray16.png"] = encode(Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 13).reshape(64, 64)), "PNG")
    ok, rgb16 = cv2.imencode(".png", np.random.default_rng(26).integers(0, 65535, (64, 64, 3), dtype=np.uint16))
    files["bad/rgb16.png"] = rgb16.tobytes()
    files["bad/tiny.png"] = encode(noise(27, 16, 16), "PNG")
    files[".DS_Store"] = b"\x00\x00\x00\x01Bud1"
    files["good/.hidden.jpg"] = encode(noise(28, 64, 64), "JPEG")
    return files


EXPECTED_SKIPS = {
    "corrupt": 2,
    "not_image": 2,
    "duplicate": 2,
    "mode:L": 1,
    "mode:CMYK": 1,
    "mode:RGBA": 1,
    "mode:I;16": 1,
    "mode:RGB;16": 1,
    "too_small": 1,
}


def write_folder(root: Path, files: Dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_zip(path: Path, files: Dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def read_bytes(folder: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------ skip accounting
def test_zip_skips_are_counted_exactly_by_reason(tmp_path):
    files = planted_files()
    files["../evil.jpg"] = encode(noise(30, 64, 64), "JPEG")
    files["/abs.jpg"] = encode(noise(31, 64, 64), "JPEG")
    files["__MACOSX/good/._jpg_0.jpg"] = b"\x00\x05\x16\x07"
    src = write_zip(tmp_path / "planted.zip", files)
    m = pack(src, tmp_path / "out", progress=False)
    assert m["counts"]["skipped"] == {**EXPECTED_SKIPS, "unsafe_path": 2}
    assert m["counts"]["written"] == m["num_samples"] == 8
    assert m["counts"]["ignored"] == 3  # .DS_Store, .hidden.jpg, __MACOSX
    assert m["counts"]["seen"] == 8 + sum(EXPECTED_SKIPS.values()) + 2
    assert m["layout"] == "folder" and m["crop"] == "center"
    assert not (tmp_path / "evil.jpg").exists()


def test_folder_skips_are_counted_exactly_by_reason(tmp_path):
    src = write_folder(tmp_path / "src", planted_files())
    m = pack(src, tmp_path / "out", progress=False)
    assert m["counts"] == {"seen": 8 + sum(EXPECTED_SKIPS.values()), "written": 8, "skipped": EXPECTED_SKIPS, "ignored": 2}
    srcs = [json.loads(s["json"])["src"] for s in wds.WebDataset(str(tmp_path / "out/shard-000000.tar"), shardshuffle=False)]
    assert srcs == sorted(srcs) and "good/jpg_0.jpg" in srcs and not any("dup" in s for s in srcs)


def test_manifest_schema_and_tar_headers(tmp_path):
    src = write_folder(tmp_path / "src", planted_files())
    m = pack(src, tmp_path / "out", shard_size=3, progress=False)
    on_disk = json.loads((tmp_path / "out/manifest.json").read_text())
    assert on_disk == m and set(m) == MANIFEST_KEYS
    assert m["format"] == "dist_gan.shards/1" and m["source"] == str(src.resolve())
    assert [s["name"] for s in m["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s["count"] for s in m["shards"]] == [3, 3, 2]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json"] + [s["name"] for s in m["shards"]]
    with tarfile.open(tmp_path / "out/shard-000000.tar") as tar:
        members = tar.getmembers()
    assert [t.name for t in members] == [f"00000000{i}.{ext}" for i in range(3) for ext in (IMAGE_EXT, META_EXT)]
    for t in members:
        assert (t.mtime, t.uid, t.gid, t.uname, t.gname, t.mode) == (0, 0, 0, "", "", 0o644)


# ------------------------------------------------------------------ determinism
def test_rerun_is_byte_identical(tmp_path):
    src = write_zip(tmp_path / "src.zip", planted_files())
    pack(src, tmp_path / "a", shard_size=4, progress=False)
    first = read_bytes(tmp_path / "a")
    pack(src, tmp_path / "a", shard_size=4, progress=False)  # same settings: rewriting in place is fine
    pack(src, tmp_path / "b", shard_size=4, progress=False)
    assert read_bytes(tmp_path / "a") == first
    assert read_bytes(tmp_path / "b") == first


@pytest.mark.parametrize("image_format", ["png", "blocks"])
def test_pool_and_serial_give_identical_shards(tmp_path, image_format):
    files = {f"img/{i:04d}.png": encode(noise(100 + i, 40, 36), "PNG") for i in range(300)}
    src = write_folder(tmp_path / "src", files)
    kw = dict(resolution=32, shard_size=128, progress=False, image_format=image_format, block_size=50)
    serial = pack(src, tmp_path / "serial", workers=1, **kw)
    pooled = pack(src, tmp_path / "pooled", workers=2, **kw)
    assert serial["counts"]["written"] == pooled["counts"]["written"] == 300
    assert read_bytes(tmp_path / "serial") == read_bytes(tmp_path / "pooled")


# ------------------------------------------------------------------ read back
def test_shards_read_back_with_webdataset(tmp_path):
    src = write_folder(tmp_path / "src", {f"p/{i}.jpg": encode(noise(i, 90, 70), "JPEG") for i in range(7)})
    m = pack(src, tmp_path / "out", resolution=32, shard_size=3, progress=False)
    urls = [str(tmp_path / "out" / s["name"]) for s in m["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(7)]
    assert [s["json"]["src"] for s in samples] == [f"p/{i}.jpg" for i in range(7)]
    for s in samples:
        assert s["png"].mode == "RGB" and s["png"].size == (32, 32)
    # the pixels are the centre crop of the source, resized with LANCZOS
    first = Image.open(src / "p/0.jpg")
    expected = np.asarray(first.resize((32, 32), Image.Resampling.LANCZOS, box=(10, 0, 80, 70)))
    assert np.array_equal(np.asarray(samples[0]["png"]), expected)


# ------------------------------------------------------------------ layouts and crops
def _jpg(w: int, h: int, seed: int = 0) -> bytes:
    return encode(noise(seed, w, h), "JPEG")


@pytest.mark.parametrize(
    "files, layout, crop",
    [
        ({f"thumbnails128x128/00000/0000{i}.png": encode(noise(i, 128, 128), "PNG") for i in range(3)}, "ffhq", "center"),
        ({f"img_align_celeba/00000{i}.jpg": _jpg(89, 109, i) for i in range(1, 4)}, "celeba", "celeba"),
        ({f"celeba/img_align_celeba/00000{i}.jpg": _jpg(178, 218, i) for i in range(1, 3)}, "celeba", "celeba"),
        ({"images/1_2000.jpg": _jpg(64, 64, 1), "images/22_2011.jpg": _jpg(96, 96, 2)}, "anime", "center"),
        ({"a/b/c.jpg": _jpg(64, 64, 1), "a/d.png": encode(noise(2, 70, 64), "PNG"), "e.jpg": _jpg(80, 64, 3)}, "folder", "center"),
        # a CelebA-looking path whose images lack CelebA's 178:218 shape is just a folder
        ({f"img_align_celeba/00000{i}.jpg": _jpg(100, 100, i) for i in range(1, 3)}, "folder", "center"),
    ],
)
@pytest.mark.parametrize("as_zip", [False, True])
def test_layout_detection_by_content(tmp_path, files, layout, crop, as_zip):
    # the archive/folder name deliberately lies about the layout
    src = write_zip(tmp_path / "anime-faces.zip", files) if as_zip else write_folder(tmp_path / "ffhq", files)
    m = pack(src, tmp_path / "out", progress=False)
    assert (m["layout"], m["crop"], m["counts"]["written"]) == (layout, crop, len(files))


def test_crop_boxes():
    assert crop_box(178, 218, "celeba") == (35.0, 55.0, 143.0, 163.0)
    assert crop_box(89, 109, "celeba") == (17.5, 27.5, 71.5, 81.5)
    assert crop_box(100, 60, "center") == (20.0, 0.0, 80.0, 60.0)
    assert crop_box(100, 60, "none") == (0.0, 0.0, 100.0, 60.0)


def test_celeba_crop_on_half_size_matches_full_size(tmp_path):
    """The half-size crop is the full-size box scaled by 89/178, so both give nearly the same output."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (14, 11, 3), dtype=np.uint8)
    smooth = Image.fromarray(coarse).resize((89, 109), Image.Resampling.BILINEAR)
    full = smooth.resize((178, 218), Image.Resampling.BICUBIC)
    write_folder(tmp_path / "h", {"img_align_celeba/000001.png": encode(smooth, "PNG")})
    write_folder(tmp_path / "f", {"img_align_celeba/000001.png": encode(full, "PNG")})
    for name in ("h", "f"):
        pack(tmp_path / name, tmp_path / f"out_{name}", resolution=32, progress=False)
    a, b = (
        np.asarray(next(iter(wds.WebDataset(str(tmp_path / f"out_{n}/shard-000000.tar"), shardshuffle=False).decode("pil")))["png"], float)
        for n in ("h", "f")
    )
    assert np.abs(a - b).mean() < 2  # a half-pixel offset in the box already gives ~6


# ------------------------------------------------------------------ output folder safety
def test_refuses_different_settings_unless_overwrite(tmp_path):
    src = write_folder(tmp_path / "src", {f"{i}.png": encode(noise(i, 64, 64), "PNG") for i in range(5)})
    pack(src, tmp_path / "out", shard_size=2, progress=False)
    assert len(list((tmp_path / "out").glob("shard-*.tar"))) == 3
    with pytest.raises(UserError, match="different settings"):
        pack(src, tmp_path / "out", resolution=32, progress=False)
    m = pack(src, tmp_path / "out", resolution=32, shard_size=5, overwrite=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "shard-000000.tar"]
    assert m["resolution"] == 32 and m["num_samples"] == 5


def test_refuses_foreign_files_in_output(tmp_path):
    src = write_folder(tmp_path / "src", {"a.png": encode(noise(0, 64, 64), "PNG")})
    (tmp_path / "out").mkdir()
    (tmp_path / "out/precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        pack(src, tmp_path / "out", progress=False)
    assert (tmp_path / "out/precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "setup, kwargs, match",
    [
        (lambda p: None, {}, "does not exist"),
        (lambda p: p.mkdir(), {}, "no files"),
        (lambda p: p.write_bytes(b"plain file"), {}, "neither a folder nor a zip"),
        (lambda p: write_folder(p, {"x.txt": b"hello"}), {}, "no usable images"),
        (lambda p: write_folder(p, {"a.png": encode(noise(0, 64, 64), "PNG")}), {"crop": "diagonal"}, "unknown crop"),
        (lambda p: write_folder(p, {"a.png": encode(noise(0, 64, 64), "PNG")}), {"shard_size": 0}, "shard size"),
    ],
)
def test_user_errors(tmp_path, setup, kwargs, match):
    setup(tmp_path / "src")
    with pytest.raises(UserError, match=match):
        pack(tmp_path / "src", tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out/manifest.json").exists()


def test_cli_pack_and_friendly_errors(tmp_path):
    src = write_folder(tmp_path / "src", {f"{i}.png": encode(noise(i, 64, 64), "PNG") for i in range(3)})
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "pack", str(src), str(tmp_path / "out"), "--resolution", "32", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "out/manifest.json").read_text())["num_samples"] == 3
    bad = runner.invoke(app, ["data", "pack", str(tmp_path / "missing"), str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


# ------------------------------------------------------------------ real data
@pytest.mark.parametrize(
    "name, layout",
    [("celeba-10k.zip", "celeba"), ("anime-faces-20k.zip", "anime")],
)
def test_real_data_first_500(shared_dir, tmp_path, name, layout):
    m = pack(shared_dir / "data" / name, tmp_path / "out", limit=500, progress=False)
    c = m["counts"]
    assert m["layout"] == layout and m["resolution"] == 64
    assert c["seen"] == 500 and c["written"] + sum(c["skipped"].values()) == 500
    assert set(c["skipped"]) <= {"duplicate"}  # the anime set holds a few byte-identical copies
    assert c["written"] >= 480
    sample = next(iter(wds.WebDataset(str(tmp_path / "out/shard-000000.tar"), shardshuffle=False).decode("pil")))
    assert sample["png"].mode == "RGB" and sample["png"].size == (64, 64)


def test_npy_format_is_refused_with_a_pointer_to_blocks(tmp_path):
    """--format npy was removed (blocks load faster at about the same size): pack names the valid formats."""
    from dist_gan.data.synthetic import draw_faces

    faces = draw_faces(4, tmp_path / "faces.zip", size=32)
    with pytest.raises(UserError, match=r"--format npy was removed: use --format blocks.*valid formats: png, blocks"):
        pack(faces, tmp_path / "npy", resolution=32, progress=False, image_format="npy")
    assert not (tmp_path / "npy").exists()  # refused before anything is written
    res = CliRunner().invoke(app, ["data", "pack", str(faces), str(tmp_path / "npy"), "--format", "npy", "--no-progress"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "--format npy was removed" in text and "png, blocks" in text
    with pytest.raises(UserError, match="image format"):
        pack(faces, tmp_path / "bad", resolution=32, progress=False, image_format="jpg")


def test_blocks_format_holds_every_image_once_in_arrays(tmp_path):
    """--format blocks: N images per (N, H, W, 3) uint8 member, never across shards, pixels equal to the PNG pack."""
    from dist_gan.data.synthetic import draw_faces

    faces = draw_faces(23, tmp_path / "faces.zip", size=32)
    png = pack(faces, tmp_path / "png", resolution=32, shard_size=10, progress=False, workers=1)
    blk = pack(faces, tmp_path / "blk", resolution=32, shard_size=10, progress=False, workers=1,
               image_format="blocks", block_size=4)
    assert blk["image_format"] == "blocks" and blk["block_size"] == 4 and blk["counts"] == png["counts"]
    assert [s["count"] for s in blk["shards"]] == [10, 10, 3]
    pixels_png, pixels_blk, block_lens = {}, {}, []
    for s in png["shards"]:
        with tarfile.open(tmp_path / "png" / s["name"]) as tf:
            for m in tf:
                key, ext = split_member(m.name)
                if ext == IMAGE_EXT:
                    pixels_png[key] = decode_image(tf.extractfile(m).read())
    for s in blk["shards"]:
        with tarfile.open(tmp_path / "blk" / s["name"]) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf}
        in_shard = 0
        for name in sorted(n for n in members if split_member(n)[1] == BLOCK_EXT):
            arr = decode_block(members[name])
            meta = json.loads(members[member_name(split_member(name)[0], META_EXT)])
            assert arr.dtype == np.uint8 and arr.shape[1:] == (32, 32, 3) and len(meta) == len(arr)
            block_lens.append(len(arr))
            in_shard += len(arr)
            for a, md in zip(arr, meta):
                pixels_blk[md["key"]] = a
        assert in_shard == s["count"]  # a block never spans two shards
    assert block_lens == [4, 4, 2, 4, 4, 2, 3]
    assert pixels_png.keys() == pixels_blk.keys()
    assert all(np.array_equal(pixels_png[k], pixels_blk[k]) for k in pixels_png)
    # deterministic, like every pack
    again = pack(faces, tmp_path / "blk2", resolution=32, shard_size=10, progress=False, workers=1,
                 image_format="blocks", block_size=4)
    assert again["content_hash"] == blk["content_hash"]
    with pytest.raises(UserError, match="block size"):
        pack(faces, tmp_path / "bad", resolution=32, progress=False, image_format="blocks", block_size=0)


# ------------------------------------------------------------------ held-out images
def _srcs(folder: Path) -> set:
    out = set()
    for shard in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            out |= {json.loads(tar.extractfile(m).read())["src"] for m in tar.getmembers() if m.name.endswith(META_EXT)}
    return out


def test_holdout_sets_images_aside_that_training_never_reads(tmp_path):
    files = {f"img/{i:03d}.png": encode(noise(200 + i, 40, 40), "PNG") for i in range(30)}
    files["img/zz_copy.png"] = files["img/000.png"]  # one image twice: it must not land on both sides
    src = write_folder(tmp_path / "src", files)
    m = pack(src, tmp_path / "out", resolution=32, shard_size=8, progress=False, holdout=6)
    side = json.loads((tmp_path / "out/holdout/manifest.json").read_text())
    train, held = _srcs(tmp_path / "out"), _srcs(tmp_path / "out/holdout")
    assert len(held) == side["num_samples"] == m["holdout_set"]["num_samples"] == 6 and not train & held
    assert len(train) + len(held) == 30 and m["num_samples"] == len(train)  # the copy is skipped once, as a duplicate
    assert m["counts"]["skipped"] == {"duplicate": 1} and m["holdout"] == 6
    assert side["content_hash"] == m["holdout_set"]["content_hash"] and side["holdout_of"] == str((tmp_path / "out").resolve())
    again = pack(src, tmp_path / "b", resolution=32, shard_size=8, progress=False, holdout=6)
    assert _srcs(tmp_path / "b/holdout") == held and again["content_hash"] == m["content_hash"]  # the same split anywhere
    with pytest.raises(UserError, match="different settings.*holdout 6 -> 0"):
        pack(src, tmp_path / "out", resolution=32, shard_size=8, progress=False)
    pack(src, tmp_path / "out", resolution=32, shard_size=8, progress=False, overwrite=True)
    assert not (tmp_path / "out/holdout").exists() and len(_srcs(tmp_path / "out")) == 30  # no stale held-out folder


@pytest.mark.parametrize("holdout,match", [(-1, "holdout must be >= 0"), (30, "leaves no training images")])
def test_holdout_errors(tmp_path, holdout, match):
    src = write_folder(tmp_path / "src", {f"img/{i}.png": encode(noise(i, 40, 40), "PNG") for i in range(30)})
    with pytest.raises(UserError, match=match):
        pack(src, tmp_path / "out", resolution=32, progress=False, holdout=holdout)


def test_a_folder_named_holdout_that_is_not_ours_is_foreign_and_old_manifests_mean_no_holdout(tmp_path):
    src = write_folder(tmp_path / "src", {f"img/{i}.png": encode(noise(i, 40, 40), "PNG") for i in range(12)})
    pack(src, tmp_path / "out", resolution=32, progress=False)
    (tmp_path / "out/holdout").mkdir()
    (tmp_path / "out/holdout/mine.txt").write_text("a user's file")
    with pytest.raises(UserError, match="not empty \\(holdout\\)"):
        pack(src, tmp_path / "out", resolution=32, progress=False)
    assert (tmp_path / "out/holdout/mine.txt").is_file()
    (tmp_path / "out/holdout/mine.txt").unlink()
    (tmp_path / "out/holdout").rmdir()
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    del manifest["holdout"]  # as written before the setting existed
    (tmp_path / "out/manifest.json").write_text(json.dumps(manifest))
    assert pack(src, tmp_path / "out", resolution=32, progress=False)["num_samples"] == 12
