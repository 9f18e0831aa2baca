"""Mixed precision with one loss scaler per network.

bf16 needs no scaler. fp16 does, and accelerate's single shared GradScaler is wrong
for GANs: an overflow in D's backward would cut G's scale too (and skip G's step).
So the engine asks for ``mixed_precision="no"`` from accelerate and owns autocast
and a ``GradScaler`` per network itself.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast context and scaler factory for one precision mode on one device."""

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {mode!r}")
        self.mode, self.device = mode, device
        self.dtype: Optional[torch.dtype] = DTYPES[mode]

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def make_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is a no-op unless fp16 (scale() returns the loss, step() just steps)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.mode == "fp16")


def make_adam(params, lr: float, betas, impl: str, device: torch.device) -> torch.optim.Adam:
    """Adam with the fastest implementation available: fused, then foreach, then plain."""
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
