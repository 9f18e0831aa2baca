"""StyleGAN2 generator and discriminator (config F) in plain torch, at 32, 64 and 128 px.

Karras, Laine, Aittala, Hellsten, Lehtinen, Aila 2020, "Analyzing and Improving the Image
Quality of StyleGAN" (CVPR, arXiv:1912.04958). The design follows the official PyTorch
implementation, NVlabs/stylegan2-ada-pytorch ``training/networks.py`` (Karras et al. 2020,
"Training Generative Adversarial Networks with Limited Data"), rewritten for this codebase:
no custom CUDA ops, no fp16 clamping, no conditioning.

G: z -> MappingNetwork -> w, broadcast to ``num_ws`` copies (style mixing during training)
-> SynthesisNetwork: a learned 4x4 constant, then one block per resolution doubling, each
two modulated/demodulated 3x3 convs with per-pixel noise and a ToRGB, in the *skip*
architecture (the RGB outputs of all blocks are upsampled and summed). No tanh.
D: *residual* architecture: FromRGB, then per resolution conv3x3, conv3x3-down plus a 1x1
down skip, summed and scaled by 1/sqrt(2); epilogue at 4x4 with minibatch stddev, conv,
fc, fc -> one logit per image, returned as (N,) like ``dist_gan.models.dcgan.Discriminator``.

Resampling uses the [1,3,3,1] FIR filter as in the paper. Up: transposed 3x3 conv with
stride 2, then the FIR blur (gain 4), which equals bilinear upsampling followed by a 3x3
conv, at a quarter of the cost. Down: FIR blur then a stride-2 conv. The RGB skip path is
upsampled with ``F.interpolate(mode="bilinear")``, which *is* the [1,3,3,1] filter except at
the border (edge replicated instead of zero padded).

Widths: ``min(channel_base // r, channel_max)`` channels at resolution r, so a CPU-sized
model (channel_base=4096, channel_max=128) and the paper's (32768, 512) are the same code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dist_gan.models.minibatch_std import MinibatchStd

__all__ = [
    "SUPPORTED_RESOLUTIONS",
    "NOISE_MODES",
    "EqualLinear",
    "EqualConv2d",
    "MappingNetwork",
    "ModulatedConv2d",
    "SynthesisLayer",
    "ToRGB",
    "SynthesisBlock",
    "SynthesisNetwork",
    "DiscriminatorBlock",
    "DiscriminatorEpilogue",
    "StyleGAN2Generator",
    "StyleGAN2Discriminator",
    "num_ws_for",
]

SUPPORTED_RESOLUTIONS = (32, 64, 128)
NOISE_MODES = ("random", "const", "none")
_LRELU_GAIN = math.sqrt(2.0)  # keeps the activations' 2nd moment through leaky ReLU(0.2)


def _check_resolution(resolution: int) -> int:
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")
    return int(math.log2(resolution))


def num_ws_for(resolution: int) -> int:
    """How many w vectors the synthesis network consumes: 2 * log2(resolution) - 2.

    Counted as the official code does: one per modulated conv (1 at 4x4, 2 per later
    block) plus one for the last ToRGB; every other ToRGB shares its w with the next
    block's first conv. 32 px: 8, 64 px: 10, 128 px: 12 (1024 px: 18).
    """
    return 2 * _check_resolution(resolution) - 2


def _widths(channel_base: int, channel_max: int, resolution: int) -> dict[int, int]:
    log2 = _check_resolution(resolution)
    return {2**i: min(channel_base // 2**i, channel_max) for i in range(2, log2 + 1)}


def _lrelu(x: torch.Tensor, gain: float = _LRELU_GAIN) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * gain


def _fir_kernel(device: torch.device, dtype: torch.dtype, channels: int, gain: float = 1.0) -> torch.Tensor:
    """The [1,3,3,1] outer product, normalised to sum ``gain``, as a depthwise conv weight."""
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], device=device, dtype=dtype)
    k = torch.outer(f, f)
    k = k * (gain / k.sum())
    return k.expand(channels, 1, 4, 4)


def _blur(x: torch.Tensor, pad: int, gain: float = 1.0, stride: int = 1) -> torch.Tensor:
    """Depthwise [1,3,3,1] FIR filter with zero padding ``pad`` on every side (the conv's own padding:
    no padded copy of the activations)."""
    c = x.shape[1]
    return F.conv2d(x, _fir_kernel(x.device, x.dtype, c, gain), stride=stride, padding=pad, groups=c)


def _upsample2x(x: torch.Tensor) -> torch.Tensor:
    """2x upsampling with the [1,3,3,1] filter (bilinear, edge replicated)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# --------------------------------------------------------------------------- equalised learning rate


