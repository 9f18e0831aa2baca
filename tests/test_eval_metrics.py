"""The metric registry: lookup, registration, what each metric needs, figures from a context."""

from __future__ import annotations

import numpy as np
from PIL import Image
import pytest

from dist_gan.errors import UserError
from dist_gan.eval import metrics as M
from dist_gan.eval.fid import feature_stats, frechet_distance


def test_registry_has_the_five_metrics():
    assert set(M.list_valid_metrics()) >= {"fid", "kid", "is", "detect", "leak"}
    assert M.needs_of(["detect"]) == {"ref_images"}
    assert M.needs_of(["fid", "is"]) == {"features", "logits"}
    with pytest.raises(UserError, match="unknown metric"):
        M.calc_metric("nope", M.EvalContext(gen_images=np.zeros((1, 8, 8, 3), np.uint8)))


def test_adding_a_metric_is_registering_a_function(monkeypatch):
    monkeypatch.setattr(M, "METRICS", dict(M.METRICS))

    @M.register_metric("mean_pixel")
    def mean_pixel(ctx):
        """Mean pixel value of the generated images."""
        return {"mean_pixel": float(ctx.gen_images.mean())}

    ctx = M.EvalContext(gen_images=np.full((4, 8, 8, 3), 10, np.uint8))
    out = M.calc_metric("mean_pixel", ctx)
    assert out["mean_pixel"] == 10.0 and "seconds" in out
    assert M.METRICS["mean_pixel"].doc.startswith("Mean pixel")


def _ctx(rng, shift=0.0, n=120, d=16):
    ref = rng.normal(size=(n, d))
    gen = rng.normal(shift, 1.0, size=(n, d))
    return M.EvalContext(gen_images=np.zeros((n, 8, 8, 3), np.uint8), gen_feats=gen, ref_feats=ref,
                         options={"kid_subsets": 10, "kid_subset_size": 50, "seed": 0})


def test_fid_and_kid_metrics_from_context():
    rng = np.random.default_rng(0)
    ctx = _ctx(rng, shift=1.0)
    fid = M.calc_metric("fid", ctx)
    assert fid["fid"] == pytest.approx(frechet_distance(*feature_stats(ctx.gen_feats), *feature_stats(ctx.ref_feats)))
    kid = M.calc_metric("kid", ctx)
    assert kid["kid_mean"] > 0 and kid["kid_subset_size"] == 50


def test_is_metric_refuses_without_logits():
    ctx = _ctx(np.random.default_rng(1))
    with pytest.raises(UserError, match="fc"):
        M.calc_metric("is", ctx)


class _EveryOther:
    """A stand-in detector: a face in every other image."""

    def detect(self, images):
        return np.arange(len(images)) % 2 == 0

    def describe(self, image_size=None):
        return {"name": "every-other", "working_size": image_size}


def test_detect_metric_counts_generated_and_real():
    ctx = M.EvalContext(gen_images=np.zeros((10, 8, 8, 3), np.uint8), ref_images=np.zeros((30, 8, 8, 3), np.uint8),
                        options={"detector_obj": _EveryOther()})
    out = M.calc_metric("detect", ctx)
    assert out["gen_n"] == 10 and out["gen_no_face"] == 5 and out["gen_no_face_rate"] == 0.5
    assert out["ref_n"] == 10 and out["ref_no_face"] == 5  # as many real images as generated ones
    assert out["detector"]["name"] == "every-other"
    assert out["gen_no_face_index"] == [1, 3, 5, 7, 9] and out["png"] is None  # no out_dir, no picture


def test_detect_metric_draws_the_missed_samples(tmp_path):
    gen = np.stack([np.full((8, 8, 3), i * 20, np.uint8) for i in range(10)])  # image i is grey level 20*i
    ctx = M.EvalContext(gen_images=gen, ref_images=gen, out_dir=tmp_path, options={"detector_obj": _EveryOther()})
    out = M.calc_metric("detect", ctx)
    grid = np.asarray(Image.open(out["png"]))
    assert out["png"].endswith("no_face.png")
    assert grid.shape == (2 * (2 + 8 + 2), 2 * (2 + 5 * 10), 3)  # one row of the 5 misses, 2 px pads, shown 2x
    tiles = [grid[4 + 4 : 4 + 12, 4 + c * 20 + 4 : 4 + c * 20 + 12, 0] for c in range(5)]
    assert [int(t.mean()) for t in tiles] == [20, 60, 100, 140, 180]  # images 1, 3, 5, 7, 9 in order

    class _All(_EveryOther):
        def detect(self, images):
            return np.ones(len(images), bool)

    again = M.calc_metric("detect", M.EvalContext(gen_images=gen, ref_images=gen, out_dir=tmp_path, options={"detector_obj": _All()}))
    assert again["gen_no_face"] == 0 and again["png"] is None and not (tmp_path / "no_face.png").exists()


def test_leak_metric_writes_pairs(tmp_path):
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(40, 16))
    gen = np.concatenate([ref[:3], rng.normal(size=(17, 16))])  # three exact copies
    images = rng.integers(0, 255, size=(40, 16, 16, 3), dtype=np.uint8)
    ctx = M.EvalContext(gen_images=images[:20], gen_feats=gen, ref_feats=ref, ref_images=images, out_dir=tmp_path)
    out = M.calc_metric("leak", ctx)
    assert out["copies"] >= 3 and (tmp_path / "pairs.png").is_file()
