"""Procedural cartoon faces: deterministic, varied, and packable like any dataset."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dist_gan.cli import app
from dist_gan.data.pack import pack
from dist_gan.data.synthetic import draw_face, draw_faces
from dist_gan.errors import UserError


def folder_bytes(out):
    return {p.name: p.read_bytes() for p in sorted((out / "faces").iterdir())}


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = folder_bytes(draw_faces(6, tmp_path / "a", size=32, seed=3))
    b = folder_bytes(draw_faces(6, tmp_path / "b", size=32, seed=3))
    c = folder_bytes(draw_faces(6, tmp_path / "c", size=32, seed=4))
    assert list(a) == [f"{i:06d}.png" for i in range(6)]
    assert a == b
    assert all(a[k] != c[k] for k in a)


def test_parallel_drawing_writes_the_same_bytes_as_one_process(tmp_path):
    serial = draw_faces(70, tmp_path / "one.zip", size=16, seed=2, workers=1).read_bytes()
    assert draw_faces(70, tmp_path / "two.zip", size=16, seed=2, workers=2).read_bytes() == serial
    assert folder_bytes(draw_faces(70, tmp_path / "f", size=16, seed=2, workers=2)) == \
        folder_bytes(draw_faces(70, tmp_path / "g", size=16, seed=2, workers=1))


def test_faces_are_rgb_squares_and_varied(tmp_path):
    out = draw_faces(8, tmp_path / "f", size=48, seed=0)
    arrays = []
    for p in sorted((out / "faces").iterdir()):
        with Image.open(p) as im:
            assert im.mode == "RGB" and im.size == (48, 48)
            arrays.append(np.asarray(im, dtype=float))
    stack = np.stack(arrays)
    assert len({a.tobytes() for a in arrays}) == 8
    assert stack.std(axis=0).mean() > 20  # faces differ in colour, layout and pose, not just noise
    assert all(a.std() > 15 for a in arrays)  # each one has structure, not a flat fill


def test_face_has_dark_eyes_above_a_lighter_cheek_band():
    """Crude structure check: the eye row holds darker pixels than the face's centre (pupils, lids, brows)."""
    darker = 0
    for i in range(10):
        a = np.asarray(draw_face(np.random.default_rng([0, i]), 64).convert("L"), dtype=float)
        eye_band, cheek_band = a[22:34, 16:48], a[34:40, 22:42]
        darker += eye_band.min() < cheek_band.mean() - 60
    assert darker >= 9


def test_face_i_does_not_depend_on_n(tmp_path):
    few = folder_bytes(draw_faces(2, tmp_path / "few", size=32, seed=1))
    many = folder_bytes(draw_faces(4, tmp_path / "many", size=32, seed=1))
    assert few == {k: many[k] for k in few}


def test_redraw_removes_stale_faces(tmp_path):
    draw_faces(5, tmp_path / "f", size=32)
    draw_faces(3, tmp_path / "f", size=32)
    assert sorted(p.name for p in (tmp_path / "f/faces").iterdir()) == [f"{i:06d}.png" for i in range(3)]


def test_zip_output_is_deterministic_and_packable(tmp_path):
    z1 = draw_faces(12, tmp_path / "faces.zip", size=32, seed=5)
    first = z1.read_bytes()
    assert draw_faces(12, tmp_path / "faces.zip", size=32, seed=5).read_bytes() == first
    assert zipfile.ZipFile(z1).namelist() == [f"faces/{i:06d}.png" for i in range(12)]
    m = pack(z1, tmp_path / "shards", resolution=32, progress=False)
    assert m["counts"] == {"seen": 12, "written": 12, "skipped": {}, "ignored": 0}
    assert m["layout"] == "folder"


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 2, "size": 8}])
def test_bad_options_are_user_errors(tmp_path, kwargs):
    with pytest.raises(UserError):
        draw_faces(out=tmp_path / "x", **kwargs)


def test_cli_synth(tmp_path):
    res = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "s.zip"), "--n", "3", "--size", "32", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert len(zipfile.ZipFile(tmp_path / "s.zip").namelist()) == 3
    bad = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "t"), "--n", "0"])
    assert bad.exit_code == 2
