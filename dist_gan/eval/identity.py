"""Identity-level memorisation: is a generated face a real person from the training set?

The Inception leak check (``leak.py``) finds near-duplicate *images*; a generator that
reproduces a training identity in a new pose passes it. Here each face is found with
dlib's CNN detector, aligned by its 5-point landmarks and embedded with dlib's ResNet
(128-d; two photos of one person lie within 0.6 of each other, dlib's own threshold,
99.38% on LFW). For every generated face the nearest training identity is found.

Chance sets the yardstick: each training face, held out in turn, is matched against
all the *other* training faces (leave-one-out). Its rate under a threshold is how often
a real face the set does not contain "looks like someone in the set" by chance. Under
dlib's 0.6 that rate is far from zero on small crops: at 64 px 99.7% of real CelebA faces
lie within 0.6 of another (benchmarks/results/evaluator), so 0.6 flags everyone. The
threshold is therefore calibrated on the data, as ``leak.py`` calibrates its own: the
smaller of 0.6 and the leave-one-out distances' 1st percentile, under which about 1% of
real faces fall by chance. CelebA repeats its celebrities across image ids, so a
held-out photo often finds its own person: that 1% is a floor, not noise. Leave-one-out needs no images
beyond the training set and makes no assumption about which images were trained on.
The generated rate is tested against that baseline with a one-sided binomial test.

Faces with no detection are counted on every side and left out of the distances,
never dropped silently. Embeddings of a reference set are cached by content, like the
Inception statistics.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from dist_gan.eval.detect import MmodDetector, check_images
from dist_gan.eval.leak import binomial_sf, nearest_neighbours, save_pairs_png
from dist_gan.eval.weights import FILES, locate
from dist_gan.files import atomic_write

SAME_PERSON = 0.6
"""dlib's distance under which two face descriptors are taken to be one person (full-size faces)."""
CALIBRATION_PERCENTILE = 1.0
"""The leave-one-out percentile that caps the threshold: about this % of real faces fall under it by chance."""
P_VALUE_LEVEL = 1e-3
"""One-sided binomial p-value under which an excess of same-person matches is flagged."""
BATCH = 32
EMBED_DIM = 128
CACHE_VERSION = 1
"""Part of the embedding cache key: bump it when the detection, working image or alignment changes."""


class FaceEmbedder:
    """dlib: CNN detector -> 5-point landmarks -> 128-d ResNet descriptor, batched; NaN rows where no face is found."""

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._detector = MmodDetector()
        self._landmarks = dlib.shape_predictor(str(locate("dlib_landmarks5")))
        self._embed = dlib.face_recognition_model_v1(str(locate("dlib_identity")))

    @staticmethod
    def describe() -> Dict[str, Any]:
        return {"detector": "dlib mmod_human_face_detector (CNN) on the detectors' working image (edge border, 192 px)",
                "alignment": "shape_predictor_5_face_landmarks", "embedding": "dlib_face_recognition_resnet_model_v1 (128-d)",
                "weights_sha256": {n: FILES[n].sha256 for n in ("dlib_mmod", "dlib_landmarks5", "dlib_identity")}}

    def embed(self, images: np.ndarray, progress: Any = None, desc: str = "identity embeddings") -> np.ndarray:
        images = check_images(images)
        out = np.full((len(images), EMBED_DIM), np.nan, dtype=np.float32)
        task = progress.add_task(desc, total=len(images)) if progress is not None else None
        for s in range(0, len(images), BATCH):
            work, rects = self._detector.faces(images[s : s + BATCH])
            found, shapes, rows = [], [], []
            for i, rect in enumerate(rects):
                if rect is not None:
                    faces = self._dlib.full_object_detections()
                    faces.append(self._landmarks(work[i], rect))
                    found.append(work[i])
                    shapes.append(faces)
                    rows.append(s + i)
            if rows:
                vecs = self._embed.compute_face_descriptor(found, shapes)
                out[rows] = np.array([np.asarray(v[0]) for v in vecs], dtype=np.float32)
            if task is not None:
                progress.advance(task, len(work))
        return out


def cached_embeddings(embedder: FaceEmbedder, images: np.ndarray, cache: Optional[Path], progress: Any = None,
                      desc: str = "identity embeddings") -> tuple[np.ndarray, bool]:
    """Embeddings of reference images, read from ``cache`` when present for the same count."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if z["emb"].shape == (len(images), EMBED_DIM):
                return z["emb"], True
    emb = embedder.embed(images, progress, desc)
    if cache is not None:
        atomic_write(cache, lambda fh: np.savez(fh, emb=emb))
    return emb, False


def cache_key(data_key: str, resolution: int, n: int) -> str:
    """The first ``n`` reference images of one data set at one resolution, embedded by these weights."""
    spec = {"v": CACHE_VERSION, "data": data_key, "resolution": resolution, "n": n,
            "weights": [FILES[n].sha256 for n in ("dlib_mmod", "dlib_landmarks5", "dlib_identity")]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def _nearest(query: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to, and index of, the nearest training face for each query face (rows with faces only)."""
    if not len(query):
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return nearest_neighbours(query, train)


