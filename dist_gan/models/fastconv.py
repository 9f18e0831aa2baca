"""Weight gradients of the deep, tiny-spatial convolutions as one forward convolution.

Why: on the CPU, oneDNN's backward-weights kernel is slow when the layer's small side
is 4x4 with hundreds of channels (DCGAN's deepest D conv, 256->512 at 8->4 px, and
G's 512->256 at 4->8 px): it takes ~3x the forward's time, where the same reduction
written as a forward convolution, with batch and channels swapped and the stride as
dilation, takes ~1x. Step-level effect (``benchmarks/step.py --ablation``): +17 % at one
thread on a loaded box, +2 % at two threads on a quiet one (oneDNN parallelises its
own kernel better there). Extending it to the 8x8 layers (``max_area=64``, timed with
``step.py --swap-areas 16,64,256``) was within the noise at batch 128 and 2 threads (+5 %, -1.4 %
and +3 % in three runs; the step's summed convolution time 735-835 ms at 16 against
782-819 ms at 64) and neutral at one thread; at 16x16 (256) the step is 0-8 % slower.

    dW[o, c] = sum_n  x[n, c]  (*)  dY[n, o]                (correlation, stride s)
             = conv2d(x^T, dY^T, padding=p, dilation=s)^T   with x^T = x.transpose(0, 1)

and for a transposed convolution the same with x and dY exchanged. The grad of the
input is left to the stock kernel. Everything is ordinary differentiable ops, so a
gradient penalty's double backward still works. Only layers whose small side is at
most ``max_area`` pixels are switched: elsewhere the stock kernel is as fast or faster.
"""

from __future__ import annotations

import types
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

SWAP_WGRAD_MODES = ("auto", "always", "never")  # train.swap_wgrad: auto = on for CPU, eager
MAX_AREA = 16  # switch layers whose smaller feature map has at most this many pixels (4x4)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def _swap_wgrad(inp: torch.Tensor, grad: torch.Tensor, k: Tuple[int, int], stride, padding) -> torch.Tensor:
    """Correlation of ``inp`` (N, C, H, W) with ``grad`` (N, O, h, w) at ``stride``: (O, C, kh, kw)."""
    w = F.conv2d(inp.transpose(0, 1), grad.transpose(0, 1), padding=padding, dilation=stride)
    return w[:, :, : k[0], : k[1]].transpose(0, 1)


class _ConvSwapWgrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, transposed, output_padding):
        dtype = _compute_dtype(x)
        xc, wc = x.to(dtype), weight.to(dtype)
        bc = None if bias is None else bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            if transposed:
                y = F.conv_transpose2d(xc, wc, bc, stride, padding, output_padding)
            else:
                y = F.conv2d(xc, wc, bc, stride, padding)
        ctx.save_for_backward(xc, wc)
        ctx.conf = (stride, padding, transposed, output_padding, weight.dtype, bias is not None)
        return y

    @staticmethod
    def backward(ctx, grad):
        xc, wc = ctx.saved_tensors
        stride, padding, transposed, output_padding, w_dtype, has_bias = ctx.conf
        grad = grad.to(xc.dtype)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                grad, xc, wc, None, list(stride), list(padding), [1, 1], transposed, list(output_padding), 1,
                [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            k = tuple(wc.shape[2:])
            # conv: W (O, C, k, k) from x and dY. transposed: W (C_in, C_out, k, k) is the conv's
            # weight grad with the roles of input and output exchanged.
            gw = _swap_wgrad(grad, xc, k, stride, padding) if transposed else _swap_wgrad(xc, grad, k, stride, padding)
            gw = gw.to(w_dtype)
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(dim=(0, 2, 3)).to(w_dtype)
        return gx, gw, gb, None, None, None, None


def _eligible(m: nn.Module) -> bool:
    # A parametrised layer (spectral norm) has a generated subclass; judge the class it wraps.
    base = type(m).__bases__[0] if parametrize.is_parametrized(m) else type(m)
    if base not in (nn.Conv2d, nn.ConvTranspose2d):
        return False
    plain = m.groups == 1 and tuple(m.dilation) == (1, 1) and m.padding_mode == "zeros" and not isinstance(m.padding, str)
    return plain and (base is nn.Conv2d or tuple(m.output_padding) == (0, 0))


def _conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return _ConvSwapWgrad.apply(x, self.weight, self.bias, tuple(self.stride), tuple(self.padding), False, (0, 0))


def _conv_transpose_forward(self: nn.ConvTranspose2d, x: torch.Tensor, output_size=None) -> torch.Tensor:
    if output_size is not None:
        return type(self).forward(self, x, output_size)
    return _ConvSwapWgrad.apply(
        x, self.weight, self.bias, tuple(self.stride), tuple(self.padding), True, tuple(self.output_padding)
    )


def use_swap_wgrad(model: nn.Module, resolution: int, max_area: int = MAX_AREA) -> int:
    """Switch the eligible deep layers of ``model`` (fed ``resolution``-px images or latents); return how many.

    The feature-map sizes are traced with one tiny forward pass (batch 2), so any DCGAN-like
    layout works. The change is per instance: weights, state dicts and checkpoints are untouched.
    """
    areas = {}

    def record(mod, inp, out):
        areas[mod] = min(inp[0].shape[-1] * inp[0].shape[-2], out.shape[-1] * out.shape[-2])

    hooks = [m.register_forward_hook(record) for m in model.modules() if _eligible(m)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(_probe_input(model, resolution))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    switched = 0
    for m, area in areas.items():
        if area <= max_area:
            fwd = _conv_transpose_forward if isinstance(m, nn.ConvTranspose2d) else _conv_forward
            m.forward = types.MethodType(fwd, m)
            switched += 1
    return switched


def _probe_input(model: nn.Module, resolution: int) -> torch.Tensor:
    """A batch of 2 inputs of the right shape: latents for a generator (``nz`` attribute), images for D."""
    p = next(model.parameters())
    nz = getattr(model, "nz", None)
    if nz is not None:
        return torch.zeros(2, nz, 1, 1, device=p.device, dtype=p.dtype)
    return torch.zeros(2, 3, resolution, resolution, device=p.device, dtype=p.dtype)
