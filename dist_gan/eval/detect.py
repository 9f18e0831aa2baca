"""Face detectors that count how many generated images contain a face.

A face-detection rate is a cheap, model-independent sanity check for a face GAN:
real crops score high, noise scores ~0, and a collapsing generator drops fast.

All detectors take uint8 NHWC RGB batches (square images, any size) and return one
bool per image. The working image follows one rule, measured on the shared data
(see ../shared/README.md): tight face crops give the detectors no context, so
each image of side s gets an edge-replicated border of round(s/4) px on every side
(1.5 s in all) and is then resized to 192 px. For 64-px images that is
"64 px + 16 px edge border, x2 -> 192 px", the setting the measurements used.

Detectors (``build_detector(name)``):
- ``haar``: OpenCV's haarcascade_frontalface_default.xml (ships with
  opencv-python-headless 4.x); the human-face default only where no CNN detector's weights are in place.
- ``anime``: lbpcascade_animeface.xml (nagadomi/lbpcascade_animeface, MIT), a file
  the user provides; for anime faces.
- ``hog``: dlib's HOG + linear SVM frontal-face detector.
- ``mmod``: dlib's CNN face detector (weights: ``dist-gan weights install``).
- ``mtcnn``: MTCNN (``dist_gan.eval.mtcnn``, facenet-pytorch's weights, fetched by
  ``dist-gan weights install``); a face counts at probability >= 0.9.
  It sees the input as is (no border, no resize): it has its own image pyramid.
Both cascades use scaleFactor 1.1, minNeighbors 5, minSize 24x24 on
histogram-equalised grayscale.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from dist_gan.errors import UserError
from dist_gan.eval.weights import locate as locate_weights

WORK_SIZE = 192
"""Side of the working image: the bordered input is resized to this."""

CASCADE_SCALE_FACTOR = 1.1
CASCADE_MIN_NEIGHBORS = 5
CASCADE_MIN_SIZE = 24

MTCNN_MIN_PROB = 0.9
"""MTCNN face probability at or above which an image counts as showing a face."""

ANIME_CASCADE_ENV = "DIST_GAN_ANIME_CASCADE"
ANIME_CASCADE_NAME = "lbpcascade_animeface.xml"


def default_cascade_locations() -> list[Path]:
    """Where the anime cascade is looked for when no path is given; none depends on the working directory.

    The user's cache (``$DIST_GAN_CACHE/detectors``, default ``~/.cache/dist_gan/detectors``), then
    ``shared/detectors`` beside a source checkout of dist_gan (the repository's data folder).
    """
    cache = Path(os.environ.get("DIST_GAN_CACHE", Path.home() / ".cache" / "dist_gan"))
    checkout = Path(__file__).resolve().parents[3]  # <checkout>/dist_gan/eval/detect.py -> beside <checkout>
    return [cache / "detectors" / ANIME_CASCADE_NAME, checkout / "shared" / "detectors" / ANIME_CASCADE_NAME]


def border_px(size: int) -> int:
    """Edge border added on each side of an image of side ``size``: a quarter of it."""
    return int(round(size / 4))


def working_size_text(size: int) -> str:
    """Human-readable preprocessing for one input size, for reports."""
    pad = border_px(size)
    factor = WORK_SIZE / (size + 2 * pad)
    return f"{size} px + {pad} px edge border, x{factor:.3g} -> {WORK_SIZE} px"


def check_images(images: np.ndarray) -> np.ndarray:
    """Validate a uint8 NHWC RGB batch (a single HWC image is accepted too)."""
    images = np.asarray(images)
    if images.ndim == 3 and images.shape[-1] == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 NHWC RGB images, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"expected square images, got {images.shape[1]}x{images.shape[2]}")
    return images


def to_working(image: np.ndarray) -> np.ndarray:
    """One HWC image -> edge-bordered and resized to WORK_SIZE (same channels)."""
    pad = border_px(image.shape[0])
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    interp = cv2.INTER_LINEAR if padded.shape[0] <= WORK_SIZE else cv2.INTER_AREA
    return cv2.resize(padded, (WORK_SIZE, WORK_SIZE), interpolation=interp)


class Detector:
    """Base: ``detect`` a batch -> bool per image; ``describe`` the protocol."""

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._last_size: int | None = None

    def detect(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        self._last_size = int(images.shape[1])
        return np.array([self._detect_one(to_working(im)) for im in images], dtype=bool)

    def _detect_one(self, work: np.ndarray) -> bool:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {}

    def describe(self, image_size: int | None = None) -> dict[str, Any]:
        """Name, preprocessing and settings; the size is the last batch's (64 before any)."""
        size = image_size or self._last_size or 64
        return {
            "name": self.name,
            "working_size": working_size_text(size),
            "preprocess_rule": (
                f"edge-replicated border of round(s/4) px per side, then resize to {WORK_SIZE} px"
            ),
            "settings": self.settings(),
        }


class CascadeDetector(Detector):
    """OpenCV cascade on equalised grayscale; a face = at least one detection."""

    def __init__(self, cascade_path: str | Path) -> None:
        super().__init__()
        self.cascade_path = str(cascade_path)
        try:
            self.cascade = cv2.CascadeClassifier(self.cascade_path)
        except (cv2.error, SystemError) as exc:  # malformed XML raises, not just empty()
            msg = f"could not load the OpenCV cascade file {self.cascade_path}: {exc}"
            raise UserError(msg) from exc
        if self.cascade.empty():
            raise UserError(f"could not load the OpenCV cascade file {self.cascade_path}")

    def _detect_one(self, work: np.ndarray) -> bool:
        gray = cv2.equalizeHist(cv2.cvtColor(work, cv2.COLOR_RGB2GRAY))
        found = self.cascade.detectMultiScale(
            gray,
            scaleFactor=CASCADE_SCALE_FACTOR,
            minNeighbors=CASCADE_MIN_NEIGHBORS,
            minSize=(CASCADE_MIN_SIZE, CASCADE_MIN_SIZE),
        )
        return len(found) > 0

    def settings(self) -> dict[str, Any]:
        return {
            "cascade": Path(self.cascade_path).name,
            "input": "grayscale, cv2.equalizeHist",
            "scaleFactor": CASCADE_SCALE_FACTOR,
            "minNeighbors": CASCADE_MIN_NEIGHBORS,
            "minSize": [CASCADE_MIN_SIZE, CASCADE_MIN_SIZE],
        }


class HaarDetector(CascadeDetector):
    """Human frontal faces: the Haar cascade bundled with opencv-python(-headless) 4.x."""

    name = "haar"
    CASCADE = "haarcascade_frontalface_default.xml"

    def __init__(self, cascade_path: str | None = None) -> None:
        if cascade_path is None:
            data = getattr(cv2, "data", None)
            if data is None:
                raise UserError(
                    "this OpenCV build ships no Haar cascades (cv2.data is missing); "
                    "install opencv-python-headless 4.x or pass --cascade PATH to "
                    f"{self.CASCADE}"
                )
            cascade_path = str(Path(data.haarcascades) / self.CASCADE)
        if not Path(cascade_path).is_file():
            raise UserError(f"Haar cascade not found: {cascade_path}; pass --cascade PATH")
        super().__init__(cascade_path)


def anime_cascade_path(cascade_path: str | None = None) -> Path:
    """Argument, else $DIST_GAN_ANIME_CASCADE, else the first of ``default_cascade_locations`` that exists."""
    if cascade_path is not None:
        tried = [Path(cascade_path)]
    elif os.environ.get(ANIME_CASCADE_ENV):
        tried = [Path(os.environ[ANIME_CASCADE_ENV])]
    else:
        tried = default_cascade_locations()
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise UserError(
            f"anime face cascade not found (looked in {', '.join(map(str, tried))}). Download {ANIME_CASCADE_NAME} "
            "from https://github.com/nagadomi/lbpcascade_animeface (MIT licence) and pass "
            f"--cascade PATH, set {ANIME_CASCADE_ENV}, or put it in the first folder above"
        )
    return found


class AnimeDetector(CascadeDetector):
    """Anime faces: nagadomi's LBP cascade, a file the user supplies."""

    name = "anime"

    def __init__(self, cascade_path: str | None = None) -> None:
        super().__init__(anime_cascade_path(cascade_path))


def _no_cascade(name: str, cascade_path: str | None) -> None:
    if cascade_path is not None:
        raise UserError(f"--cascade applies only to the haar and anime detectors, not {name}")


class HogDetector(Detector):
    """dlib's HOG frontal-face detector (80-px window: the 192-px working image fits it)."""

    name = "hog"

    def __init__(self, cascade_path: str | None = None) -> None:
        super().__init__()
        _no_cascade(self.name, cascade_path)
        import dlib

        self._detector = dlib.get_frontal_face_detector()

    def _detect_one(self, work: np.ndarray) -> bool:
        return len(self._detector(np.ascontiguousarray(work), 0)) > 0

    def settings(self) -> dict[str, Any]:
        return {"detector": "dlib.get_frontal_face_detector", "upsample_num_times": 0}


class MtcnnDetector(Detector):
    """MTCNN (``dist_gan.eval.mtcnn``) on CPU; counts a face at probability >= MTCNN_MIN_PROB.

    MTCNN is a CNN cascade with its own image pyramid (smallest face 20 px), so it
    gets the input image as is: at 64 px it already finds 989 of 1000 CelebA crops, and
    the 192-px working image would cost ~9x the compute for nothing.
    """

    name = "mtcnn"
    BATCH = 64

    def __init__(self, cascade_path: str | None = None) -> None:
        super().__init__()
        _no_cascade(self.name, cascade_path)
        from dist_gan.eval.mtcnn import MTCNN

        self._mtcnn = MTCNN({n: locate_weights(f"mtcnn_{n}") for n in ("pnet", "rnet", "onet")})

    def detect(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        self._last_size = int(images.shape[1])
        best = [self._mtcnn.face_probability(images[s : s + self.BATCH]) for s in range(0, len(images), self.BATCH)]
        return np.concatenate(best) >= MTCNN_MIN_PROB if best else np.zeros(0, bool)

    def describe(self, image_size: int | None = None) -> dict[str, Any]:
        size = image_size or self._last_size or 64
        return {
            "name": self.name,
            "working_size": f"{size} px as is (MTCNN's own pyramid)",
            "preprocess_rule": "none: MTCNN rescales internally",
            "settings": self.settings(),
        }

    def settings(self) -> dict[str, Any]:
        from dist_gan.eval import mtcnn

        return {"detector": "dist_gan.eval.mtcnn.MTCNN (facenet-pytorch 2.6.0 weights)", "min_face_size": mtcnn.MIN_FACE,
                "stage_thresholds": list(mtcnn.THRESHOLDS), "min_probability": MTCNN_MIN_PROB}


class MmodDetector(Detector):
    """dlib's CNN face detector (max-margin object detection, ``mmod_human_face_detector.dat``).

    Its window is about 80 px, so the 192-px working image (a 64-px face becomes ~128 px)
    suits it without dlib's own upsampling.
    """

    name = "mmod"

    def __init__(self, cascade_path: str | None = None) -> None:
        super().__init__()
        _no_cascade(self.name, cascade_path)
        import dlib

        self._detector = dlib.cnn_face_detection_model_v1(str(locate_weights("dlib_mmod")))

    BATCH = 32  # dlib runs a list of equal-size images as one batch

    def faces(self, images: np.ndarray) -> tuple[list[np.ndarray], list[Any]]:
        """The working images, and each one's most confident face rectangle (None where none is found)."""
        work = [np.ascontiguousarray(to_working(im)) for im in check_images(images)]
        best: list[Any] = []
        for s in range(0, len(work), self.BATCH):
            for dets in self._detector(work[s : s + self.BATCH], 0, batch_size=self.BATCH):
                best.append(max(dets, key=lambda d: d.confidence).rect if len(dets) else None)
        return work, best

    def detect(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        self._last_size = int(images.shape[1])
        return np.array([r is not None for r in self.faces(images)[1]], dtype=bool)

    def settings(self) -> dict[str, Any]:
        return {"detector": "dlib.cnn_face_detection_model_v1(mmod_human_face_detector.dat)", "upsample_num_times": 0,
                "score_threshold": 0.0}


DETECTORS: dict[str, type[Detector]] = {
    "haar": HaarDetector,
    "anime": AnimeDetector,
    "hog": HogDetector,
    "mtcnn": MtcnnDetector,
    "mmod": MmodDetector,
}


HUMAN_DEFAULT_ORDER = ("mtcnn", "mmod", "haar")
"""The default human-face detector is the first of these that is installed. Missed of 1000 real CelebA faces
at 64 px (benchmarks/results/evaluator): MMOD 5, MTCNN 11, Haar 79. MTCNN leads because it is 16x faster
than MMOD (20 against 329 s per 1000 images on 2 cores) for 0.6 points of floor: both resolve a generator
within 1 point of the reals, and MMOD would make a 10k-sample evaluation spend an hour detecting."""
NEEDS_WEIGHTS = {"mtcnn": ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"), "mmod": ("dlib_mmod",), "haar": ()}


def default_human_detector() -> str:
    """The first of HUMAN_DEFAULT_ORDER whose weight files are in place (Haar ships with OpenCV)."""
    from dist_gan.eval.weights import find

    return next(n for n in HUMAN_DEFAULT_ORDER if all(find(w) is not None for w in NEEDS_WEIGHTS[n]))


def build_detector(name: str, cascade_path: str | None = None) -> Detector:
    """Instantiate a detector by name; optional ones fail with an install hint."""
    if name not in DETECTORS:
        raise UserError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name](cascade_path)
