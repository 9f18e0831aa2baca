"""Preemption: SIGTERM / SIGUSR1 (what SLURM sends before it kills a job) set a flag.

The loop checks the flag at its sync points and all ranks agree on it with one
all-reduce, so every rank stops at the same step; rank 0 then writes a checkpoint
and the job exits cleanly, ready for ``resume=auto`` after a requeue.
"""

from __future__ import annotations

import signal
import threading
from typing import Dict

import torch


class PreemptionFlag:
    """Installs handlers on creation (main thread only); ``restore()`` puts the old ones back."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal_name = ""
        self._old: Dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def raised(self) -> bool:
        return bool(self.signal_name)

    def agreed(self, accelerator) -> bool:
        """True on every rank if any rank was signalled."""
        if accelerator.num_processes == 1:
            return self.raised
        flag = torch.tensor([1.0 if self.raised else 0.0], device=accelerator.device)
        flag = accelerator.reduce(flag, reduction="sum")
        if flag.item() > 0 and not self.signal_name:
            self.signal_name = "peer"
        return flag.item() > 0

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