class EqualLinear(nn.Module):
    """Linear layer with an equalised learning rate (Karras et al. 2018, ProGAN).

    Why: the weight is stored as N(0, 1/lr_mul) and multiplied at run time by
    ``lr_mul / sqrt(fan_in)`` (bias by ``lr_mul``), so the effective weight has He std
    1/sqrt(fan_in) while Adam, whose steps are invariant to a parameter's scale, moves
    every stored parameter by about the same amount: every layer then learns at the same
    relative speed, and ``lr_mul`` slows one layer down (0.01 for the mapping network).
    Hence the recipe's ``optim.g_lr`` / ``optim.d_lr`` apply to these unit-scale stored
    parameters; StyleGAN2 uses 0.0025 with Adam betas (0, 0.99). With lr_mul=1 the stored
    weight is N(0, 1); with lr_mul != 1 it is N(0, 1/lr_mul), as the official code does,
    so the effective init does not depend on lr_mul.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: str = "linear") -> None:
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul)) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul
        self.activation = activation

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.weight_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias * self.bias_gain if self.bias is not None else None
        x = F.linear(x, self.effective_weight(), b)
        return _lrelu(x) if self.activation == "lrelu" else x

    def extra_repr(self) -> str:
        o, i = self.weight.shape
        return f"{i}, {o}, lr_mul={self.bias_gain}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """Conv2d ("same" padding) with an equalised learning rate; see ``EqualLinear`` for why.

    ``down=True`` halves the resolution as the official code does: [1,3,3,1] blur then a
    stride-2 conv (for a 1x1 kernel: blur-and-subsample, then the 1x1 conv).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 down: bool = False, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_channels * kernel_size**2)
        self.bias_gain = lr_mul
        self.kernel_size, self.down = kernel_size, down

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.weight_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.effective_weight()
        b = self.bias * self.bias_gain if self.bias is not None else None
        k = self.kernel_size
        if not self.down:
            return F.conv2d(x, w, b, padding=k // 2)
        if k == 1:
            return F.conv2d(_blur(x, pad=1, stride=2), w, b)
        # blur padded to H+1, then a valid stride-2 conv: H/2 outputs for an odd kernel
        return F.conv2d(_blur(x, pad=(k + 1) // 2), w, b, stride=2)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, down={self.down}, bias={self.bias is not None}"


# --------------------------------------------------------------------------- generator


class MappingNetwork(nn.Module):
    """z -> w: normalise z's 2nd moment, then ``depth`` fc + lrelu layers at ``lr_mul``.

    Keeps ``w_avg``, a running mean of w (beta 0.995) updated by training forward passes,
    because the truncation trick needs the centre of W: psi < 1 lerps w toward it.
    """

    def __init__(self, z_dim: int, w_dim: int, depth: int = 8, lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995) -> None:
        super().__init__()
        if not 2 <= depth <= 8:
            raise ValueError(f"mapping depth must be in 2..8, got {depth}")
        self.z_dim, self.w_dim, self.depth, self.w_avg_beta = z_dim, w_dim, depth, w_avg_beta
        dims = [z_dim] + [w_dim] * depth
        self.layers = nn.ModuleList(
            EqualLinear(a, b, lr_mul=lr_mul, activation="lrelu") for a, b in zip(dims[:-1], dims[1:]))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = True) -> torch.Tensor:
        x = _normalize_2nd_moment(z.flatten(1))
        for layer in self.layers:
            x = layer(x)
        if self.training and update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))  # float: autocast may hand bf16
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


