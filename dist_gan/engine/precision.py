"""Mixed precision with one loss scaler per network, and the engine's other speed switches.

bf16 needs no scaler. fp16 does, and accelerate's single shared GradScaler is wrong
for GANs: an overflow in D's backward would cut G's scale too (and skip G's step).
So the engine asks for ``mixed_precision="no"`` from accelerate and owns autocast
and a ``GradScaler`` per network itself.

``precision="auto"`` picks bf16 where the device computes it natively (CUDA Ampere+,
CPUs with AVX512-BF16/AMX through oneDNN), else fp16 with per-network scalers on
CUDA, else fp32. TF32 matmuls/convolutions are switched on for Ampere+ GPUs
(``tf32=True``), with cuDNN autotuning: the shapes of a GAN step never change.

``maybe_compile`` wraps ``torch.compile`` so that a platform without a working
compiler (no C++ toolchain, unsupported Python, Windows...) trains eagerly with a
warning instead of failing.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import ContextManager, Optional

import torch
from torch import nn

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("auto", *DTYPES)
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ADAM_IMPLS = ("auto", "fused", "foreach", "plain")  # optim.impl: auto tries fused, then foreach

log = logging.getLogger(__name__)

EMULATED_BF16 = ("train.precision=bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): oneDNN emulates it, "
                 "about 25x slower than fp32 (a DCGAN-64 step at batch 16 on an AVX2 EPYC: 17.7 s against 0.66 s). "
                 "train.precision=auto picks bf16 only where it is native.")


def bf16_native(device: torch.device) -> bool:
    """True where bf16 autocast is fast, not emulated: CUDA sm80+, or oneDNN's bf16 ISA on CPU."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(mode: str, device: torch.device) -> str:
    """``auto`` -> bf16 where native, else fp16 on CUDA, else fp32; other modes unchanged."""
    if mode != "auto":
        return mode
    if bf16_native(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def configure_backends(device: torch.device, tf32: bool = True) -> None:
    """TF32 for fp32 matmuls/convs on Ampere+ (a no-op elsewhere), cuDNN autotuning on CUDA."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return
    torch.backends.cudnn.benchmark = True
    ampere = torch.cuda.get_device_capability(device)[0] >= 8
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32 and ampere)
    torch.backends.cudnn.allow_tf32 = bool(tf32 and ampere)


class Precision:
    """Autocast context and scaler factory for one precision mode on one device.

    ``mode`` may be ``auto`` (see ``resolve_precision``); ``self.mode`` is the resolved
    one. Constructing a Precision also applies ``configure_backends(device, tf32)``.
    """

    def __init__(self, mode: str, device: torch.device, tf32: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"precision must be one of {list(MODES)}, got {mode!r}")
        device = torch.device(device)
        self.requested = mode
        self.mode, self.device = resolve_precision(mode, device), device
        self.dtype: Optional[torch.dtype] = DTYPES[self.mode]
        if mode == "bf16" and device.type == "cpu" and not bf16_native(device):
            warnings.warn(EMULATED_BF16, RuntimeWarning, stacklevel=2)
        configure_backends(device, tf32)

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def make_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is a no-op unless fp16 (scale() returns the loss, step() just steps)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.mode == "fp16")


def make_adam(params, lr: float, betas, impl: str, device: torch.device) -> torch.optim.Adam:
    """Adam with the fastest implementation available: fused, then foreach, then plain."""
    params = list(params)  # a generator would be spent by a failed fused attempt
    kwargs = {}
    if impl in ("auto", "fused"):
        try:
            return torch.optim.Adam(params, lr=lr, betas=tuple(betas), fused=True)
        except (RuntimeError, TypeError, ValueError):
            if impl == "fused":
                raise
        kwargs["foreach"] = True
    elif impl == "foreach":
        kwargs["foreach"] = True
    else:
        kwargs["foreach"] = False
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), **kwargs)


def compile_available() -> Optional[str]:
    """None if ``torch.compile`` can work here, else why not."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    try:  # torch._dynamo loads the compiler stack: imported only when a run compiles
        from torch._dynamo.eval_frame import is_dynamo_supported

        is_dynamo_supported()
    except Exception as exc:  # RuntimeError on unsupported Python/platform
        return f"torch.compile unsupported here: {exc}"
    return None


def maybe_compile(module: nn.Module, mode: str) -> nn.Module:
    """``torch.compile(module, mode=mode)``, or ``module`` itself if ``mode`` is empty or compiling is unavailable.

    Compilation is lazy (first call); ``suppress_errors`` makes a backend failure
    there (e.g. no C++ compiler for inductor on CPU) fall back to eager with a
    warning instead of killing the run.
    """
    if not mode:
        return module
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
    why = compile_available()
    if why:
        warnings.warn(f"{why}; training eagerly", RuntimeWarning, stacklevel=2)
        return module
    from torch._dynamo import config as dynamo_config  # as above: only when a run compiles

    dynamo_config.suppress_errors = True
    return torch.compile(module, mode=None if mode == "default" else mode)
