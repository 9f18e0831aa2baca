"""Preemption: SIGTERM / SIGUSR1 (what SLURM sends before it kills a job) set a flag.

The loop checks the flag at its sync points and all ranks agree on it with one
all-reduce, so every rank stops at the same step; rank 0 then writes a checkpoint
and the job exits cleanly, ready for ``resume=auto`` after a requeue.

A signal always ends the process, even when the loop cannot reach a sync point (a
data stream stuck on a dead file system, a hung collective): a second signal takes
the default action at once, and ``grace_s`` after the first the process exits with
128 + the signal's number.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Dict, Optional

import torch


class PreemptionFlag:
    """Installs handlers on creation (main thread only); ``restore()`` puts the old ones back."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, grace_s: float = 300.0) -> None:
        self.signal_name = ""
        self.grace_s = grace_s
        self._deadline: Optional[threading.Timer] = None
        self._old: Dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.signal_name:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal_name = signal.Signals(signum).name
        self._deadline = threading.Timer(self.grace_s, self._expire, args=(signum,))
        self._deadline.daemon = True
        self._deadline.start()

    def _expire(self, signum: int) -> None:
        """The loop did not reach a sync point in time: leave without the checkpoint."""
        print(f"{signal.Signals(signum).name} {self.grace_s:g} s ago and no sync point reached: exiting without "
              "a checkpoint (resume=auto continues from the last one)", file=sys.stderr, flush=True)
        os._exit(128 + signum)

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
        if self._deadline is not None:
            self._deadline.cancel()
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