def calibrated_threshold(heldout_dist: np.ndarray) -> float:
    """min(dlib's 0.6, the leave-one-out distances' 1st percentile): 0.6 where faces are large enough for it,
    else the distance under which ~1% of real faces find someone by chance (0.6 without distances)."""
    if not len(heldout_dist):
        return SAME_PERSON
    return float(min(SAME_PERSON, np.percentile(heldout_dist, CALIBRATION_PERCENTILE)))


def _summary(dist: np.ndarray) -> Dict[str, Optional[float]]:
    if not len(dist):
        return {"min": None, "p1": None, "p5": None, "p50": None, "mean": None}
    p1, p5, p50 = (float(v) for v in np.percentile(dist, [1, 5, 50]))
    return {"min": float(dist.min()), "p1": p1, "p5": p5, "p50": p50, "mean": float(dist.mean())}


def identity_report(gen_emb: np.ndarray, train_emb: np.ndarray,
                    gen_images: Optional[np.ndarray] = None, train_images: Optional[np.ndarray] = None,
                    out_png: Optional[Path] = None, k_pairs: int = 8, threshold: Optional[float] = None) -> Dict[str, Any]:
    """Nearest training identity of each generated face, against the leave-one-out rate of the training faces.

    ``threshold=None`` calibrates it: ``calibrated_threshold`` of the leave-one-out distances.
    """
    has = {k: ~np.isnan(e).any(axis=1) for k, e in (("gen", gen_emb), ("train", train_emb))}
    train_rows = np.flatnonzero(has["train"])
    train = train_emb[train_rows]
    gen_rows = np.flatnonzero(has["gen"]) if len(train_rows) >= 2 else np.zeros(0, np.int64)
    gd, gi = _nearest(gen_emb[gen_rows], train)
    hd = nearest_neighbours(train, train, exclude_self=True)[0] if len(train_rows) >= 2 else np.zeros(0)
    n_gen, n_hold = len(gd), len(hd)
    calibrated = threshold is None
    if calibrated:
        threshold = calibrated_threshold(hd)
    gen_same, hold_same = int((gd < threshold).sum()), int((hd < threshold).sum())
    base = hold_same / n_hold if n_hold else None
    if base is None:
        p_value, verdict = None, "no verdict: faces were found in fewer than 2 training images"
    elif not n_gen:
        p_value, verdict = None, "no verdict: no face was found in any generated image"
    else:
        # A baseline of 0 (or 1) makes any (or no) excess certain; keep the test defined with a 0.5-count floor.
        p_value = binomial_sf(gen_same, n_gen, min(max(base, 0.5 / n_hold), 1 - 0.5 / n_hold))
        verdict = "possible identity memorisation" if p_value < P_VALUE_LEVEL else "no identity memorisation signal"
    order = np.argsort(gd, kind="stable")[: max(0, min(k_pairs, n_gen))]
    pairs = [{"gen_index": int(gen_rows[j]), "ref_index": int(train_rows[gi[j]]), "distance": float(gd[j])} for j in order]
    report: Dict[str, Any] = {
        "threshold": threshold, "threshold_calibrated": calibrated,
        "dlib_threshold": SAME_PERSON,
        "gen_under_dlib_threshold": int((gd < SAME_PERSON).sum()),
        "heldout_under_dlib_threshold": int((hd < SAME_PERSON).sum()),
        "n_generated": int(len(gen_emb)), "n_training": int(len(train_emb)),
        "gen_no_face": int((~has["gen"]).sum()), "train_no_face": int((~has["train"]).sum()),
        "gen_to_train": _summary(gd), "heldout_to_train": _summary(hd),
        "gen_same_person": gen_same, "gen_same_person_rate": gen_same / n_gen if n_gen else None,
        "heldout_same_person": hold_same, "heldout_same_person_rate": base,
        "p_value": p_value, "verdict": verdict,
        "gen_same_person_index": [int(gen_rows[j]) for j in np.flatnonzero(gd < threshold)],
        "closest_pairs": pairs, "png": None,
        "rule": (f"same person: descriptor distance < {threshold:.3f} "
                 + (f"(the smaller of dlib's {SAME_PERSON} and percentile {CALIBRATION_PERCENTILE:g} of the training faces' "
                    "leave-one-out distances); " if calibrated else "(given); ")
                 + "baseline: each training face held out in turn "
                 f"against the other training faces (leave-one-out); 'possible identity memorisation' if the generated rate exceeds it with one-sided "
                 f"binomial p < {P_VALUE_LEVEL:g}; faces with no detection are counted and left out"),
    }
    if out_png is not None and pairs and gen_images is not None and train_images is not None:
        save_pairs_png(pairs, np.asarray(gen_images), np.asarray(train_images), Path(out_png))
        report["png"] = str(out_png)
    return report