class ModulatedConv2d(nn.Module):
    """Weight modulation/demodulation (StyleGAN2 Sec. 2.2), run as one grouped conv.

    Why: AdaIN normalised the activations and so erased their magnitudes (the blob
    artefacts); instead the style scales the weights' input channels per sample and
    demodulation rescales each output channel by rsqrt(sum w'^2 + 1e-8), which restores
    unit variance for unit-variance inputs from the statistics of the weights alone.
    The stored weight is N(0, 1): demodulation makes its scale irrelevant; without
    demodulation (ToRGB) it is scaled by 1/sqrt(fan_in) as an equalised-lr weight.

    ``up=True``: transposed 3x3 conv with stride 2, then the [1,3,3,1] blur with gain 4
    (as the official code; equal to bilinear upsample then conv, apart from the borders).
    ``fused=False`` (the default) gives the same result by scaling the activations
    instead of the weights: one batch-shared conv instead of N grouped ones, as the
    official code does while training. On a 2-core CPU it runs G's forward and backward
    2.4x faster (64 px, batch 16, widths up to 128: 0.27 s against 0.65 s in bf16).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int,
                 demodulate: bool = True, up: bool = False, fused: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or (up and kernel_size > 5):
            raise ValueError(f"kernel_size must be odd (and <= 5 with up=True), got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.up, self.fused = demodulate, up, fused
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # styles start near 1
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 if demodulate else 1.0 / math.sqrt(in_channels * kernel_size**2)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        """(N', G*I, H, W) conv with a (G*O, I, k, k) weight, upsampling when ``self.up``."""
        if not self.up:
            return F.conv2d(x, weight, padding=self.kernel_size // 2, groups=groups)
        o, i, k, _ = weight.shape
        w = weight.reshape(groups, o // groups, i, k, k).transpose(1, 2).reshape(groups * i, o // groups, k, k)
        x = F.conv_transpose2d(x, w, stride=2, groups=groups)  # 2H + k - 2
        return _blur(x, pad=(5 - k) // 2, gain=4.0)  # (2H + k - 2) + 2 pad - 3 = 2H

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, _, h, wd = x.shape
        styles = self.affine(w)  # (N, I)
        weight = self.weight * self.weight_gain
        # sum_{i,k} (w_oik s_i)^2 = sum_i s_i^2 sum_k w_oik^2: an (N, I) x (I, O) product, not N weight copies
        dcoefs = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt() if self.demodulate else None
        if not self.fused:  # the per-channel factors in the activations' dtype: a float32 factor would
            # promote every bf16 activation after it to float32 (3x slower elementwise work on a CPU)
            y = self._conv(x * styles.to(x.dtype)[:, :, None, None], weight, groups=1)
            return y * dcoefs.to(y.dtype)[:, :, None, None] if dcoefs is not None else y
        wmod = weight.unsqueeze(0) * styles[:, None, :, None, None]  # (N, O, I, k, k)
        if dcoefs is not None:
            wmod = wmod * dcoefs[:, :, None, None, None]
        y = self._conv(x.reshape(1, n * self.in_channels, h, wd),
                       wmod.reshape(n * self.out_channels, self.in_channels, self.kernel_size, self.kernel_size),
                       groups=n)
        return y.reshape(n, self.out_channels, *y.shape[2:])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"demodulate={self.demodulate}, up={self.up}, fused={self.fused}")


class SynthesisLayer(nn.Module):
    """Modulated conv + scaled per-pixel noise + bias + lrelu: one w per layer.

    Why the noise: it gives G a cheap source of stochastic detail (hair, pores) so the
    styles need not encode it; ``noise_strength`` starts at 0 so it is learned in.
    noise_mode: 'random' draws it fresh, 'const' uses a fixed buffer (reproducible
    images), 'none' leaves it out.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 kernel_size: int = 3, up: bool = False) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, w_dim, demodulate=True, up=up)
        # shape [1], not the official 0-dim: DeepSpeed cannot flatten a 0-dim parameter into its buffers
        self.noise_strength = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A 0-dim ``noise_strength`` (the official implementation's layout) loads as [1]."""
        key = prefix + "noise_strength"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        x = self.conv(x, w)
        if noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype) * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)
        return _lrelu(x + self.bias.to(x.dtype)[None, :, None, None])


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation: the colours keep the style's scale."""

    def __init__(self, in_channels: int, w_dim: int, img_channels: int = 3) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, img_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(img_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = self.conv(x, w)
        return y + self.bias.to(y.dtype)[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: [conv0 (up)], conv1, ToRGB.

    The 4x4 block starts from a learned constant and has no conv0. ``num_conv`` w's are
    consumed by the convs, the ToRGB reads the next one (shared with the next block's
    conv0): ``ws`` holds ``num_conv + 1`` vectors. Skip architecture: the block's RGB is
    added to the previous RGB upsampled, so every scale contributes to the image directly.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int = 3) -> None:
        super().__init__()
        self.resolution = resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        self.torgb = ToRGB(out_channels, w_dim, img_channels)
        self.num_conv = 1 if self.conv0 is None else 2

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
        if ws.shape[1] != self.num_conv + 1:
            raise ValueError(f"block {self.resolution} needs {self.num_conv + 1} w's, got {ws.shape[1]}")
        if self.conv0 is None:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        y = self.torgb(x, ws[:, self.num_conv])
        img = y if img is None else _upsample2x(img) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """(N, num_ws, w_dim) -> (N, 3, R, R): a learned 4x4 constant and skip blocks up to R.

    ``num_ws`` = 2 * log2(R) - 2 (see ``num_ws_for``); a wrong count raises ValueError.
    """

    def __init__(self, w_dim: int, resolution: int, channel_base: int = 32768, channel_max: int = 512,
                 img_channels: int = 3) -> None:
        super().__init__()
        self.widths = _widths(channel_base, channel_max, resolution)
        self.w_dim, self.resolution, self.num_ws = w_dim, resolution, num_ws_for(resolution)
        self.blocks = nn.ModuleList()
        for r, c in self.widths.items():
            self.blocks.append(SynthesisBlock(self.widths.get(r // 2, 0), c, w_dim, r, img_channels))
        assert sum(b.num_conv for b in self.blocks) + 1 == self.num_ws

    def forward(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if ws.dim() != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be (N, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}")
        x = img = None
        i = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, i:i + block.num_conv + 1], noise_mode)
            i += block.num_conv
        return img


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 G: (N, z_dim) latents -> (N, 3, R, R) images, roughly in [-1, 1] (no tanh).

    Style mixing regularisation (paper Sec. 3.1 of StyleGAN): only when ``self.training``,
    with probability ``style_mixing_prob`` per batch a second z is mapped and its w
    replaces the first from a random layer cutoff in [1, num_ws) on, so G cannot assume
    adjacent styles are correlated. Eval (sampling, FID) never mixes.
    """

    def __init__(self, resolution: int, z_dim: int = 512, w_dim: int = 512, mapping_depth: int = 8,
                 channel_base: int = 32768, channel_max: int = 512, style_mixing_prob: float = 0.9,
                 mapping_lr_mul: float = 0.01, img_channels: int = 3) -> None:
        super().__init__()
        self.resolution, self.z_dim, self.w_dim = resolution, z_dim, w_dim
        self.nz = z_dim  # the name the engine and tools use for the latent size
        self.style_mixing_prob = style_mixing_prob
        self.synthesis = SynthesisNetwork(w_dim, resolution, channel_base, channel_max, img_channels)
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_depth, lr_mul=mapping_lr_mul)
        self.num_ws = self.synthesis.num_ws

    def mapping_ws(self, z: torch.Tensor, truncation_psi: float = 1.0,
                   update_w_avg: bool = False) -> torch.Tensor:
        """(N, num_ws, w_dim): the same w for every layer (W space), no mixing."""
        w = self.mapping(z, truncation_psi, update_w_avg=update_w_avg)
        return w.unsqueeze(1).expand(-1, self.num_ws, -1)

    def synthesize(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        """Images from (N, num_ws, w_dim) ws: optimise these for W / W+ inversion."""
        return self.synthesis(ws, noise_mode)

    def _mix(self, z: torch.Tensor, ws: torch.Tensor, truncation_psi: float) -> torch.Tensor:
        """Per batch: with prob p, a second z's w from a random cutoff on (no host sync)."""
        dev = ws.device
        cutoff = torch.randint(1, self.num_ws, (), device=dev)
        cutoff = torch.where(torch.rand((), device=dev) < self.style_mixing_prob, cutoff,
                             torch.full_like(cutoff, self.num_ws))
        w2 = self.mapping(torch.randn_like(z), truncation_psi, update_w_avg=False)
        later = (torch.arange(self.num_ws, device=dev) >= cutoff)[None, :, None]
        return torch.where(later, w2.unsqueeze(1), ws)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "random") -> torch.Tensor:
        z = z.flatten(1)  # (N, nz, 1, 1) latents as the DCGAN G takes them also work
        ws = self.mapping_ws(z, truncation_psi, update_w_avg=True)
        if self.training and self.style_mixing_prob > 0:
            ws = self._mix(z, ws, truncation_psi)
        return self.synthesis(ws, noise_mode)


# --------------------------------------------------------------------------- discriminator


class DiscriminatorBlock(nn.Module):
    """Residual D block: conv3x3, conv3x3-down, plus a bias-free 1x1-down skip, / sqrt(2).

    The 1/sqrt(2) keeps the sum's variance equal to its inputs'.
    """

    def __init__(self, in_channels: int, out_channels: int, img_channels: int = 0) -> None:
        super().__init__()
        self.fromrgb = EqualConv2d(img_channels, in_channels, 1) if img_channels else None
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = _lrelu(self.fromrgb(x))
        y = self.skip(x) * math.sqrt(0.5)
        x = _lrelu(self.conv1(_lrelu(self.conv0(x))), _LRELU_GAIN * math.sqrt(0.5))
        return y + x


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch stddev, conv3x3, fc, fc to one logit."""

    def __init__(self, in_channels: int, mbstd_group: int = 4, mbstd_channels: int = 1) -> None:
        super().__init__()
        self.mbstd = MinibatchStd(mbstd_group, mbstd_channels) if mbstd_channels > 0 else None
        self.conv = EqualConv2d(in_channels + mbstd_channels, in_channels, 3)
        self.fc = EqualLinear(in_channels * 16, in_channels, activation="lrelu")
        self.out = EqualLinear(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = _lrelu(self.conv(x))
        return self.out(self.fc(x.flatten(1)))


class StyleGAN2Discriminator(nn.Module):
    """StyleGAN2 residual D: (N, 3, R, R) images in [-1, 1] -> (N,) logits."""

    def __init__(self, resolution: int, channel_base: int = 32768, channel_max: int = 512,
                 mbstd_group: int = 4, mbstd_channels: int = 1, img_channels: int = 3) -> None:
        super().__init__()
        self.resolution = resolution
        widths = _widths(channel_base, channel_max, resolution)
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(widths[r], widths[r // 2], img_channels if r == resolution else 0)
            for r in sorted(widths, reverse=True) if r > 4)
        self.epilogue = DiscriminatorEpilogue(widths[4], mbstd_group, mbstd_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.epilogue(x).flatten()
